"""``--annotator learned``: label papers with a trained :class:`LearnedModel`, offline.

Every label carries the model's calibrated probability, an evidence quote and, below
the assigned labels, runner-up candidates for review. The quote is the sentence (the
title counts as one) whose words add most to the label's score under the model's own
weights; a sentence longer than the schema allows is cut around its strongest term.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import AnnotationError, ConfigError
from ...schema import MAX_EVIDENCE_CHARS, Annotation, paper_text, validate_annotation
from ...taxonomy import FIELDS, Taxonomy, load_taxonomy
from ..base import PaperInput
from .features import Featurizer, model_text, rebuild_vectorizer, rule_columns, sentences
from .model import LearnedModel
from .training import candidates, choose

NAME = "learned"
#: Papers featurized together: the vectorizer, embedding and matrix products work per batch.
BATCH = 512
_WINDOW = MAX_EVIDENCE_CHARS - 20


class LearnedAnnotator:
    """The learned annotator; ``model`` is the saved model's name, ``prompt_version`` its
    content hash (so a retrained model gives new annotations)."""

    name = NAME

    def __init__(
        self,
        learned: LearnedModel,
        *,
        model_name: str = "default",
        version: str | None = None,
        taxonomy: Taxonomy | None = None,
    ) -> None:
        self.taxonomy = taxonomy or load_taxonomy()
        self.learned = learned
        self.model = model_name
        self.prompt_version = version or learned.version
        for fname in FIELDS:
            unknown = set(learned.fields[fname].labels) - set(self.taxonomy.ids(fname))
            if unknown:
                raise ConfigError(
                    f"model {model_name!r} has {fname} labels the taxonomy lacks: "
                    f"{', '.join(sorted(unknown))}; retrain it with `papertag train`"
                )
        settings = learned.settings
        if settings.get("rules_weight"):
            columns = [f"{f}:{lab}" for f, lab in rule_columns(self.taxonomy)]
            if learned.meta.get("rule_columns", columns) != columns:
                raise ConfigError(
                    f"model {model_name!r} was trained with another taxonomy's labels (taxonomy "
                    f"{learned.meta.get('taxonomy_version')}, now {self.taxonomy.version}); "
                    "retrain it with `papertag train`"
                )
        vectorizer = rebuild_vectorizer(settings, learned.vocabulary, learned.idf)
        self._featurizer = Featurizer(settings, self.taxonomy, vectorizer)
        # Evidence weighs a sentence's words by count x idf, not normalised: a long
        # sentence with many supporting words should beat a short one with one.
        self._sentence_vectorizer = rebuild_vectorizer(
            settings, learned.vocabulary, learned.idf, norm=None
        )
        n_words = len(learned.vocabulary)
        # (words, labels), contiguous: one product per field and batch gives every
        # sentence's contribution to every label.
        self._word_coef = {
            f: np.ascontiguousarray(fm.coef[:, :n_words].T) for f, fm in learned.fields.items()
        }
        self._terms = learned.vocabulary

    # -- the Annotator protocol --------------------------------------------------------------
    def annotate(self, paper: PaperInput) -> Annotation:
        out = self.annotate_many([paper])[0]
        if isinstance(out, AnnotationError):
            raise out
        return out

    def annotate_many(self, papers: Sequence[PaperInput]) -> list[Annotation | AnnotationError]:
        """One result per paper, in order: an annotation, or the reason there is none."""
        results: list[Annotation | AnnotationError] = []
        for start in range(0, len(papers), BATCH):
            results.extend(self._batch(papers[start : start + BATCH]))
        return results

    # -- internals -----------------------------------------------------------------------------
    def probabilities(self, papers: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """Calibrated probability of every label of each field, one row per paper."""
        x = self._featurizer.transform(papers)
        out = {}
        for fname, fm in self.learned.fields.items():
            out[fname] = fm.probabilities(fm.scores(x))
        return out

    def _batch(self, papers: Sequence[PaperInput]) -> list[Annotation | AnnotationError]:
        ok = [p for p in papers if p.title.strip() or p.abstract.strip()]
        probs = self.probabilities([(p.title, p.abstract) for p in ok]) if ok else {}
        spans = [sentences(p.title, p.abstract) for p in ok]
        texts = [paper_text(p.title, p.abstract) for p in ok]
        flat = [text[s:e] for text, sp in zip(texts, spans, strict=True) for s, e in sp]
        sent_x = self._sentence_vectorizer.transform(flat) if flat else None
        contrib = (
            {f: np.asarray(sent_x @ w) for f, w in self._word_coef.items()}
            if sent_x is not None
            else {}
        )
        out: list[Annotation | AnnotationError] = []
        row = offset = 0
        for paper in papers:
            if not (paper.title.strip() or paper.abstract.strip()):
                out.append(
                    AnnotationError(
                        "paper has neither title nor abstract text", paper_id=paper.paper_id
                    )
                )
                continue
            n = len(spans[row])
            assert sent_x is not None
            try:
                out.append(
                    self._one(
                        paper,
                        texts[row],
                        spans[row],
                        sent_x,
                        offset,
                        {f: c[offset : offset + n] for f, c in contrib.items()},
                        {f: p[row] for f, p in probs.items()},
                    )
                )
            except AnnotationError as exc:
                exc.paper_id = paper.paper_id
                out.append(exc)
            row += 1
            offset += n
        return out

    def _one(
        self,
        paper: PaperInput,
        text: str,
        spans: list[tuple[int, int]],
        sent_x: Any,
        offset: int,
        contrib: dict[str, np.ndarray],
        probs: dict[str, np.ndarray],
    ) -> Annotation:
        data: dict[str, Any] = {"candidates": []}
        for fname in FIELDS:
            fm = self.learned.fields[fname]
            row = probs[fname]
            chosen = choose(row, fm.threshold)
            data[fname] = []
            runners_up = candidates(row, chosen, fm.labels)
            for j in [*chosen, *runners_up]:
                item = self._label(
                    fname, fm.labels[j], float(row[j]), j, text, spans, sent_x, offset,
                    contrib[fname], paper.title,
                )  # fmt: skip
                if j in runners_up:
                    data["candidates"].append({**item, "field": fname})
                else:
                    data[fname].append(item)
        return validate_annotation(
            data, title=paper.title, abstract=paper.abstract, taxonomy=self.taxonomy
        )

    def _label(
        self,
        fname: str,
        label: str,
        prob: float,
        j: int,
        text: str,
        spans: list[tuple[int, int]],
        sent_x: Any,
        offset: int,
        contrib: np.ndarray,
        title: str,
    ) -> dict[str, Any]:
        column = contrib[:, j]
        if spans and spans[0][0] == 0 and title.strip():
            # The model reads the title twice: its words count twice here too.
            column = column.copy()
            column[0] *= 2
        best = int(np.argmax(column)) if len(spans) else 0
        out: dict[str, Any] = {
            "id": label,
            "confidence": round(min(max(prob, 0.0), 1.0), 4),
            "evidence": self._quote(text, spans[best], sent_x, offset + best, fname, j),
        }
        if label == "other":
            words = " ".join(title.split()[:12])
            out["note"] = (
                f"none of the listed {fname.replace('_', ' ')} labels fits; paper: {words}"
            )
        return out

    def _quote(
        self, text: str, span: tuple[int, int], sent_x: Any, at: int, fname: str, j: int
    ) -> str:
        start, end = span
        sentence = text[start:end].strip()
        if len(sentence) <= MAX_EVIDENCE_CHARS:
            return sentence
        # Cut around the term that adds most to this label within the sentence.
        lo_ptr, hi_ptr = sent_x.indptr[at], sent_x.indptr[at + 1]
        cols = sent_x.indices[lo_ptr:hi_ptr]
        anchor = 0
        if len(cols):
            weights = self._word_coef[fname][cols, j]
            top = cols[int(np.argmax(sent_x.data[lo_ptr:hi_ptr] * weights))]
            words = self._terms[top].split()
            found = re.search(
                r"\b" + r"\W+".join(map(re.escape, words)) + r"\b", sentence, re.IGNORECASE
            )
            if found:
                anchor = found.start()
        lo = max(0, min(anchor - _WINDOW // 3, len(sentence) - _WINDOW))
        piece = sentence[lo : lo + _WINDOW]
        # Whole words only: drop a word cut at either end.
        if lo > 0 and " " in piece:
            piece = piece[piece.index(" ") + 1 :]
        if lo + _WINDOW < len(sentence) and " " in piece:
            piece = piece[: piece.rindex(" ")]
        return piece.strip()


__all__ = ["NAME", "LearnedAnnotator", "model_text"]
