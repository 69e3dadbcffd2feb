"""Annotators: one module per ``--annotator`` value.

An annotator turns a paper's title and abstract into a validated
:class:`papertag.schema.Annotation` or raises :class:`papertag.errors.AnnotationError`.
Its ``name``, ``model`` and ``prompt_version`` are part of the annotation key, so
any change to them (or to the taxonomy) gives new annotations instead of
overwriting old ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigError
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


def get_annotator(
    name: str = DEFAULT_ANNOTATOR, *, taxonomy: Taxonomy | None = None, **options: Any
) -> Annotator:
    """Build the annotator called ``name``.

    ``learned`` takes ``model`` (a saved model's name, ``default`` for the shipped one, or
    a model file's path) and ``store`` (the database whose trained models it may use).
    """
    if name == "learned":
        from .learned.annotator import LearnedAnnotator
        from .learned.registry import load_model

        unknown = set(options) - {"model", "store"}
        if unknown:
            raise ConfigError(f"the learned annotator takes no {', '.join(sorted(unknown))} option")
        model, model_name, version = load_model(options.get("store"), options.get("model"))
        return LearnedAnnotator(model, model_name=model_name, version=version, taxonomy=taxonomy)
    if name == "rules":
        from .rules import RulesAnnotator

        return RulesAnnotator(taxonomy=taxonomy, **options)
    if name == "llm":
        from .llm import LLMAnnotator

        return LLMAnnotator(taxonomy=taxonomy, **options)
    raise ConfigError(f"unknown annotator {name!r}; choose one of: {', '.join(ANNOTATORS)}")


__all__ = [
    "ANNOTATORS",
    "DEFAULT_ANNOTATOR",
    "DEFAULT_CONCURRENCY",
    "Annotator",
    "AnnotatorInfo",
    "PaperInput",
    "get_annotator",
]
