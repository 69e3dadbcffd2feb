"""What every annotator is: the paper it reads, the key it labels under, and its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..schema import Annotation
from ..taxonomy import Taxonomy


@dataclass(frozen=True)
class PaperInput:
    paper_id: str
    title: str
    abstract: str


class AnnotatorInfo(Protocol):
    """What identifies an annotator's results: part of every annotation's key."""

    name: str
    model: str
    prompt_version: str
    taxonomy: Taxonomy


class Annotator(AnnotatorInfo, Protocol):
    def annotate(self, paper: PaperInput) -> Annotation: ...


ANNOTATORS = ("learned", "rules", "llm")
#: The annotator of ``papertag annotate`` and ``eval`` when none is named: a local model
#: trained on labelled papers, offline and free (it beats ``rules`` on held-out papers).
DEFAULT_ANNOTATOR = "learned"

#: Requests in flight at once unless --concurrency says otherwise: enough to hide a hosted
#: API's latency, few enough for a low rate-limit tier (the throttle adapts within it).
DEFAULT_CONCURRENCY = 8

#: Most papers one LLM request may carry (--papers-per-call): past a few dozen abstracts a
#: model starts to lose papers, and one bad answer costs more re-asks.
MAX_PAPERS_PER_CALL = 32
