"""The one thread that writes a run's results to DuckDB: columnar batches, a transaction
each, at least once a second into a database the caller holds open, every few seconds
into a file the run opens only to store them (so other processes can read it between).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from ..annotators import (
    AnnotatorInfo,
)
from ..annotators.llm.records import call_row
from ..db import Store
from ..errors import AnnotationError
from ..schema import Annotation
from .pending import Pending

#: Results per write transaction.
WRITE_BATCH = 2_000
#: Longest time results wait in memory before a commit, into a database held open.
FLUSH_EVERY = 1.0
#: ... and into a file opened for each batch: each opening and closing (a checkpoint) costs
#: a tenth of a second or more as the file grows, and answers are safe in the journal.
TURN_EVERY = 2.0


@functools.cache
def call_schema() -> pa.Schema:
    return pa.schema(
        [
            ("run_id", pa.string()),
            ("paper_id", pa.string()),
            ("annotation_id", pa.string()),
            ("annotator", pa.string()),
            ("model", pa.string()),
            ("host", pa.string()),
            ("path", pa.string()),
            ("prompt_version", pa.string()),
            ("taxonomy_version", pa.string()),
            ("options", pa.string()),
            ("request_hash", pa.string()),
            ("request_body", pa.string()),
            ("status", pa.int32()),
            ("response_body", pa.string()),
            ("finish_reason", pa.string()),
            ("refusal", pa.string()),
            ("prompt_tokens", pa.int32()),
            ("completion_tokens", pa.int32()),
            ("cost_usd", pa.float64()),
            ("duration_ms", pa.float64()),
            ("attempt", pa.int32()),
            ("error", pa.string()),
            ("started_at", pa.timestamp("us")),
            ("call_uid", pa.string()),
            ("replay_of", pa.int64()),
            ("cached_tokens", pa.int32()),
            ("paper_ids", pa.list_(pa.string())),
            ("request_template", pa.string()),
        ]
    )


@functools.cache
def annotation_schema() -> pa.Schema:
    return pa.schema(
        [
            ("annotation_id", pa.string()),
            ("paper_id", pa.string()),
            ("content_hash", pa.string()),
            ("annotator", pa.string()),
            ("model", pa.string()),
            ("prompt_version", pa.string()),
            ("taxonomy_version", pa.string()),
            ("run_id", pa.string()),
            ("created_at", pa.timestamp("us")),
            ("duration_ms", pa.float64()),
            ("call_uid", pa.string()),
        ]
    )


def annotation_id(paper_id: str, content_hash: str, annotator: AnnotatorInfo) -> str:
    key = "|".join(
        [
            paper_id,
            content_hash,
            annotator.name,
            annotator.model,
            annotator.prompt_version,
            annotator.taxonomy.version,
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Rows:
    """A run's rows for the annotation tables, built as results come; no database (the
    Ray engine's workers build them where the papers are annotated)."""

    def __init__(self, annotator: AnnotatorInfo, run_id: str) -> None:
        self.annotator, self.run_id = annotator, run_id
        self.options = options_json(annotator)
        self.ann_rows: list[dict[str, Any]] = []
        self.label_rows: list[dict[str, Any]] = []
        self.fail_rows: list[dict[str, Any]] = []
        self.call_rows: list[dict[str, Any]] = []

    def calls(
        self, group: Sequence[Pending], annotations: dict[str, str], records: Sequence[Any]
    ) -> None:
        """Queue the HTTP exchanges of one call of the annotator (its papers ``group``;
        ``annotations``: the annotation_id of each paper that got one). An exchange that
        carried one paper names it and its annotation; one that carried several names
        them in ``paper_ids``."""
        for r in records:
            carried = r.paper_ids or [group[0].paper_id]
            paper_id = carried[0] if len(carried) == 1 else None
            annotation = annotations.get(paper_id) if paper_id is not None else None
            self.call_rows.append(
                call_row(self.run_id, self.annotator, self.options, paper_id, annotation, r)
            )

    def add(
        self,
        paper: Pending,
        result: Annotation,
        duration_ms: float,
        now: datetime,
        call_uid: str | None = None,
    ) -> str:
        """Queue one validated annotation (``call_uid``: the exchange whose answer it was
        validated from); returns its annotation_id."""
        a = self.annotator
        aid = annotation_id(paper.paper_id, paper.content_hash, a)
        self.ann_rows.append(
            {
                "annotation_id": aid,
                "paper_id": paper.paper_id,
                "content_hash": paper.content_hash,
                "annotator": a.name,
                "model": a.model,
                "prompt_version": a.prompt_version,
                "taxonomy_version": a.taxonomy.version,
                "run_id": self.run_id,
                "created_at": now,
                "duration_ms": duration_ms,
                "call_uid": call_uid,
            }
        )
        for fname in ("technique", "modality", "target_metric"):
            for rank, label in enumerate(result.labels(fname), start=1):
                self.label_rows.append(
                    {
                        "annotation_id": aid,
                        "field": fname,
                        "kind": "label",
                        "rank": rank,
                        "label": label.id,
                        "confidence": label.confidence,
                        "evidence": label.evidence,
                        "note": label.note,
                    }
                )
        for rank, cand in enumerate(result.candidates, start=1):
            self.label_rows.append(
                {
                    "annotation_id": aid,
                    "field": cand.field,
                    "kind": "candidate",
                    "rank": rank,
                    "label": cand.id,
                    "confidence": cand.confidence,
                    "evidence": cand.evidence,
                    "note": cand.note,
                }
            )
        return aid

    def fail(self, paper: Pending, exc: AnnotationError, now: datetime) -> None:
        a = self.annotator
        self.fail_rows.append(
            {
                "paper_id": paper.paper_id,
                "content_hash": paper.content_hash,
                "annotator": a.name,
                "model": a.model,
                "prompt_version": a.prompt_version,
                "taxonomy_version": a.taxonomy.version,
                "run_id": self.run_id,
                "reason": exc.reason,
                "last_completion": exc.last_completion,
                "attempts": exc.attempts,
                "created_at": now,
                "retryable": exc.retryable,
            }
        )

    def __len__(self) -> int:
        return len(self.ann_rows) + len(self.fail_rows) + len(self.call_rows)

    def tables(self) -> dict[str, pa.Table]:
        """What is queued: a table of each non-empty kind, by the table it goes to."""
        tables = {}
        if self.ann_rows:
            tables["annotations"] = pa.Table.from_pylist(self.ann_rows, schema=annotation_schema())
        if self.label_rows:
            tables["annotation_labels"] = pa.Table.from_pylist(self.label_rows)
        if self.fail_rows:
            tables["annotation_failures"] = pa.Table.from_pylist(self.fail_rows)
        if self.call_rows:
            tables["llm_call_rows"] = pa.Table.from_pylist(self.call_rows, schema=call_schema())
        return tables


class Writer(Rows):
    """Buffers results and writes them in columnar batches, one transaction each; the
    database is given at each flush (a run given a path opens the file only to write)."""

    def __init__(self, annotator: AnnotatorInfo, run_id: str, every: float = FLUSH_EVERY) -> None:
        super().__init__(annotator, run_id)
        self.every = every
        self.flushed_at = time.monotonic()

    def due(self) -> bool:
        return len(self) >= WRITE_BATCH or (
            len(self) > 0 and time.monotonic() - self.flushed_at >= self.every
        )

    def results(self) -> int:
        """Papers whose result (annotation or failure) waits to be written."""
        return len(self.ann_rows) + len(self.fail_rows)

    def take(self) -> Writer:
        """What is queued, as a writer of its own (for another thread to store); this one
        starts empty."""
        batch = Writer(self.annotator, self.run_id, self.every)
        batch.ann_rows, batch.label_rows = self.ann_rows, self.label_rows
        batch.fail_rows, batch.call_rows = self.fail_rows, self.call_rows
        self.ann_rows, self.label_rows, self.fail_rows, self.call_rows = [], [], [], []
        self.flushed_at = time.monotonic()
        return batch

    def put_back(self, batch: Writer) -> None:
        """A batch that could not be stored goes back ahead of what came since."""
        self.ann_rows = batch.ann_rows + self.ann_rows
        self.label_rows = batch.label_rows + self.label_rows
        self.fail_rows = batch.fail_rows + self.fail_rows
        self.call_rows = batch.call_rows + self.call_rows

    def flush(self, store: Store) -> list[str]:
        """Commit what is queued; returns the call_uids now in the database."""
        self.flushed_at = time.monotonic()
        if not len(self):
            return []
        write_tables(store, self.tables())
        uids = [r["call_uid"] for r in self.call_rows]
        self.ann_rows, self.label_rows, self.fail_rows, self.call_rows = [], [], [], []
        return uids


#: The tables a run writes, in the order they are written.
TABLES = ("annotations", "annotation_labels", "annotation_failures", "llm_call_rows")


def write_tables(store: Store, tables: dict[str, pa.Table]) -> None:
    """Store a run's rows (:meth:`Rows.tables`) in one transaction."""
    with store.transaction() as con:
        if (anns := tables.get("annotations")) is not None:
            con.register("_new_ann", anns)
            # --force re-annotates under the same key: the new result replaces the old.
            con.execute(
                "DELETE FROM annotation_labels WHERE annotation_id IN (SELECT annotation_id FROM _new_ann)"
            )
            con.execute(
                "DELETE FROM annotations WHERE annotation_id IN (SELECT annotation_id FROM _new_ann)"
            )
            con.unregister("_new_ann")
        for name in TABLES:
            if (table := tables.get(name)) is not None:
                store.insert_arrow(name, table)


def options_json(annotator: AnnotatorInfo) -> str:
    """The annotator's request options as stored with each call (the same for a whole run)."""
    return json.dumps(getattr(annotator, "options", dict)())
