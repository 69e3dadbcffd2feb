"""The rules annotator: deciding the labels from the scores, and quoting their evidence.

Labels at or above ``ASSIGN`` are assigned (at most 3, at least 1); unassigned labels worth
a review become candidates. Field rules of the spec: a vision-language model is image and
text (joint cues); modality falls back to ``agnostic`` when no data modality is named;
target_metric falls back to ``task_quality`` when no cost metric is targeted, and otherwise
counts quality only where it is stated as a goal (the negative patterns drop "comparable
accuracy", "negligible loss" and the like); technique falls back to ``other`` with a note.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

from ...errors import AnnotationError
from ...schema import MAX_LABELS, Annotation, validate_annotation
from ...taxonomy import FIELDS, Taxonomy, load_taxonomy
from ..base import PaperInput
from .compiled import compiled_for
from .scoring import Evidence, Scored, score_paper
from .weights import (
    ASSIGN,
    CANDIDATE_MIN,
    EVIDENCE_MAX,
    EVIDENCE_SIDE,
    FALLBACK_P,
    MAX_CANDIDATES_PER_FIELD,
    MIN_ROLE_FOR_BEST,
    STRONG,
)

#: The rules' version in the annotation key (their prompt_version): change it with any
#: change to this package that changes what it gives (a weight, the calibration, a
#: rule), and only then, so that a reformat or a comment leaves every annotation
#: current. tests/test_rules.py holds a fingerprint of its output that fails until it is
#: changed. The patterns themselves are in the taxonomy file, versioned with it.
RULES_VERSION = "2026-12-03"

_FALLBACK_ID = {"technique": "other", "modality": "agnostic", "target_metric": "task_quality"}


class RulesAnnotator:
    """Deterministic keyword-rule annotator; see :mod:`papertag.annotators.rules`."""

    name = "rules"
    model = "rules"

    def __init__(self, taxonomy: Taxonomy | None = None) -> None:
        self.taxonomy = taxonomy or load_taxonomy()
        self.prompt_version = RULES_VERSION
        self._comp = compiled_for(self.taxonomy)

    def score(self, title: str, abstract: str) -> tuple[str, list[int], dict[str, list[Scored]]]:
        """The paper text, its sentence starts and, per field, every label with evidence."""
        return score_paper(self._comp, title, abstract)

    def annotate(self, paper: PaperInput) -> Annotation:
        title, abstract = paper.title, paper.abstract
        if not (title.strip() or abstract.strip()):
            raise AnnotationError(
                "paper has neither title nor abstract text", paper_id=paper.paper_id
            )
        text, starts, scored = self.score(title, abstract)
        data: dict[str, Any] = {"candidates": []}
        for fname in FIELDS:
            items = [x for x in scored[fname] if x.label in self.taxonomy.fields[fname].labels]
            chosen, default_p = self._choose(fname, items)
            labels: list[dict[str, Any]] = []
            for x in chosen:
                labels.append(self._label(text, starts, x.label, x.prob, x.best))
            if not labels:
                labels.append(self._fallback(text, starts, _FALLBACK_ID[fname], default_p, title))
            data[fname] = labels
            taken = {lab["id"] for lab in labels}
            n = 0
            for x in items:
                if x.label in taken or x.label == "other" or x.prob < CANDIDATE_MIN:
                    continue
                cand = self._label(text, starts, x.label, min(x.prob, ASSIGN[fname]), x.best)
                cand["field"] = fname
                data["candidates"].append(cand)
                n += 1
                if n >= MAX_CANDIDATES_PER_FIELD:
                    break
        return validate_annotation(data, title=title, abstract=abstract, taxonomy=self.taxonomy)

    @staticmethod
    def _choose(fname: str, items: list[Scored]) -> tuple[list[Scored], float]:
        """The labels to assign (best first), or none and the fallback's probability."""
        fallback = _FALLBACK_ID[fname]
        fb = next((x for x in items if x.label == fallback), None)
        regular = [x for x in items if x.label != fallback]
        chosen = [x for x in regular if x.prob >= ASSIGN[fname]][:MAX_LABELS]
        default_p = FALLBACK_P[fname]
        if fname == "modality":
            # A modality-independent method is tagged agnostic alone; with no data
            # modality named at all, agnostic is the default.
            if fb is not None and fb.prob >= ASSIGN[fname] and not chosen:
                return [fb], default_p
            if (
                not chosen
                and regular
                and (fb is None or regular[0].score > fb.score)
                and regular[0].prob >= default_p
            ):
                return [regular[0]], default_p
            if not chosen and fb is not None:
                return [dataclasses.replace(fb, prob=max(fb.prob, default_p))], default_p
            return chosen, default_p
        if fname == "target_metric":
            # task_quality is a label like the others when stated as a goal, and the
            # default when the paper targets no cost metric.
            chosen = [x for x in items if x.prob >= ASSIGN[fname]][:MAX_LABELS]
            if not chosen and fb is not None:
                return [dataclasses.replace(fb, prob=max(fb.prob, default_p))], default_p
            return chosen, default_p
        # technique: with nothing above the bar, the best label still beats "other" when it
        # has a strong match or is at least as likely as the fallback.
        if not chosen and regular:
            best = regular[0]
            if best.prob >= default_p or best.best.value >= STRONG * MIN_ROLE_FOR_BEST:
                return [best], default_p
        return chosen, default_p

    # --- output pieces -------------------------------------------------------------------

    @staticmethod
    def _quote(text: str, starts: list[int], ev_start: int, ev_end: int) -> str:
        k = bisect.bisect_right(starts, ev_start) - 1
        s0 = starts[k]
        s1 = starts[k + 1] if k + 1 < len(starts) else len(text)
        if k == 0:
            s1 = min(s1, starts[1] - 1) if len(starts) > 1 else s1
        sentence = text[s0:s1]
        if len(sentence.strip()) <= EVIDENCE_MAX:
            quote = sentence
        else:
            a = max(s0, ev_start - EVIDENCE_SIDE)
            b = min(s1, ev_end + EVIDENCE_SIDE)
            if a > s0:
                sp = text.find(" ", a, ev_start)
                a = sp + 1 if sp != -1 else a
            if b < s1:
                sp = text.rfind(" ", ev_end, b)
                b = sp if sp != -1 else b
            quote = text[a:b]
        quote = quote.strip()[:EVIDENCE_MAX].strip()
        return quote or text[ev_start:ev_end].strip()[:EVIDENCE_MAX].strip() or text.strip()[:1]

    def _label(
        self, text: str, starts: list[int], label: str, prob: float, ev: Evidence
    ) -> dict[str, Any]:
        return {
            "id": label,
            "confidence": round(min(max(prob, 0.0), 1.0), 3),
            "evidence": self._quote(text, starts, ev.start, ev.end),
        }

    def _fallback(
        self, text: str, starts: list[int], label: str, prob: float, title: str
    ) -> dict[str, Any]:
        """A default label with no match: quote the start of the abstract (or the title)."""
        end = starts[2] if len(starts) > 2 else len(text)
        first = text[starts[1] : end] if len(starts) > 1 else text
        quote = " ".join(first.split()[:30]) or " ".join(title.split()[:30]) or text.strip()
        out: dict[str, Any] = {
            "id": label,
            "confidence": round(prob, 3),
            "evidence": quote[:EVIDENCE_MAX].strip(),
        }
        if label == "other":
            words = " ".join(title.split())[:100] or "unrecognised technique"
            out["note"] = f"no listed technique matched; paper: {words}"
        return out
