"""The answer to a call that labels several papers: its schema, and each paper's entry.

One request carries K papers, numbered 1..K in the user message. The model answers
with one object, ``{"papers": [{"paper": n, "technique": [...], ...}, ...]}``: a list
with one entry per paper, tied to its paper by the number. Each entry is validated
on its own, as an :class:`papertag.schema.Annotation` checked against that paper's
text, so one bad entry fails one paper, never the call.

The wire model is an instructor ``OpenAISchema`` (its public API only): its
``openai_schema`` is the function (or response-format) schema a request sends, and
``from_response`` reads the answer out of a completion in the mode the request used
(``instructor.Mode``; no ``validation_context``). Instructor validates only the envelope (a list of objects); the
entries' own rules need each paper's text as context, which one validation of the
whole list cannot give per entry, so those run here, one entry at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import instructor
import pydantic
from openai.types.chat import ChatCompletion
from pydantic import ConfigDict, WithJsonSchema, model_validator

from ...errors import AnnotationError, ValidationFailed
from ...schema import MAX_LABELS, MIN_LABELS, Annotation, format_validation_error, paper_text
from ...taxonomy import FIELDS, Taxonomy
from ..base import PaperInput

#: The function (tools mode) or schema (json_schema mode) the model answers with.
SCHEMA_NAME = "Annotations"

#: How instructor reads each of papertag's modes.
INSTRUCTOR_MODES = {
    "tools": instructor.Mode.TOOLS,
    "json_schema": instructor.Mode.JSON_SCHEMA,
    "json": instructor.Mode.JSON,
    "md_json": instructor.Mode.MD_JSON,
}


def _labels(ids: Sequence[str]) -> dict[str, Any]:
    item = {
        "type": "object",
        "properties": {
            "id": {"enum": list(ids)},
            "confidence": {"type": "number"},
            "evidence": {"type": "string"},
            "note": {"type": "string"},
        },
        "required": ["id", "confidence", "evidence"],
        "additionalProperties": False,
    }
    return {"type": "array", "minItems": MIN_LABELS, "maxItems": MAX_LABELS, "items": item}


def entries_schema(taxonomy: Taxonomy) -> dict[str, Any]:
    """The ``papers`` list's JSON schema: each field's ids as an enum (a grammar-constrained
    server keeps ids valid only if each field lists its own), and nothing the system
    message already says (descriptions, titles): every call sends it."""
    entry: dict[str, Any] = {
        "type": "object",
        "properties": {
            "paper": {"type": "integer"},
            **{f: _labels(taxonomy.ids(f)) for f in FIELDS},
            "candidates": {
                "type": "array",
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"enum": list(FIELDS)},
                        "id": {"type": "string"},
                        "confidence": {"type": "number"},
                        "evidence": {"type": "string"},
                        "note": {"type": "string"},
                    },
                    "required": ["field", "id", "confidence", "evidence"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["paper", *FIELDS],
        "additionalProperties": False,
    }
    return {"type": "array", "minItems": 1, "items": entry}


class _Envelope(instructor.OpenAISchema):
    """Instructor validates only this: a list of entries, each an object."""

    model_config = ConfigDict(extra="ignore")

    papers: list[dict[str, Any]]

    @model_validator(mode="before")
    @classmethod
    def _bare_entry(cls, data: Any) -> Any:
        # A one-paper answer given as the entry itself (small local models drop the list).
        if isinstance(data, dict) and "papers" not in data and any(f in data for f in FIELDS):
            return {"papers": [data]}
        return data


_MODELS: dict[str, type[_Envelope]] = {}


def answers_model(taxonomy: Taxonomy) -> type[_Envelope]:
    """The wire model for this taxonomy, an instructor ``OpenAISchema``; its JSON schema
    is the compact one of :func:`entries_schema`. One per taxonomy version."""
    if (cached := _MODELS.get(taxonomy.version)) is not None:
        return cached
    papers_type = Annotated[list[dict[str, Any]], WithJsonSchema(entries_schema(taxonomy))]
    model = pydantic.create_model(
        SCHEMA_NAME,
        __base__=_Envelope,
        __doc__="The labels of each paper: one entry per paper, `paper` set to its number.",
        papers=(papers_type, ...),
    )
    _MODELS[taxonomy.version] = model
    return model


def function_schema(taxonomy: Taxonomy) -> dict[str, Any]:
    """``{"name", "description", "parameters"}``: what tools and json_schema modes send."""
    schema: dict[str, Any] = answers_model(taxonomy).openai_schema
    return schema


@dataclass(frozen=True)
class PaperAnswer:
    """One paper's part of a completion.

    ``annotation`` when its entry validated. Otherwise ``error`` says why: a
    :class:`ValidationFailed` is worth re-asking this paper alone, feeding the error back
    (``entry``, the paper's entry as the model wrote it, is then the answer being
    corrected; None when the answer had no usable entry for it and the paper is asked
    afresh); another error is final, or, when ``retryable``, for a later run.
    """

    paper: PaperInput
    annotation: Annotation | None = None
    error: AnnotationError | None = None
    entry: str | None = None


def as_completion(
    completion: ChatCompletion | dict[str, Any] | bytes | str,
) -> ChatCompletion | None:
    """A chat completion from its body (a batch output line's ``response.body`` as it is);
    None if it is not a JSON object. A body that does not fit openai's model exactly (a
    field left out, a finish_reason of its own) is built leniently, as ``create`` does."""
    if isinstance(completion, ChatCompletion):
        return completion
    try:
        if isinstance(completion, dict):
            return ChatCompletion.model_validate(completion)
        return ChatCompletion.model_validate_json(completion)
    except pydantic.ValidationError:
        pass
    data: Any = completion
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    return ChatCompletion.construct(**data) if isinstance(data, dict) else None


def _whole(
    papers: Sequence[PaperInput], error: AnnotationError, raw: str | None = None
) -> list[PaperAnswer]:
    """Every paper fails the same way. A one-paper call keeps the raw answer, so that a
    re-ask can show the model what it wrote."""
    entry = raw if len(papers) == 1 else None
    return [PaperAnswer(p, error=error, entry=entry) for p in papers]


def parse_answers(
    papers: Sequence[PaperInput],
    completion: ChatCompletion | dict[str, Any] | bytes | str,
    *,
    mode: str,
    taxonomy: Taxonomy,
    max_tokens: int | None = None,
) -> list[PaperAnswer]:
    """One :class:`PaperAnswer` per paper, in the order of ``papers`` (numbered 1..K in
    the request). Never raises for a bad answer."""
    parsed = as_completion(completion)
    if parsed is None or not parsed.choices:
        # A 200 without an answer is the server's fault: worth asking again.
        return _whole(
            papers,
            AnnotationError("the server sent a 200 with no usable choice", retryable=True),
        )
    choice = parsed.choices[0]
    refusal = getattr(choice.message, "refusal", None)
    if refusal or choice.finish_reason == "length":
        reason = (
            f"the model refused: {refusal}"
            if refusal
            else "the model's answer was cut off"
            + (f" (finish_reason=length at max_tokens={max_tokens})" if max_tokens else "")
        )
        if len(papers) > 1:
            # Maybe one paper's doing, or K answers too long together: each is asked alone.
            return _whole(papers, ValidationFailed(reason))
        # Asking the same again would only repeat it.
        return _whole(papers, AnnotationError(reason))
    model = answers_model(taxonomy)
    try:
        try:
            envelope = model.from_response(parsed, mode=INSTRUCTOR_MODES[mode])
        except pydantic.ValidationError:
            if mode != "json":
                raise
            # Local models often wrap the object in a sentence or a fenced block: read the
            # text's last JSON object, as instructor's MD_JSON mode does.
            envelope = model.from_response(parsed, mode=instructor.Mode.MD_JSON)
    except Exception as exc:
        # pydantic's (not JSON, not a list of objects) or instructor's own (no tool call).
        what = (
            format_validation_error(exc).removeprefix(": ")
            if isinstance(exc, pydantic.ValidationError)
            else str(exc)
        )
        reason = f"the answer is not the JSON object asked for: {what}"
        return _whole(papers, ValidationFailed(reason), _raw_text(parsed))
    return _entries(papers, envelope.papers, taxonomy, _raw_text(parsed))


def _raw_text(completion: ChatCompletion) -> str | None:
    message = completion.choices[0].message
    for call in message.tool_calls or []:
        function = getattr(call, "function", None)
        if function is not None:
            return str(function.arguments)
    return message.content


def _entries(
    papers: Sequence[PaperInput],
    entries: list[dict[str, Any]],
    taxonomy: Taxonomy,
    raw: str | None,
) -> list[PaperAnswer]:
    by_number: dict[int, dict[str, Any]] = {}
    if len(papers) == 1 and len(entries) == 1:
        # One paper, one entry: its number cannot be anything else.
        by_number[1] = entries[0]
    for entry in entries:
        number = entry.get("paper")
        if isinstance(number, int) and not isinstance(number, bool) and number not in by_number:
            by_number[number] = entry
    answers = []
    for number, paper in enumerate(papers, start=1):
        found = by_number.get(number)
        if found is None:
            answers.append(
                PaperAnswer(
                    paper, error=ValidationFailed(f"the answer has no entry for paper {number}")
                )
            )
            continue
        fields = {k: v for k, v in found.items() if k != "paper"}
        try:
            annotation = Annotation.model_validate(
                fields,
                context={"text": paper_text(paper.title, paper.abstract), "taxonomy": taxonomy},
            )
        except pydantic.ValidationError as exc:
            # What a re-ask of this paper alone shows the model it wrote: the answer as it
            # came for a call of one paper, else the paper's entry as a one-paper answer.
            own = raw if len(papers) == 1 else json.dumps({"papers": [{**found, "paper": 1}]})
            error = ValidationFailed(format_validation_error(exc))
            answers.append(PaperAnswer(paper, error=error, entry=own))
            continue
        answers.append(PaperAnswer(paper, annotation=annotation))
    return answers
