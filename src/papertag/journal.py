"""The crash journal: every model response on disk the moment it arrives.

Results reach DuckDB through one writer that commits about once a second, so a
``kill -9`` would lose the responses of the last second, and running the command
again would pay for them twice. Each finished HTTP exchange is therefore also
appended, as one JSON line (an ``llm_calls`` row), to a journal beside the
database. A plain ``write`` survives the death of the process (the kernel holds
the data), so the journal needs no fsync. The next run moves whatever the
journal holds into ``llm_calls`` (rows already there are skipped by ``call_uid``)
and replays the stored answers instead of asking again.

Segments are rotated as they grow and deleted once every row in them has been
committed to the database, so a long run keeps the journal small.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any


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
    paper_id: str,
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
    }


#: Start a new segment past this size; old ones go once committed.
SEGMENT_BYTES = 8 * 1024 * 1024


def _default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot journal {type(value).__name__}")


@dataclass
class _Segment:
    path: Path
    handle: IO[str]
    pending: set[str] = field(default_factory=set)
    size: int = 0


class Journal:
    def __init__(self, db_path: Path) -> None:
        self.dir = db_path.with_name(db_path.name + ".journal")
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []

    # -- the next run ---------------------------------------------------------------
    def read(self) -> list[dict[str, Any]]:
        """Every row a previous run journaled (a torn last line, cut by the kill, is skipped)."""
        rows: list[dict[str, Any]] = []
        if not self.dir.is_dir():
            return rows
        for path in sorted(self.dir.glob("*.jsonl")):
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and row.get("call_uid"):
                        if isinstance(row.get("started_at"), str):
                            row["started_at"] = datetime.fromisoformat(row["started_at"])
                        rows.append(row)
        return rows

    def clear(self) -> None:
        """Delete what previous runs left (call once their rows are in the database)."""
        if self.dir.is_dir():
            for path in self.dir.glob("*.jsonl"):
                path.unlink(missing_ok=True)
            if not any(self.dir.iterdir()):
                self.dir.rmdir()

    # -- this run ---------------------------------------------------------------------
    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=_default, ensure_ascii=False) + "\n"
        with self._lock:
            seg = self._segments[-1] if self._segments else None
            if seg is None or seg.size > SEGMENT_BYTES:
                seg = self._open_segment()
            seg.handle.write(line)
            # Out of Python's buffer into the kernel's: survives kill -9.
            seg.handle.flush()
            seg.size += len(line)
            seg.pending.add(row["call_uid"])

    def write_call(
        self, run_id: str, annotator: Any, options: str, paper_id: str, record: CallRecord
    ) -> None:
        """Journal one finished exchange (the call_sink of an annotator)."""
        row = call_row(run_id, annotator, options, paper_id, None, record)
        if record.request_template is None:
            # A whole prompt is large (a re-ask's); the answer is what must survive.
            row["request_body"] = None
        self.write(row)

    def committed(self, call_uids: Iterable[str]) -> None:
        """These rows are in the database: drop segments that hold nothing else."""
        uids = set(call_uids)
        with self._lock:
            for seg in self._segments:
                seg.pending -= uids
            keep = []
            for i, seg in enumerate(self._segments):
                last = i == len(self._segments) - 1
                if not seg.pending and not last:
                    seg.handle.close()
                    seg.path.unlink(missing_ok=True)
                else:
                    keep.append(seg)
            self._segments = keep

    def close(self) -> None:
        """End this run's journal, keeping only segments with rows not yet committed."""
        with self._lock:
            for seg in self._segments:
                seg.handle.close()
                if not seg.pending:
                    seg.path.unlink(missing_ok=True)
            self._segments = []
        if self.dir.is_dir() and not any(self.dir.iterdir()):
            self.dir.rmdir()

    def _open_segment(self) -> _Segment:
        self.dir.mkdir(exist_ok=True)
        path = self.dir / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        seg = _Segment(path, path.open("a", encoding="utf-8"))
        self._segments.append(seg)
        return seg
