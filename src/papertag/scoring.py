"""Score labels against a gold set: the measures ``papertag eval``, the report and the
learned annotator's cross-validation share.

Gold format (``shared/gold/dev.jsonl``): one JSON object per line with
``title``, ``abstract``, the three fields as lists of ids, and optionally
``also_acceptable`` (per field, ids one reader chose: neither right nor wrong).

Scored per field: micro precision/recall/F1 over the annotation's labels, macro
F1 over label ids, and a per-label table. Confidence is checked over labels and
candidates together: expected calibration error (10 equal-width bins), the
precision of labels accepted without review, and the share of reviewed items
that were wrong (review yield).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .files import json_objects
from .ingest import clean_text
from .schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from .taxonomy import FIELDS

ECE_BINS = 10


@dataclass
class GoldPaper:
    title: str
    abstract: str
    labels: dict[str, set[str]]
    also: dict[str, set[str]]


def load_gold(path: str | Path) -> list[GoldPaper]:
    p = Path(path)
    rows: list[GoldPaper] = []
    for lineno, obj in json_objects(p, "gold file"):
        if not obj.get("title") or not obj.get("abstract"):
            raise InputError(p, "gold row needs 'title' and 'abstract'", line=lineno)
        labels: dict[str, set[str]] = {}
        for f in FIELDS:
            value = obj.get(f)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(p, f"gold row needs '{f}' as a list of label ids", line=lineno)
            labels[f] = set(value)
        also_raw = obj.get("also_acceptable") or {}
        also = {f: set(also_raw.get(f, [])) for f in FIELDS}
        rows.append(GoldPaper(clean_text(obj["title"]), clean_text(obj["abstract"]), labels, also))
    if not rows:
        raise InputError(p, "gold file has no rows")
    return rows


@dataclass
class Item:
    """One predicted label or candidate, as stored."""

    field: str
    label: str
    confidence: float
    kind: str  # 'label' or 'candidate'


@dataclass
class FieldScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return _div(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _div(self.tp, self.tp + self.fn)

    @property
    def micro_f1(self) -> float:
        return _div(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def macro_f1(self) -> float:
        f1s = [v["f1"] for v in self.per_label.values()]
        return sum(f1s) / len(f1s) if f1s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "micro_f1": self.micro_f1,
            "macro_f1": self.macro_f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "per_label": self.per_label,
        }


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


@dataclass
class EvalResult:
    fields: dict[str, FieldScore]
    ece: float
    auto_precision: float
    review_yield: float
    review_share: float
    n_papers: int
    n_items: int
    accept_threshold: float
    drop_threshold: float
    reliability: list[dict[str, float]]
    annotator: str = ""
    model: str = ""
    #: Gold papers left out of the scores: not in the database, or not annotated there.
    missing: int = 0
    #: Gold papers labelled in a scratch database for this evaluation (annotate_missing).
    annotated: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f: s.as_dict() for f, s in self.fields.items()}
        out.update(
            ece=self.ece,
            auto_precision=self.auto_precision,
            review_yield=self.review_yield,
            review_share=self.review_share,
            papers=self.n_papers,
            scored_items=self.n_items,
            accept_threshold=self.accept_threshold,
            drop_threshold=self.drop_threshold,
            reliability=self.reliability,
            annotator=self.annotator,
            model=self.model,
            missing_from_db=self.missing,
            annotated_in_scratch=self.annotated,
        )
        return out


def score(
    gold: list[GoldPaper],
    predictions: list[list[Item]],
    *,
    accept: float = ACCEPT_THRESHOLD,
    drop: float = DROP_THRESHOLD,
) -> EvalResult:
    """Score predictions (one list of items per gold paper, same order) against gold."""
    fields = {f: FieldScore() for f in FIELDS}
    counts: dict[str, dict[str, list[int]]] = {f: defaultdict(lambda: [0, 0, 0]) for f in FIELDS}
    scored: list[tuple[float, bool]] = []
    auto = [0, 0]  # right, total
    review = [0, 0]  # wrong, total
    for g, items in zip(gold, predictions, strict=True):
        for f in FIELDS:
            predicted = {i.label for i in items if i.field == f and i.kind == "label"} - g.also[f]
            for lab in predicted & g.labels[f]:
                counts[f][lab][0] += 1
            for lab in predicted - g.labels[f]:
                counts[f][lab][1] += 1
            for lab in g.labels[f] - predicted:
                counts[f][lab][2] += 1
        for it in items:
            if it.label in g.also[it.field]:
                continue
            right = it.label in g.labels[it.field]
            scored.append((it.confidence, right))
            if it.kind == "label" and it.confidence >= accept:
                auto[0] += right
                auto[1] += 1
            elif it.confidence < accept and (it.kind == "label" or it.confidence >= drop):
                review[0] += not right
                review[1] += 1
    for f in FIELDS:
        fs = fields[f]
        for lab, (tp, fp, fn) in sorted(counts[f].items()):
            fs.tp, fs.fp, fs.fn = fs.tp + tp, fs.fp + fp, fs.fn + fn
            fs.per_label[lab] = {
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": _div(tp, tp + fp),
                "recall": _div(tp, tp + fn),
                "f1": _div(2 * tp, 2 * tp + fp + fn),
                "support": tp + fn,
            }
    ece, reliability = expected_calibration_error(scored)
    return EvalResult(
        fields=fields,
        ece=ece,
        auto_precision=_div(auto[0], auto[1]),
        review_yield=_div(review[0], review[1]),
        review_share=_div(review[1], review[1] + auto[1]),
        n_papers=len(gold),
        n_items=len(scored),
        accept_threshold=accept,
        drop_threshold=drop,
        reliability=reliability,
    )


def expected_calibration_error(
    scored: list[tuple[float, bool]], bins: int = ECE_BINS
) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width bins; also returns the reliability table (per bin)."""
    if not scored:
        return 0.0, []
    buckets: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for conf, right in scored:
        buckets[min(int(conf * bins), bins - 1)].append((conf, right))
    ece = 0.0
    table = []
    for i, b in enumerate(buckets):
        if not b:
            continue
        mean_conf = sum(c for c, _ in b) / len(b)
        acc = sum(r for _, r in b) / len(b)
        ece += abs(mean_conf - acc) * len(b) / len(scored)
        table.append(
            {
                "lo": i / bins,
                "hi": (i + 1) / bins,
                "n": len(b),
                "confidence": mean_conf,
                "accuracy": acc,
            }
        )
    return ece, table
