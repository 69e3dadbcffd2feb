"""Annotators: one module per ``--annotator`` value.

An annotator turns a paper's title and abstract into a validated
:class:`papertag.schema.Annotation` or raises :class:`papertag.errors.AnnotationError`.
Its ``name``, ``model`` and ``prompt_version`` are part of the annotation key, so
any change to them (or to the taxonomy) gives new annotations instead of
overwriting old ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..taxonomy import Taxonomy
from .base import (
    ANNOTATORS,
    DEFAULT_ANNOTATOR,
    DEFAULT_CONCURRENCY,
    MAX_PAPERS_PER_CALL,
    Annotator,
    AnnotatorInfo,
    PaperInput,
)

if TYPE_CHECKING:
    from ..db import Store


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
        from .llm.annotator import LLMAnnotator

        return LLMAnnotator(taxonomy=taxonomy, **options)
    raise ConfigError(f"unknown annotator {name!r}; choose one of: {', '.join(ANNOTATORS)}")


def resolve_annotator(
    annotator: str | Annotator, options: dict[str, Any], *, client: bool, store: Store
) -> AnnotatorInfo:
    """The annotator named (built with ``options``) or given; for ``llm`` without
    ``client``, only its settings (:class:`LLMConfig`): enough for its annotation key."""
    if annotator == "llm" and not client:
        from .llm.config import LLMConfig

        return LLMConfig.from_options(options)
    if annotator == "learned":
        # Its model may be one trained into this database.
        return get_annotator(annotator, store=store, **options)
    if isinstance(annotator, str):
        return get_annotator(annotator, **options)
    return annotator


__all__ = [
    "ANNOTATORS",
    "DEFAULT_ANNOTATOR",
    "DEFAULT_CONCURRENCY",
    "MAX_PAPERS_PER_CALL",
    "Annotator",
    "AnnotatorInfo",
    "PaperInput",
    "get_annotator",
    "resolve_annotator",
]
