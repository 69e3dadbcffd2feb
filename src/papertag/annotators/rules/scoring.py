"""Weighing a paper's matches into a calibrated probability per label.

A match is worth more in the title and in the sentence that states the contribution ("we
propose ...") than in the method and result sentences after it, and least in the
background sentences before it. A match right after a baseline cue ("compared with",
"unlike", "such as") is discounted, one right after a negation ("without", "no") or
followed by "-free" is ignored, and a match that overlaps one of the label's negative
patterns does not count. Per label the best match per sentence is combined with a decaying
sum, so repetition helps but saturates. A cost metric next to a quantity ("3x faster")
counts more; a label can be damped by another label's strong title match
(``suppressed_by``: a survey is not a new architecture, a "Fast ..." paper keeps accuracy
rather than targeting it). A per-field logistic map of a few features (:func:`features`)
turns the score into a probability that the label is right.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from ...taxonomy import FIELDS
from .compiled import Compiled, Target
from .weights import (
    BACKGROUND_LEAD,
    BASELINE_FACTOR,
    BASELINE_REACH,
    CALIBRATION,
    DECAY,
    JOINT_MIN_ROLE,
    MAX_TERMS,
    NEGATION_REACH,
    QUANT_BOOST,
    QUANT_REACH,
    ROLE_WEIGHTS,
    STRONG,
)

_SENTENCE_END = re.compile(r"[.!?](?:\s+|\s*\n)(?=[A-Z0-9(\[\"'])")
_FREE_AFTER = re.compile(r"(?<=[a-z0-9])[- ]free\b")
_QUANTITY = re.compile(r"\d(?:[\d.,]*\d)?\s?(?:%|x\b|×|times\b|-fold)")


def _lower_same_length(text: str) -> str:
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


@dataclass(slots=True)
class Evidence:
    value: float
    start: int
    end: int
    sentence: int


@dataclass(slots=True)
class Scored:
    field: str
    label: str
    score: float
    #: every sentence's best match as (value, start, end, sentence), best first
    evidence: list[tuple[float, int, int, int]]
    prob: float = 0.0

    @property
    def best(self) -> Evidence:
        return Evidence(*self.evidence[0])


def _by_value(ev: tuple[float, int, int, int]) -> tuple[float, int]:
    return (-ev[0], ev[1])


def _by_score(item: Scored) -> tuple[float, str]:
    return (-item.score, item.label)


_DECAYS = tuple(DECAY**i for i in range(1, MAX_TERMS))


def features(item: Scored, rank: int, top: float, generic: bool) -> tuple[float, ...]:
    """Calibration features of one label.

    1, its score, its score (capped at 1) if it is the field's best, its score relative to
    the field's best, its best single match, and whether the label is marked ``generic``
    (a catch-all label with diffuse cues) in the taxonomy.
    """
    return (
        1.0,
        item.score,
        min(item.score, 1.0) if rank == 0 else 0.0,
        item.score / top if top > 0 else 0.0,
        item.best.value,
        float(generic),
    )


def score_paper(
    comp: Compiled, title: str, abstract: str
) -> tuple[str, list[int], dict[str, list[Scored]]]:
    """The paper text, its sentence starts and, per field, every label with evidence."""
    text = f"{title}\n{abstract}"
    low = _lower_same_length(text)
    title_end = len(title)
    hits = comp.matches(low, title_end)

    # Sentences: 0 is the title, then the abstract's sentences.
    starts = [0, title_end + 1]
    starts.extend(m.end() for m in _SENTENCE_END.finditer(text, title_end + 1))
    n_sent = len(starts)
    contrib = [False] * n_sent
    background = [False] * n_sent
    baseline_ends: list[int] = []
    negation_ends: list[int] = []
    neg_spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
    targets = comp.targets
    label_hits: list[tuple[Target, int, int]] = []
    sent_of = bisect.bisect_right
    for tid, s, e in hits:
        t = targets[tid]
        kind = t.kind
        if kind == "label" or kind == "joint" or kind == "title" or kind == "contrib":
            label_hits.append((t, s, e))
        elif kind == "neg" or kind == "tneg":
            neg_spans.setdefault((t.field, t.labels[0]), []).append((s, e))
        elif kind == "cue:contribution":
            contrib[sent_of(starts, s) - 1] = True
        elif kind == "cue:background":
            k = sent_of(starts, s) - 1
            if s - starts[k] <= BACKGROUND_LEAD:
                background[k] = True
        elif kind == "cue:baseline":
            baseline_ends.append(e)
        elif kind == "cue:negation":
            negation_ends.append(e)
    baseline_ends.sort()
    negation_ends.sort()

    # Before the first contribution sentence is background; with no contribution
    # sentence at all, only sentences opening with a background cue are.
    first_contrib = next((k for k in range(1, n_sent) if contrib[k]), 0)
    roles: list[str] = ["title"]
    for k in range(1, n_sent):
        if contrib[k]:
            roles.append("contrib")
        elif k < first_contrib or background[k]:
            roles.append("pre")
        else:
            roles.append("post")
    quantities = [m.start() for m in _QUANTITY.finditer(low)]
    free_at = {m.start() for m in _FREE_AFTER.finditer(low)} if "free" in low else set()
    generic = comp.generic

    # Per (field, label): the best match per sentence, as (value, start, end, sentence).
    per_label: dict[tuple[str, str], dict[int, tuple[float, int, int, int]]] = {}
    for t, s, e in label_hits:
        tfield = t.field
        k = 0 if t.kind == "title" else sent_of(starts, s) - 1
        role = roles[k]
        if t.kind == "contrib" and role != "title" and role != "contrib":
            continue
        if free_at and e in free_at:
            continue  # "attention-free", "training-free"
        sent_start = starts[k]
        j = sent_of(negation_ends, s) - 1
        if j >= 0 and negation_ends[j] >= sent_start and s - negation_ends[j] <= NEGATION_REACH:
            continue
        factor = 1.0
        if k > 0:
            j = sent_of(baseline_ends, s) - 1
            if j >= 0 and baseline_ends[j] >= sent_start and s - baseline_ends[j] <= BASELINE_REACH:
                factor = BASELINE_FACTOR[tfield]
        role_w = ROLE_WEIGHTS[tfield][role]
        if t.kind == "joint" and role_w < JOINT_MIN_ROLE:
            role_w = JOINT_MIN_ROLE
        boost = QUANT_BOOST[tfield]
        for label in t.labels:
            key = (tfield, label)
            if t.kind != "joint":
                spans = neg_spans.get(key)
                if spans and any(ns < e and s < ne for ns, ne in spans):
                    continue
            f = factor
            if boost != 1.0 and quantities and key not in generic:
                q = bisect.bisect_left(quantities, s - QUANT_REACH)
                if q < len(quantities) and quantities[q] <= e + QUANT_REACH:
                    f *= boost
            value = t.weight * role_w * f
            slot = per_label.get(key)
            if slot is None:
                per_label[key] = {k: (value, s, e, k)}
            else:
                old = slot.get(k)
                if old is None or value > old[0]:
                    slot[k] = (value, s, e, k)

    out: dict[str, list[Scored]] = {f: [] for f in FIELDS}
    suppressors = comp.suppressors
    for (fname, label), by_sent in per_label.items():
        evs = list(by_sent.values())
        if len(evs) > 1:
            evs.sort(key=_by_value)
        total = evs[0][0]
        for ev, decay in zip(evs[1:MAX_TERMS], _DECAYS, strict=False):
            total += ev[0] * decay
        sup = suppressors.get((fname, label))
        if sup is not None:
            for other in sup[0]:
                title_ev = per_label.get((fname, other), {}).get(0)
                if title_ev is not None and title_ev[0] >= STRONG * 0.9:
                    total *= sup[1]
                    break
        if total > 0:
            out[fname].append(Scored(fname, label, total, evs))
    for fname, items in out.items():
        if not items:
            continue
        items.sort(key=_by_score)
        # p = sigmoid(CALIBRATION . features(...)), written out for speed
        w0, w1, w2, w3, w4, w5 = CALIBRATION[fname]
        top = items[0].score
        for item in items:
            sc = item.score
            z = w0 + w1 * sc + w3 * sc / top + w4 * item.evidence[0][0]
            if (fname, item.label) in generic:
                z += w5
            if item is items[0]:
                z += w2 * min(sc, 1.0)
            item.prob = 1.0 / (1.0 + math.exp(-z))
    return text, starts, out
