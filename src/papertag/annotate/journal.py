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

import json
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ..annotators.llm.records import CallRecord, call_row

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
        self, run_id: str, annotator: Any, options: str, paper_id: str | None, record: CallRecord
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
