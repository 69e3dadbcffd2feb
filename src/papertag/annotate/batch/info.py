"""What the database knows of the batches it sent: ``papertag batches`` and a run's report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...db import Store
from ...errors import ConfigError, ProviderError


class BatchError(ProviderError):
    """The Batch API refused a step (the batch's state is kept for the next run)."""


@dataclass
class BatchInfo:
    """One batch as ``papertag batches`` lists it."""

    batch_uid: str
    batch_id: str | None
    status: str
    model: str
    requests: int
    papers: int
    completed: int | None
    failed: int | None
    created_at: datetime
    collected_at: datetime | None
    error: str | None = None

    @property
    def open(self) -> bool:
        return self.collected_at is None


@dataclass
class BatchReport:
    """What the Batch API side of one run did."""

    submitted: list[BatchInfo] = field(default_factory=list)
    collected: list[BatchInfo] = field(default_factory=list)
    #: Batches still at the server (not yet finished or not yet collected).
    waiting: list[BatchInfo] = field(default_factory=list)
    #: Answers stored from collected batches; their tokens and cost (at the batch price)
    #: and those of the live re-asks of papers whose entry failed validation.
    answers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    #: Requests a collected batch gave no answer for (error lines, expired, cancelled).
    unanswered: int = 0
    #: Papers not sent because --max-cost would not cover them.
    held_back: int = 0
    #: What settling the answers gave: papers annotated and failed, and live re-asks.
    annotated: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    reasks: int = 0


COLUMNS = (
    "batch_uid, batch_id, status, model, requests, papers, completed, failed, "
    "created_at, collected_at, error"
)


def batch_info(row: Sequence[Any]) -> BatchInfo:
    return BatchInfo(*row)


def list_batches(store: Store, *, open_only: bool = False) -> list[BatchInfo]:
    """Every batch this database sent, newest first."""
    where = "WHERE collected_at IS NULL" if open_only else ""
    rows = store.con.execute(
        f"SELECT {COLUMNS} FROM llm_batches {where} ORDER BY created_at DESC, batch_uid"
    ).fetchall()
    return [batch_info(r) for r in rows]


def find_batch(store: Store, ident: str) -> BatchInfo:
    """The batch with this id (ours or the server's); a ConfigError naming it if none."""
    row = store.con.execute(
        f"SELECT {COLUMNS} FROM llm_batches WHERE batch_uid = ? OR batch_id = ?",
        [ident, ident],
    ).fetchone()
    if row is None:
        raise ConfigError(f"no batch {ident!r} in this database (see `papertag batches`)")
    return batch_info(row)


def has_open(store: Store, ann: Any) -> bool:
    """Whether this annotator has batches not yet collected."""
    return bool(
        store.scalar(
            "SELECT count(*) FROM llm_batches WHERE collected_at IS NULL AND annotator = ? "
            "AND model = ? AND prompt_version = ? AND taxonomy_version = ?",
            [ann.name, ann.model, ann.prompt_version, ann.taxonomy.version],
        )
    )
