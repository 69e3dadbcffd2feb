"""What a valid annotation is.

Every annotator (rules, LLM, ...) produces an :class:`Annotation` through
:func:`validate_annotation`; nothing else is ever stored. Validation needs a
context (the paper's text and the taxonomy) because ids and evidence quotes are
checked against them. Error messages name the field, the bad value and what is
allowed, so that an LLM can repair its answer from the message alone.
"""

from __future__ import annotations

from typing import Any, Literal, Self, TypedDict

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ValidationFailed
from .taxonomy import FIELDS, Taxonomy, load_taxonomy

MIN_LABELS = 1
MAX_LABELS = 3
MAX_EVIDENCE_CHARS = 300

#: Labels at or above this confidence are accepted without review.
ACCEPT_THRESHOLD = 0.8
#: Labels and candidates below this confidence are not worth a reviewer's time.
DROP_THRESHOLD = 0.3

FieldName = Literal["technique", "modality", "target_metric"]


def normalize_for_match(text: str) -> str:
    """Collapse whitespace and case so evidence matches 'up to whitespace and case'."""
    # split() breaks on the same characters as the regex \s+ (str.isspace), 3x faster.
    return " ".join(text.split()).casefold()


class ValidationContext(TypedDict):
    text: str
    taxonomy: Taxonomy


class Label(BaseModel):
    """One label of one field."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="One of this field's label ids, exactly as listed.")
    confidence: float = Field(
        ge=0.0, le=1.0, description="Probability (0 to 1) that this label is right."
    )
    evidence: str = Field(
        description=f"A short quote (at most {MAX_EVIDENCE_CHARS} characters) copied verbatim "
        "from the title or abstract that supports the label."
    )
    note: str | None = Field(
        default=None,
        description="Required when id is 'other': a few words saying what the label is.",
    )


class Candidate(Label):
    """A runner-up label the annotator was unsure of, offered to a reviewer."""

    field: FieldName = Field(description="Which field this candidate belongs to.")


def _context(info: ValidationInfo) -> ValidationContext:
    ctx = info.context
    if not isinstance(ctx, dict) or "text" not in ctx:
        raise ValueError(
            "internal: validation needs a context with the paper's text and the taxonomy"
        )
    if "taxonomy" not in ctx:
        ctx = {**ctx, "taxonomy": load_taxonomy()}
    return ctx  # type: ignore[return-value]


def _normalized_text(ctx: ValidationContext) -> str:
    # Normalise the paper text once per validation, not once per label; keyed by the text
    # itself so a context dict reused for another paper cannot match stale text.
    text = ctx["text"]
    cached = ctx.get("_normalized")
    if not (isinstance(cached, tuple) and cached[0] is text):
        cached = (text, normalize_for_match(text))
        ctx["_normalized"] = cached  # type: ignore[typeddict-unknown-key]
    return str(cached[1])


def _label_problems(field_name: str, where: str, label: Label, ctx: ValidationContext) -> list[str]:
    problems: list[str] = []
    allowed = ctx["taxonomy"].ids(field_name)
    if label.id not in allowed:
        problems.append(
            f"{where}.id: {label.id!r} is not a {field_name} id; use one of: {', '.join(allowed)}"
        )
    if label.id == "other" and not (label.note and label.note.strip()):
        problems.append(
            f"{where}.note: id 'other' needs a short note saying what the {field_name} is"
        )
    evidence = label.evidence.strip()
    if not evidence:
        problems.append(f"{where}.evidence: empty; quote a few words of the title or abstract")
    elif len(evidence) > MAX_EVIDENCE_CHARS:
        problems.append(
            f"{where}.evidence: {len(evidence)} characters is too long; quote at most "
            f"{MAX_EVIDENCE_CHARS} characters of the title or abstract"
        )
    elif normalize_for_match(evidence) not in _normalized_text(ctx):
        problems.append(
            f"{where}.evidence: {_short(evidence)!r} does not occur in the title or abstract; "
            "copy the words exactly as written there"
        )
    return problems


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Annotation(BaseModel):
    """The three multi-label fields of one paper, plus optional runner-up candidates."""

    model_config = ConfigDict(extra="forbid")

    technique: list[Label] = Field(
        description="What the paper's main contribution does: 1 to 3 labels.",
        json_schema_extra={"minItems": MIN_LABELS, "maxItems": MAX_LABELS},
    )
    modality: list[Label] = Field(
        description="The kind of data the method works on: 1 to 3 labels.",
        json_schema_extra={"minItems": MIN_LABELS, "maxItems": MAX_LABELS},
    )
    target_metric: list[Label] = Field(
        description="What the paper sets out to improve: 1 to 3 labels.",
        json_schema_extra={"minItems": MIN_LABELS, "maxItems": MAX_LABELS},
    )
    candidates: list[Candidate] = Field(
        default_factory=list,
        description="Optional runner-up labels you are unsure of (any field), with lower confidence.",
    )

    @field_validator("technique", "modality", "target_metric")
    @classmethod
    def _check_field(cls, labels: list[Label], info: ValidationInfo) -> list[Label]:
        field_name = str(info.field_name)
        ctx = _context(info)
        problems: list[str] = []
        if not MIN_LABELS <= len(labels) <= MAX_LABELS:
            problems.append(
                f"{field_name}: has {len(labels)} labels; give {MIN_LABELS} to {MAX_LABELS}, "
                "keeping only the best supported"
            )
        seen: set[str] = set()
        for i, label in enumerate(labels):
            if label.id in seen:
                problems.append(
                    f"{field_name}[{i}].id: {label.id!r} is listed twice; list each id once"
                )
            seen.add(label.id)
            problems.extend(_label_problems(field_name, f"{field_name}[{i}]", label, ctx))
        if problems:
            raise ValueError("; ".join(problems))
        return labels

    @field_validator("candidates")
    @classmethod
    def _check_candidates(
        cls, candidates: list[Candidate], info: ValidationInfo
    ) -> list[Candidate]:
        ctx = _context(info)
        problems: list[str] = []
        seen: set[tuple[str, str]] = set()
        for i, cand in enumerate(candidates):
            if (cand.field, cand.id) in seen:
                problems.append(f"candidates[{i}]: {cand.field} {cand.id!r} is listed twice")
            seen.add((cand.field, cand.id))
            problems.extend(_label_problems(cand.field, f"candidates[{i}]", cand, ctx))
        if problems:
            raise ValueError("; ".join(problems))
        return candidates

    @model_validator(mode="after")
    def _candidates_are_not_labels(self) -> Self:
        problems = [
            f"candidates[{i}]: {c.field} {c.id!r} is already one of the {c.field} labels; drop the candidate"
            for i, c in enumerate(self.candidates)
            if any(label.id == c.id for label in getattr(self, c.field))
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def labels(self, field_name: str) -> list[Label]:
        if field_name not in FIELDS:
            raise KeyError(field_name)
        labels: list[Label] = getattr(self, field_name)
        return labels


def paper_text(title: str, abstract: str) -> str:
    """The text evidence quotes are checked against."""
    return f"{title}\n{abstract}"


def format_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: ``field: message``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(
            msg if msg.startswith(str(err["loc"][0]) if err["loc"] else "\0") else f"{loc}: {msg}"
        )
    return "; ".join(lines)


def validate_annotation(
    data: Any, *, title: str, abstract: str, taxonomy: Taxonomy | None = None
) -> Annotation:
    """Validate raw annotator output (dict or JSON string) against the paper's text.

    Raises :class:`ValidationFailed` with an LLM-readable reason.
    """
    ctx: ValidationContext = {
        "text": paper_text(title, abstract),
        "taxonomy": taxonomy or load_taxonomy(),
    }
    try:
        if isinstance(data, str | bytes):
            return Annotation.model_validate_json(data, context=ctx)
        return Annotation.model_validate(data, context=ctx)
    except ValidationError as exc:
        raise ValidationFailed(
            format_validation_error(exc), last_completion=data if isinstance(data, str) else None
        ) from None
