"""Training the learned model: labelled papers in, a :class:`LearnedModel` and its figures out.

Per field, one ridge regression per label (scikit-learn's ``Ridge``, all labels of a
field in one solve) scores every label; out-of-fold scores of a k-fold cross-validation
fit the field's calibration (a logistic map of the score and of being the field's top
label) and its assignment threshold (the one that maximises out-of-fold micro-F1). The
same out-of-fold predictions, scored like ``papertag eval`` scores a stored annotator,
are the figures ``papertag train`` prints. The final model is then fitted on everything.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigError
from ...schema import DROP_THRESHOLD, MAX_LABELS
from ...taxonomy import FIELDS, Taxonomy
from .features import DEFAULT_SETTINGS, Featurizer, dense_features, rule_columns
from .model import FieldModel, LearnedModel

MAX_CANDIDATES_PER_FIELD = 2
#: Thresholds tried for assigning a label (calibrated probability).
_THRESHOLDS = np.round(np.arange(0.2, 0.71, 0.025), 3)


@dataclass
class Example:
    """One labelled paper. ``labels`` holds only the fields this example knows."""

    title: str
    abstract: str
    labels: dict[str, list[str]]
    source: str
    weight: float = 1.0
    #: Finer than ``source`` where a file says where its row came from (silver's ``source``):
    #: what the cross-validated figures are broken down by.
    origin: str = ""


@dataclass
class TrainReport:
    """What ``papertag train`` prints: sizes, left-out labels and cross-validated figures."""

    examples: int
    sources: dict[str, int]
    dropped: list[tuple[str, str, int]]
    folds: int
    cv: dict[str, dict[str, float]]
    ece: float
    auto_precision: float
    review_yield: float
    thresholds: dict[str, float]
    #: Cross-validated micro-F1 per field of each source's papers (when there are several).
    by_source: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    version: str = ""
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "examples": self.examples,
            "sources": self.sources,
            "dropped_labels": [
                {"field": f, "label": lab, "examples": n} for f, lab, n in self.dropped
            ],
            "folds": self.folds,
            "cv": self.cv,
            "ece": self.ece,
            "auto_precision": self.auto_precision,
            "review_yield": self.review_yield,
            "thresholds": self.thresholds,
            "by_source": self.by_source,
            "seconds": self.seconds,
        }


# -- deciding -----------------------------------------------------------------------------
def choose(probs: np.ndarray, threshold: float) -> list[int]:
    """Indices of the labels to assign, best first: those at or above the threshold (at
    most 3), and the best one when none is."""
    order = np.argsort(-probs, kind="stable")
    chosen = [int(j) for j in order[:MAX_LABELS] if probs[j] >= threshold]
    return chosen or [int(order[0])]


def candidates(probs: np.ndarray, chosen: Sequence[int], labels: Sequence[str]) -> list[int]:
    """Runner-up labels worth a reviewer's time (at or above the drop threshold)."""
    order = np.argsort(-probs, kind="stable")
    out = [
        int(j)
        for j in order
        if int(j) not in chosen and probs[j] >= DROP_THRESHOLD and labels[j] != "other"
    ]
    return out[:MAX_CANDIDATES_PER_FIELD]


# -- fitting ------------------------------------------------------------------------------
def _targets(examples: Sequence[Example], fname: str, labels: Sequence[str]) -> np.ndarray:
    index = {lab: j for j, lab in enumerate(labels)}
    y = np.zeros((len(examples), len(labels)), dtype=np.float64)
    for i, ex in enumerate(examples):
        for lab in ex.labels[fname]:
            j = index.get(lab)
            if j is not None:
                y[i, j] = 1.0
    return y


def _ridge(
    x: Any, y: np.ndarray, weights: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and intercepts of one ridge regression per column of ``y``."""
    from sklearn.linear_model import Ridge

    mean = np.average(y, axis=0, weights=weights)
    # Centred targets instead of fit_intercept: with more features than papers, the
    # "cholesky" solver works in the papers' space (one small solve for all labels), and it
    # fits no intercept on sparse data.
    model = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky")
    model.fit(x, y - mean, sample_weight=weights)
    coef = np.atleast_2d(np.asarray(model.coef_, dtype=np.float32))
    return coef, mean.astype(np.float32)


def _calibrate(scores: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """(a, b, c) of p = sigmoid(a * score + b + c * is_top), fitted on out-of-fold scores."""
    from sklearn.linear_model import LogisticRegression

    top = (scores >= scores.max(axis=1, keepdims=True)).astype(np.float64)
    x = np.column_stack([scores.ravel(), top.ravel()])
    target = y.ravel() > 0
    if target.all() or not target.any():
        return np.array([0.0, 0.0, 0.0])
    lr = LogisticRegression(C=100.0, random_state=seed).fit(x, target)
    return np.array([lr.coef_[0][0], float(lr.intercept_[0]), lr.coef_[0][1]])


def _best_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    best, best_f1 = 0.5, -1.0
    for t in _THRESHOLDS:
        tp = fp = fn = 0
        for row, truth in zip(probs, y, strict=True):
            chosen = choose(row, float(t))
            hit = int(truth[chosen].sum())
            tp += hit
            fp += len(chosen) - hit
            fn += int(truth.sum()) - hit
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), f1
    return best


@dataclass
class _Plan:
    """Per field: the labels with enough examples, and the rows that know the field."""

    labels: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: list[tuple[str, str, int]] = field(default_factory=list)


def _plan(examples: Sequence[Example], taxonomy: Taxonomy, min_examples: int) -> _Plan:
    plan = _Plan()
    for fname in FIELDS:
        rows = np.array([i for i, ex in enumerate(examples) if fname in ex.labels], dtype=np.int64)
        counts = Counter(lab for i in rows for lab in examples[i].labels[fname])
        keep = [lab for lab in taxonomy.ids(fname) if counts[lab] >= min_examples]
        plan.dropped += [
            (fname, lab, counts[lab])
            for lab in taxonomy.ids(fname)
            if 0 < counts[lab] < min_examples
        ]
        if len(rows) and len(keep) < 2:
            raise ConfigError(
                f"too few labelled papers to learn {fname}: it needs at least two labels with "
                f"{min_examples} or more examples each (have: "
                + (", ".join(f"{lab} {n}" for lab, n in counts.most_common()) or "none")
                + ")"
            )
        if not len(rows):
            raise ConfigError(f"no training paper has {fname} labels; every field needs some")
        plan.labels[fname] = keep
        plan.rows[fname] = rows
    return plan


def data_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(
            json.dumps(
                [
                    ex.title,
                    ex.abstract,
                    {f: sorted(v) for f, v in sorted(ex.labels.items())},
                    ex.weight,
                ],
                ensure_ascii=False,
            ).encode("utf-8")
        )
    return h.hexdigest()[:16]


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def fit(
    examples: Sequence[Example],
    taxonomy: Taxonomy,
    settings: dict[str, Any] | None = None,
    *,
    folds: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[LearnedModel, TrainReport]:
    """Cross-validate, calibrate, and fit the final model on every example."""
    started = time.perf_counter()
    cfg = {**DEFAULT_SETTINGS, **(settings or {})}
    if folds is not None:
        cfg["folds"] = folds
    k = int(cfg["folds"])
    if not examples:
        raise ConfigError("no labelled papers to train on")
    if k < 2:
        raise ConfigError("--folds must be 2 or more (the calibration is fitted out of fold)")
    if len(examples) < 2 * k:
        raise ConfigError(
            f"{len(examples)} labelled papers are too few for {k}-fold cross-validation; "
            f"give at least {2 * k}"
        )
    step = on_step or (lambda _msg: None)
    plan = _plan(examples, taxonomy, int(cfg["min_examples"]))
    papers = [(ex.title, ex.abstract) for ex in examples]
    weights = np.array([ex.weight for ex in examples], dtype=np.float64)
    step("features")
    dense = dense_features(cfg, taxonomy, papers)

    # Out-of-fold scores for calibration, thresholds and the reported figures.
    from sklearn.model_selection import KFold

    oof = {f: np.zeros((len(examples), len(plan.labels[f]))) for f in FIELDS}
    splitter = KFold(n_splits=k, shuffle=True, random_state=int(cfg["seed"]))
    for n, (train_idx, test_idx) in enumerate(splitter.split(np.arange(len(examples)))):
        step(f"fold {n + 1}/{k}")
        feat = Featurizer.fit(cfg, taxonomy, [papers[i] for i in train_idx])
        x_train = feat.transform([papers[i] for i in train_idx], dense[train_idx])
        x_test = feat.transform([papers[i] for i in test_idx], dense[test_idx])
        for fname in FIELDS:
            known = np.isin(train_idx, plan.rows[fname])
            sub = [examples[i] for i in train_idx[known]]
            y = _targets(sub, fname, plan.labels[fname])
            coef, intercept = _ridge(x_train[known], y, weights[train_idx[known]], cfg["alpha"])
            oof[fname][test_idx] = np.asarray(x_test @ coef.T) + intercept

    step("calibration")
    fields: dict[str, FieldModel] = {}
    thresholds: dict[str, float] = {}
    for fname in FIELDS:
        rows = plan.rows[fname]
        y = _targets([examples[i] for i in rows], fname, plan.labels[fname])
        calibration = _calibrate(oof[fname][rows], y, int(cfg["seed"]))
        fm = FieldModel(
            plan.labels[fname],
            np.zeros((0, 0), np.float32),
            np.zeros(0, np.float32),
            calibration,
            0.5,
        )
        probs = fm.probabilities(oof[fname][rows])
        fm.threshold = thresholds[fname] = _best_threshold(probs, y)
        fields[fname] = fm
    figures = _cv_figures(examples, plan, oof, fields)

    step("final fit")
    feat = Featurizer.fit(cfg, taxonomy, papers)
    x_all = feat.transform(papers, dense)
    for fname in FIELDS:
        rows = plan.rows[fname]
        y = _targets([examples[i] for i in rows], fname, plan.labels[fname])
        coef, intercept = _ridge(x_all[rows], y, weights[rows], cfg["alpha"])
        fields[fname].coef, fields[fname].intercept = coef, intercept

    sources = dict(sorted(Counter(ex.source for ex in examples).items()))
    meta: dict[str, Any] = {
        "taxonomy_version": taxonomy.version,
        # The rules block has one column per (field, label) of this taxonomy, in this order.
        "rule_columns": [f"{f}:{lab}" for f, lab in rule_columns(taxonomy)],
        "data_hash": data_hash(examples),
        "settings_hash": settings_hash(cfg),
        "examples": len(examples),
        "sources": sources,
        "dropped_labels": [list(d) for d in plan.dropped],
        "cv": figures["fields"],
        "cv_ece": figures["ece"],
        "cv_by_source": figures["by_source"],
    }
    # Through bytes and back, so the model returned is exactly the one a file holds.
    model = LearnedModel.from_bytes(
        LearnedModel(cfg, feat.vocabulary, feat.idf, fields, meta).to_bytes()
    )
    report = TrainReport(
        examples=len(examples),
        sources=sources,
        dropped=plan.dropped,
        folds=k,
        cv=figures["fields"],
        ece=figures["ece"],
        auto_precision=figures["auto_precision"],
        review_yield=figures["review_yield"],
        thresholds=thresholds,
        by_source=figures["by_source"],
        seconds=time.perf_counter() - started,
    )
    return model, report


def _cv_figures(
    examples: Sequence[Example],
    plan: _Plan,
    oof: dict[str, np.ndarray],
    fields: dict[str, FieldModel],
) -> dict[str, Any]:
    """Score the out-of-fold predictions as ``papertag eval`` scores stored annotations."""
    from ...scoring import GoldPaper, Item, score

    complete = [i for i, ex in enumerate(examples) if all(f in ex.labels for f in FIELDS)]
    if not complete:
        return {
            "fields": {},
            "ece": 0.0,
            "auto_precision": 0.0,
            "review_yield": 0.0,
            "by_source": {},
        }
    probs = {f: fields[f].probabilities(oof[f]) for f in FIELDS}
    gold: list[GoldPaper] = []
    predictions: list[list[Item]] = []
    for i in complete:
        ex = examples[i]
        gold.append(
            GoldPaper(
                ex.title,
                ex.abstract,
                {f: set(ex.labels[f]) for f in FIELDS},
                {f: set() for f in FIELDS},
            )
        )
        items: list[Item] = []
        for fname in FIELDS:
            labels = plan.labels[fname]
            row = probs[fname][i]
            chosen = choose(row, fields[fname].threshold)
            items += [Item(fname, labels[j], float(row[j]), "label") for j in chosen]
            items += [
                Item(fname, labels[j], float(row[j]), "candidate")
                for j in candidates(row, chosen, labels)
            ]
        predictions.append(items)
    result = score(gold, predictions)
    # Per source too: papers of a niche (the digests) and of the wider stream score apart.
    by_source: dict[str, dict[str, float]] = {}
    origin = [examples[i].origin or examples[i].source for i in complete]
    for source in sorted(set(origin)):
        picked = [k for k, o in enumerate(origin) if o == source]
        if len(picked) < 2 or len(picked) == len(complete):
            continue
        part = score([gold[k] for k in picked], [predictions[k] for k in picked])
        by_source[source] = {f: s.micro_f1 for f, s in part.fields.items()}
        by_source[source]["papers"] = len(picked)
    return {
        "fields": {
            f: {
                "micro_f1": s.micro_f1,
                "macro_f1": s.macro_f1,
                "precision": s.precision,
                "recall": s.recall,
            }
            for f, s in result.fields.items()
        },
        "ece": result.ece,
        "auto_precision": result.auto_precision,
        "review_yield": result.review_yield,
        "by_source": by_source,
    }
