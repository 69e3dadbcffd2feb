"""Run an annotator over the papers that lack an annotation for its current key.

The key is (paper content hash, annotator, model, prompt version, taxonomy
version): re-running the same annotator on the same text does nothing, while a
changed abstract, prompt or taxonomy gives a new annotation and leaves the old
one queryable (``current = false`` in the ``labels`` view). Results are written
in small transactions, so a crash loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from .annotators import Annotator, PaperInput, get_annotator
from .errors import AnnotationError, ConfigError
from .schema import Annotation
from .store import Store

#: Results per write transaction.
WRITE_BATCH = 2_000


@dataclass
class AnnotateReport:
    annotator: str
    model: str
    prompt_version: str
    taxonomy_version: str
    run_id: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


_CALL_SCHEMA = pa.schema(
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
    ]
)


def annotation_id(paper_id: str, content_hash: str, annotator: Annotator) -> str:
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


@dataclass
class _Pending:
    paper_id: str
    title: str
    abstract: str
    content_hash: str


def pending_papers(
    store: Store,
    annotator: Annotator,
    *,
    force: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    paper_ids: Sequence[str] | None = None,
) -> tuple[list[_Pending], int]:
    """Papers to annotate, and how many were skipped because their key is already settled.

    A key is settled by an annotation, or by a failure that asking again would only
    repeat (an answer that failed validation, a refusal, a cut-off answer): those are
    retried only with ``retry_failed``. Transport failures are always retried.
    """
    where = ["TRUE"]
    params: list[Any] = []
    if paper_ids is not None:
        where.append("p.paper_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(paper_ids))
    # --limit N means the first N papers (in ingest order), so re-running the same
    # command is idempotent instead of moving on to the next N.
    limit_sql = f"LIMIT {int(limit)}" if limit is not None else ""
    eligible_sql = f"SELECT * FROM papers p WHERE {' AND '.join(where)} ORDER BY p.first_seen, p.paper_id {limit_sql}"
    key = (
        "paper_id = p.paper_id AND content_hash = p.content_hash AND annotator = ? AND model = ? "
        "AND prompt_version = ? AND taxonomy_version = ?"
    )
    key_params = [
        annotator.name,
        annotator.model,
        annotator.prompt_version,
        annotator.taxonomy.version,
    ]
    eligible = int(store.scalar(f"SELECT count(*) FROM ({eligible_sql})", params))
    filters = ["TRUE"]
    filter_params: list[Any] = []
    if not force:
        filters.append(f"NOT EXISTS (SELECT 1 FROM annotations WHERE {key})")
        filter_params += key_params
        if not retry_failed:
            filters.append(
                f"NOT EXISTS (SELECT 1 FROM annotation_failures WHERE {key} AND NOT retryable)"
            )
            filter_params += key_params
    sql = (
        f"SELECT p.paper_id, p.title, p.abstract, p.content_hash FROM ({eligible_sql}) p "
        f"WHERE {' AND '.join(filters)} ORDER BY p.first_seen, p.paper_id"
    )
    rows = store.con.execute(sql, params + filter_params).fetchall()
    skipped = eligible - len(rows)
    return [_Pending(*r) for r in rows], skipped


class _Writer:
    """Buffers results and writes them in columnar batches, one transaction each."""

    def __init__(self, store: Store, annotator: Annotator, run_id: str) -> None:
        self.store, self.annotator, self.run_id = store, annotator, run_id
        self.ann_rows: list[dict[str, Any]] = []
        self.label_rows: list[dict[str, Any]] = []
        self.fail_rows: list[dict[str, Any]] = []
        self.call_rows: list[dict[str, Any]] = []

    def calls(self, paper: _Pending, annotation: str | None, records: Sequence[Any]) -> None:
        """Queue the HTTP exchanges that produced (or failed to produce) one annotation."""
        a = self.annotator
        options = json.dumps(getattr(a, "options", dict)())
        for r in records:
            self.call_rows.append(
                {
                    "run_id": self.run_id,
                    "paper_id": paper.paper_id,
                    "annotation_id": annotation,
                    "annotator": a.name,
                    "model": a.model,
                    "host": r.host,
                    "path": r.path,
                    "prompt_version": a.prompt_version,
                    "taxonomy_version": a.taxonomy.version,
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
                }
            )

    def add(self, paper: _Pending, result: Annotation, duration_ms: float, now: datetime) -> str:
        """Queue one validated annotation; returns its annotation_id."""
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

    def fail(self, paper: _Pending, exc: AnnotationError, now: datetime) -> None:
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

    def flush(self) -> None:
        if not len(self):
            return
        store = self.store
        with store.transaction() as con:
            if self.ann_rows:
                anns = pa.Table.from_pylist(self.ann_rows)
                con.register("_new_ann", anns)
                # --force re-annotates under the same key: the new result replaces the old.
                con.execute(
                    "DELETE FROM annotation_labels WHERE annotation_id IN (SELECT annotation_id FROM _new_ann)"
                )
                con.execute(
                    "DELETE FROM annotations WHERE annotation_id IN (SELECT annotation_id FROM _new_ann)"
                )
                con.unregister("_new_ann")
                store.insert_arrow("annotations", anns)
            if self.label_rows:
                store.insert_arrow("annotation_labels", pa.Table.from_pylist(self.label_rows))
            if self.fail_rows:
                store.insert_arrow("annotation_failures", pa.Table.from_pylist(self.fail_rows))
            if self.call_rows:
                store.insert_arrow(
                    "llm_calls", pa.Table.from_pylist(self.call_rows, schema=_CALL_SCHEMA)
                )
        self.ann_rows, self.label_rows, self.fail_rows, self.call_rows = [], [], [], []


def annotate(
    db: Store | str | Path | None = None,
    annotator: str | Annotator = "rules",
    *,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    paper_ids: Iterable[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> AnnotateReport:
    """Annotate every paper lacking an annotation for the annotator's current key.

    ``annotator`` is a name (``rules``) or an annotator object. ``on_start(total)``
    and ``on_progress(done, failed)`` let a caller draw progress.
    """
    if limit is not None and limit < 0:
        raise ConfigError("--limit must be 0 or more")
    store = db if isinstance(db, Store) else Store(db)
    ann: Annotator | None = None
    try:
        ann = annotator if not isinstance(annotator, str) else get_annotator(annotator, **options)
        run_id = uuid.uuid4().hex[:12]
        report = AnnotateReport(
            ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, run_id
        )
        started = time.perf_counter()
        store.con.execute(
            "INSERT INTO annotation_runs (run_id, annotator, model, prompt_version, taxonomy_version, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [run_id, ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, _now()],
        )
        ids = list(paper_ids) if paper_ids is not None else None
        todo, report.skipped = pending_papers(
            store, ann, force=force, retry_failed=retry_failed, limit=limit, paper_ids=ids
        )
        report.total = len(todo)
        if on_start:
            on_start(len(todo))
        writer = _Writer(store, ann, run_id)
        drain: Callable[[], Sequence[Any]] = getattr(ann, "drain_calls", tuple)
        try:
            for paper in todo:
                t0 = time.perf_counter()
                now = _now()
                try:
                    result = ann.annotate(PaperInput(paper.paper_id, paper.title, paper.abstract))
                except AnnotationError as exc:
                    exc.paper_id = paper.paper_id
                    writer.fail(paper, exc, now)
                    writer.calls(paper, None, drain())
                    report.failed += 1
                    report.failures.append((paper.paper_id, exc.reason))
                except BaseException:
                    # A fatal error (bad key, Ctrl-C): keep the log of what was sent.
                    writer.calls(paper, None, drain())
                    raise
                else:
                    aid = writer.add(paper, result, (time.perf_counter() - t0) * 1000, now)
                    writer.calls(paper, aid, drain())
                    report.done += 1
                if len(writer) >= WRITE_BATCH:
                    writer.flush()
                if on_progress:
                    on_progress(report.done, report.failed)
        finally:
            # Whatever happened (Ctrl-C included), keep what was finished.
            writer.flush()
            report.seconds = time.perf_counter() - started
            store.con.execute(
                "UPDATE annotation_runs SET finished_at = ?, done = ?, skipped = ?, failed = ? WHERE run_id = ?",
                [_now(), report.done, report.skipped, report.failed, run_id],
            )
        return report
    finally:
        # Close only what we built (an LLM client's connections); a caller's annotator is theirs.
        if isinstance(annotator, str) and ann is not None:
            getattr(ann, "close", lambda: None)()
        if not isinstance(db, Store):
            store.close()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
