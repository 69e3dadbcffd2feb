"""The record of one HTTP exchange with a model server (an ``llm_calls`` row), and the
request template a run's calls share.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class CallRecord:
    """One HTTP exchange with the model server, as stored in ``llm_calls``."""

    started_at: datetime
    host: str
    path: str
    request_hash: str
    request_body: str
    attempt: int
    duration_ms: float
    status: int | None = None
    response_body: str | None = None
    finish_reason: str | None = None
    refusal: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    retry_after: float | None = None
    cost_usd: float | None = None
    #: Unique per exchange: joins the crash journal to llm_calls.
    call_uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The stored call whose response was replayed instead of asking again (no HTTP, no cost).
    replay_of: int | None = None
    #: Set when ``request_body`` holds only what lies between this template's head and tail.
    request_template: str | None = None
    #: Prompt tokens the provider served from its prompt cache (part of prompt_tokens).
    cached_tokens: int | None = None
    #: The papers the request carried, in the order of their numbers in it.
    paper_ids: list[str] | None = None


@dataclass(frozen=True)
class RequestTemplate:
    """What every request of a run shares: a body is ``head + (one paper's part) + tail``.

    Stored once (``llm_request_templates``); each call keeps only its own part, and the
    ``llm_calls`` view puts the body back together.
    """

    head: str
    tail: str
    template_id: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"{self.head}\x00{self.tail}".encode()).hexdigest()[:16]
        object.__setattr__(self, "template_id", digest)

    def middle(self, body: str) -> str | None:
        """The part of ``body`` between head and tail; None if it does not have both."""
        if (
            len(body) >= len(self.head) + len(self.tail)
            and body.startswith(self.head)
            and body.endswith(self.tail)
        ):
            return body[len(self.head) : len(body) - len(self.tail)]
        return None


def call_row(
    run_id: str,
    annotator: Any,
    options: str,
    paper_id: str | None,
    annotation: str | None,
    r: CallRecord,
) -> dict[str, Any]:
    """One ``llm_calls`` row for an HTTP exchange (a :class:`CallRecord`)."""
    return {
        "run_id": run_id,
        "paper_id": paper_id,
        "annotation_id": annotation,
        "annotator": annotator.name,
        "model": annotator.model,
        "host": r.host,
        "path": r.path,
        "prompt_version": annotator.prompt_version,
        "taxonomy_version": annotator.taxonomy.version,
        "options": options,
        "request_hash": r.request_hash,
        "request_body": r.request_body,
        "status": r.status,
        "response_body": r.response_body,
        "finish_reason": r.finish_reason,
        "refusal": r.refusal,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cost_usd": r.cost_usd,
        "duration_ms": r.duration_ms,
        "attempt": r.attempt,
        "error": r.error,
        "started_at": r.started_at,
        "call_uid": r.call_uid,
        "replay_of": r.replay_of,
        "request_template": r.request_template,
        "cached_tokens": r.cached_tokens,
        "paper_ids": r.paper_ids,
    }
