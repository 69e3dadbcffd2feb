"""Run an annotator over the papers that lack an annotation for its current key.

The key is (paper content hash, annotator, model, prompt version, taxonomy
version): re-running the same annotator on the same text does nothing, while a
changed abstract, prompt or taxonomy gives a new annotation and leaves the old
one queryable (``current = false`` in the ``labels`` view).

LLM annotators run ``concurrency`` papers at once, each in a thread of a pool;
results come back to the one thread that writes to DuckDB, which commits at least
once a second. Every model response is also journaled the moment it arrives
(:mod:`papertag.journal`), so after a ``kill -9`` the same command resumes: it
stores what the journal holds and replays those answers instead of paying for
them again. Ctrl-C stops starting papers, lets those in flight finish, commits
and returns a report that says how to resume.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from .annotators import (
    DEFAULT_ANNOTATOR,
    Annotator,
    AnnotatorInfo,
    PaperInput,
    get_annotator,
)
from .annotators.llm_config import BATCH_DISCOUNT, LLMConfig, estimate_cost, price_for
from .errors import AnnotationError, ConfigError
from .journal import Journal, RequestTemplate, call_row
from .schema import Annotation
from .store import Store

#: Results per write transaction.
WRITE_BATCH = 2_000
#: Longest time results wait in memory before a commit.
FLUSH_EVERY = 1.0


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
    #: HTTP exchanges made (replays of stored answers not counted) and their usage.
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    #: False when the model has no known price (cost_usd is then 0 but means "unknown").
    cost_known: bool = False
    #: Answers reused from a run that was killed before storing them.
    replayed: int = 0
    #: Journal rows of a killed run moved into llm_calls at start.
    recovered: int = 0
    #: 429 answers seen.
    throttled: int = 0
    #: Why the run stopped early: "interrupted" (Ctrl-C) or "max-cost"; None if it finished.
    stopped: str | None = None
    #: Papers left for a later run (not started, or cut off by the stop).
    left: int = 0
    #: What the Batch API side did (``--batch``, or batches of an earlier run collected).
    batch: Any = None
    #: ``--annotator cascade``: the share sent to the LLM and the cost saved
    #: (:class:`papertag.cascade.CascadeSummary`), and the learned annotator's run.
    cascade: Any = None
    learned: Any = None


@dataclass
class Outcome:
    """What annotating one paper gave: a result, a reasoned failure or a fatal error."""

    started: datetime
    duration_ms: float = 0.0
    result: Annotation | None = None
    error: AnnotationError | None = None
    fatal: BaseException | None = None
    calls: Sequence[Any] = ()


def work(ann: Annotator, paper: PaperInput) -> Outcome:
    """Annotate one paper; never raises (a pool thread's errors travel in the outcome)."""
    drain: Callable[[], Sequence[Any]] = getattr(ann, "drain_calls", tuple)
    out = Outcome(_now())
    t0 = time.perf_counter()
    try:
        out.result = ann.annotate(paper)
    except AnnotationError as exc:
        exc.paper_id = paper.paper_id
        out.error = exc
    except BaseException as exc:
        out.fatal = exc
    out.duration_ms = (time.perf_counter() - t0) * 1000
    out.calls = drain()
    return out


@functools.cache
def _call_schema() -> pa.Schema:
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
            ("request_template", pa.string()),
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


@dataclass
class _Pending:
    paper_id: str
    title: str
    abstract: str
    content_hash: str


def pending_papers(
    store: Store,
    annotator: AnnotatorInfo,
    *,
    force: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    paper_ids: Sequence[str] | None = None,
    texts: bool = True,
) -> tuple[list[_Pending], int]:
    """Papers to annotate, and how many were skipped because their key is already settled.

    A key is settled by an annotation, or by a failure that asking again would only
    repeat (an answer that failed validation, a refusal, a cut-off answer): those are
    retried only with ``retry_failed``. Transport failures are always retried. Without
    ``texts``, titles and abstracts are left empty for :func:`load_texts` to fill a batch
    at a time, so a run's memory does not grow with the papers it has to do.
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
    # A paper in a batch still open at the server is not sent again (its answer is paid for).
    filters.append(
        "NOT EXISTS (SELECT 1 FROM llm_batch_requests r JOIN llm_batches b USING (batch_uid) "
        "WHERE r.paper_id = p.paper_id AND r.content_hash = p.content_hash "
        "AND b.collected_at IS NULL AND b.annotator = ? AND b.model = ? "
        "AND b.prompt_version = ? AND b.taxonomy_version = ?)"
    )
    filter_params += key_params
    text_cols = "p.title, p.abstract" if texts else "'', ''"
    sql = (
        f"SELECT p.paper_id, {text_cols}, p.content_hash FROM ({eligible_sql}) p "
        f"WHERE {' AND '.join(filters)} ORDER BY p.first_seen, p.paper_id"
    )
    rows = store.con.execute(sql, params + filter_params).fetchall()
    skipped = eligible - len(rows)
    return [_Pending(*r) for r in rows], skipped


def load_texts(store: Store, papers: Sequence[_Pending]) -> list[_Pending]:
    """The papers with their title and abstract, read from the database."""
    rows = store.con.execute(
        "SELECT paper_id, title, abstract FROM papers WHERE paper_id IN "
        "(SELECT unnest(?::VARCHAR[]))",
        [[p.paper_id for p in papers]],
    ).fetchall()
    text = {pid: (title, abstract) for pid, title, abstract in rows}
    # A paper deleted meanwhile keeps empty text, and fails as a paper without text would.
    return [_Pending(p.paper_id, *text.get(p.paper_id, ("", "")), p.content_hash) for p in papers]


class _Writer:
    """Buffers results and writes them in columnar batches, one transaction each."""

    def __init__(self, store: Store, annotator: AnnotatorInfo, run_id: str) -> None:
        self.store, self.annotator, self.run_id = store, annotator, run_id
        self.options = options_json(annotator)
        self.ann_rows: list[dict[str, Any]] = []
        self.label_rows: list[dict[str, Any]] = []
        self.fail_rows: list[dict[str, Any]] = []
        self.call_rows: list[dict[str, Any]] = []
        self.flushed_at = time.monotonic()

    def due(self) -> bool:
        return len(self) >= WRITE_BATCH or (
            len(self) > 0 and time.monotonic() - self.flushed_at >= FLUSH_EVERY
        )

    def calls(self, paper: _Pending, annotation: str | None, records: Sequence[Any]) -> None:
        """Queue the HTTP exchanges that produced (or failed to produce) one annotation."""
        for r in records:
            self.call_rows.append(
                call_row(self.run_id, self.annotator, self.options, paper.paper_id, annotation, r)
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

    def flush(self) -> list[str]:
        """Commit what is queued; returns the call_uids now in the database."""
        self.flushed_at = time.monotonic()
        if not len(self):
            return []
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
                    "llm_call_rows", pa.Table.from_pylist(self.call_rows, schema=_call_schema())
                )
        uids = [r["call_uid"] for r in self.call_rows]
        self.ann_rows, self.label_rows, self.fail_rows, self.call_rows = [], [], [], []
        return uids


def options_json(annotator: AnnotatorInfo) -> str:
    """The annotator's request options as stored with each call (the same for a whole run)."""
    return json.dumps(getattr(annotator, "options", dict)())


def save_template(store: Store, template: RequestTemplate | None) -> None:
    """Store the part of a run's requests that each call's row leaves out."""
    if template is not None:
        store.con.execute(
            "INSERT OR IGNORE INTO llm_request_templates VALUES (?, ?, ?)",
            [template.template_id, template.head, template.tail],
        )


def recover_journal(store: Store, journal: Journal) -> int:
    """Move the rows a killed run journaled into ``llm_calls``; returns how many were new."""
    rows = journal.read()
    if rows:
        table = pa.Table.from_pylist(rows, schema=_call_schema())
        cols = ", ".join(table.column_names)
        with store.transaction() as con:
            before = int(store.scalar("SELECT count(*) FROM llm_call_rows"))
            con.register("_journal", table)
            con.execute(
                f"INSERT INTO llm_call_rows ({cols}) SELECT {cols} FROM _journal j "
                "WHERE NOT EXISTS (SELECT 1 FROM llm_call_rows c WHERE c.call_uid = j.call_uid)"
            )
            con.unregister("_journal")
            added = int(store.scalar("SELECT count(*) FROM llm_call_rows")) - before
    journal.clear()
    return added if rows else 0


def paid_answers(
    store: Store, annotator: AnnotatorInfo, paper_ids: Sequence[str]
) -> dict[str, list[tuple[int, str]]]:
    """Answers already paid for but never stored as a result, by request hash.

    These are 200s logged for a paper whose run died before its annotation or
    failure was committed (so the call has no annotation and its run no failure
    row for the paper), and that no later run has replayed into a stored result.
    """
    rows = store.con.execute(
        """
        SELECT c.request_hash, c.call_id, c.response_body FROM llm_call_rows c
        WHERE c.status = 200 AND c.annotation_id IS NULL AND c.response_body IS NOT NULL
          AND c.replay_of IS NULL
          AND c.annotator = ? AND c.model = ? AND c.host = ?
          AND c.prompt_version = ? AND c.taxonomy_version = ?
          AND c.paper_id IN (SELECT unnest(?::VARCHAR[]))
          AND NOT EXISTS (SELECT 1 FROM annotation_failures f
                          WHERE f.run_id = c.run_id AND f.paper_id = c.paper_id)
          -- Used by a replay whose result was stored (a replay killed before its commit
          -- leaves the answer free for the next run).
          AND NOT EXISTS (SELECT 1 FROM llm_call_rows r
                          WHERE r.replay_of = c.call_id
                            AND (r.annotation_id IS NOT NULL
                                 OR EXISTS (SELECT 1 FROM annotation_failures f2
                                            WHERE f2.run_id = r.run_id
                                              AND f2.paper_id = r.paper_id)))
        ORDER BY c.call_id
        """,
        [
            annotator.name,
            annotator.model,
            getattr(annotator, "host", ""),
            annotator.prompt_version,
            annotator.taxonomy.version,
            list(paper_ids),
        ],
    ).fetchall()
    answers: dict[str, list[tuple[int, str]]] = {}
    for request_hash, call_id, body in rows:
        answers.setdefault(request_hash, []).append((call_id, body))
    return answers


@dataclass
class Estimate:
    """What a run would send (``--dry-run``): nothing is sent or written."""

    annotator: str
    model: str
    papers: int
    skipped: int
    prompt_tokens: int
    completion_tokens: int
    #: None when the model has no known price (see PAPERTAG_PRICES).
    cost_usd: float | None
    #: With ``max_cost``: about how many of the papers it lets start (None: no limit or price).
    within_budget: int | None = None
    #: ``--annotator cascade``: the share it would send (:class:`papertag.cascade.CascadeSummary`).
    cascade: Any = None


def _estimate_paper(ann: AnnotatorInfo, paper: _Pending) -> tuple[int, int]:
    estimate_tokens: Callable[[PaperInput], tuple[int, int]] | None = getattr(
        ann, "estimate_tokens", None
    )
    if estimate_tokens is None:
        return 0, 0
    return estimate_tokens(_input(paper))


def resolve_annotator(
    annotator: str | Annotator, options: dict[str, Any], *, client: bool, store: Store
) -> AnnotatorInfo:
    """The annotator named (built with ``options``) or given; for ``llm`` without
    ``client``, only its settings (:class:`LLMConfig`): enough for its annotation key."""
    if annotator == "llm" and not client:
        return LLMConfig.from_options(options)
    if annotator == "learned":
        # Its model may be one trained into this database.
        return get_annotator(annotator, store=store, **options)
    if isinstance(annotator, str):
        return get_annotator(annotator, **options)
    return annotator


def estimate(
    db: Store | str | Path | None = None,
    annotator: str | Annotator = DEFAULT_ANNOTATOR,
    *,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    max_cost: float | None = None,
    paper_ids: Iterable[str] | None = None,
    batch: bool = False,
    **options: Any,
) -> Estimate:
    """How many papers a run would send, and their estimated tokens and cost.

    With ``max_cost``, also about how many of them the budget lets start: each paper
    while the estimated spend so far plus its own likely cost (a fifth over its
    estimate, as the run reserves) fits.
    """
    store = db if isinstance(db, Store) else Store(db)
    # Estimates need the prompt and prices, not a client: no openai import, no connection.
    ann: AnnotatorInfo | None = None
    try:
        if annotator == "cascade":
            from . import cascade

            learned = cascade.learned_annotator(store, options)
            ids = cascade.scope(store, limit, list(paper_ids) if paper_ids is not None else None)
            sent = cascade.doubtful_predicted(store, learned, ids)
            _, llm_opts = cascade.split_options(options)
            est = estimate(
                store,
                "llm",
                paper_ids=sent,
                force=force,
                retry_failed=retry_failed,
                max_cost=max_cost,
                batch=batch,
                **llm_opts,
            )
            kept = sorted(set(ids) - set(sent))
            saved = (
                estimate(store, "llm", paper_ids=kept, force=True, batch=batch, **llm_opts).cost_usd
                if kept
                else 0.0
            )
            est.annotator = "cascade"
            est.cascade = cascade.CascadeSummary(len(ids), len(sent), saved)
            return est
        ann = resolve_annotator(annotator, options, client=False, store=store)
        todo, skipped = pending_papers(
            store,
            ann,
            force=force,
            retry_failed=retry_failed,
            limit=limit,
            paper_ids=list(paper_ids) if paper_ids is not None else None,
        )
        prompt = completion = 0
        spent, within, room = 0.0, 0, max_cost is not None
        for paper in todo:
            p, c = _estimate_paper(ann, paper)
            prompt, completion = prompt + p, completion + c
            one = estimate_cost(ann.model, p, c)
            # As the run: papers start in order, and the first that does not fit ends it.
            if room and one is not None and max_cost is not None:
                room = spent + one * RESERVE_MARGIN <= max_cost
                if room:
                    spent, within = spent + one, within + 1
        cost = 0.0 if not prompt else estimate_cost(ann.model, prompt, completion)
        if batch and cost is not None:
            cost *= BATCH_DISCOUNT
        within_budget = within if max_cost is not None and cost is not None else None
        return Estimate(
            ann.name, ann.model, len(todo), skipped, prompt, completion, cost, within_budget
        )
    finally:
        if isinstance(annotator, str) and ann is not None:
            getattr(ann, "close", lambda: None)()
        if not isinstance(db, Store):
            store.close()


#: Threads (and papers started) per request the annotator may have in flight: behind each
#: call in flight a second thread waits with its next request built, and the throttle
#: lets it go the moment an answer is read, while that answer's thread validates and
#: stores it. The throttle, not the pool, keeps the requests in flight to --concurrency.
THREADS_PER_CALL = 2

#: Papers handed at once to an annotator that labels in batches (``annotate_many``).
BATCH_PAPERS = 512

#: --max-cost sets aside this much over a paper's likely cost while it is in flight.
RESERVE_MARGIN = 1.2


class _Budget:
    """--max-cost: a paper starts only if the spend so far, plus what the papers in
    flight will likely cost, plus its own likely cost, stays within the limit."""

    def __init__(self, ann: AnnotatorInfo, max_cost: float | None) -> None:
        self.ann, self.max_cost = ann, max_cost
        self.reserved: dict[str, float] = {}
        self.settled_cost = 0.0
        self.settled = 0

    def _likely(self, paper: _Pending) -> float:
        p, c = _estimate_paper(self.ann, paper)
        first = estimate_cost(self.ann.model, p, c) or 0.0
        # Re-asks cost more than one attempt: once papers have settled, trust their average.
        seen = self.settled_cost / self.settled if self.settled >= 5 else first * 1.5
        return max(first, seen) * RESERVE_MARGIN

    def admit(self, paper: _Pending, spent: float) -> bool:
        if self.max_cost is None:
            return True
        likely = self._likely(paper)
        if spent + sum(self.reserved.values()) + likely > self.max_cost:
            return False
        self.reserved[paper.paper_id] = likely
        return True

    def settle(self, paper: _Pending, cost: float) -> None:
        self.reserved.pop(paper.paper_id, None)
        self.settled += 1
        self.settled_cost += cost


def annotate(
    db: Store | str | Path | None = None,
    annotator: str | Annotator = DEFAULT_ANNOTATOR,
    *,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    paper_ids: Iterable[str] | None = None,
    max_cost: float | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[AnnotateReport], None] | None = None,
    batch: bool = False,
    wait: bool = False,
    poll_every: float | None = None,
    on_batches: Callable[[list[Any]], None] | None = None,
    batch_hook: Callable[[str], None] | None = None,
    **options: Any,
) -> AnnotateReport:
    """Annotate every paper lacking an annotation for the annotator's current key.

    ``annotator`` is a name (``rules``, ``llm``) or an annotator object; ``options``
    go to its constructor (``model``, ``base_url``, ``concurrency``, ``rpm``, ...).
    ``max_cost`` (USD) stops starting papers before the estimated spend would pass
    it. ``on_start(total)`` and ``on_progress(report)`` let a caller draw progress.
    Ctrl-C returns early with ``report.stopped == "interrupted"``; run again to resume.

    ``batch`` (``llm`` only) sends the papers through the server's Batch API instead, and
    returns once the batch is created unless ``wait``; any run of the same annotator
    first collects its batches that have ended (:mod:`papertag.llm_batch`). ``wait``
    polls every ``poll_every`` seconds (by the annotator's ``sleep``), calling
    ``on_batches`` with the open batches after each poll; ``batch_hook(step)`` is called
    before each step of sending and collecting (see ``llm_batch.STEPS``).
    """
    if limit is not None and limit < 0:
        raise ConfigError("--limit must be 0 or more")
    if max_cost is not None and max_cost < 0:
        raise ConfigError("--max-cost must be 0 or more")
    store: Store | None = None
    ann: AnnotatorInfo | None = None
    try:
        store = db if isinstance(db, Store) else Store(db)
        if annotator == "cascade":
            from . import cascade

            cascade_store = store

            def one(name: str, ids: list[str], opts: dict[str, Any]) -> AnnotateReport:
                llm = name == "llm"
                return annotate(
                    cascade_store,
                    name,
                    paper_ids=ids,
                    force=force,
                    retry_failed=retry_failed,
                    max_cost=max_cost if llm else None,
                    on_start=on_start,
                    on_progress=on_progress,
                    batch=batch and llm,
                    wait=wait and llm,
                    poll_every=poll_every,
                    on_batches=on_batches,
                    batch_hook=batch_hook,
                    **opts,
                )

            def cost(ids: list[str]) -> float | None:
                _, llm_opts = cascade.split_options(options)
                return estimate(
                    cascade_store, "llm", paper_ids=ids, force=True, batch=batch, **llm_opts
                ).cost_usd

            return cast(
                AnnotateReport,
                cascade.run_cascade(
                    store,
                    options,
                    limit=limit,
                    paper_ids=list(paper_ids) if paper_ids is not None else None,
                    run=one,
                    llm_cost=cost,
                ),
            )
        ann = resolve_annotator(annotator, options, client=True, store=store)
        if (
            max_cost is not None
            and price_for(ann.model) is None
            and hasattr(ann, "estimate_tokens")
        ):
            raise ConfigError(
                f"--max-cost needs the price of {ann.model!r}: set PAPERTAG_PRICES="
                f"'{{\"{ann.model}\": [usd_per_1M_prompt_tokens, usd_per_1M_completion_tokens]}}'"
            )
        ids = list(paper_ids) if paper_ids is not None else None

        def run(only: list[str] | None = None) -> AnnotateReport:
            assert store is not None and ann is not None
            chosen = ids if only is None else [p for p in only if ids is None or p in set(ids)]
            return _Run(store, ann, max_cost, on_start, on_progress).run(
                limit=limit, force=force, retry_failed=retry_failed, paper_ids=chosen
            )

        if (batch or wait) and getattr(ann, "name", None) != "llm":
            raise ConfigError("--batch and --wait need --annotator llm (or cascade)")
        if getattr(ann, "name", None) == "llm" and hasattr(ann, "client"):
            from . import llm_batch

            if batch or wait or llm_batch.has_open(store, ann):
                report: AnnotateReport = llm_batch.annotate_with_batches(
                    store,
                    cast(Any, ann),
                    run,
                    submit=batch,
                    wait=wait,
                    pending=lambda: pending_papers(
                        store,
                        ann,
                        force=force,
                        retry_failed=retry_failed,
                        limit=limit,
                        paper_ids=ids,
                    )[0],
                    hook=batch_hook,
                    poll_every=poll_every,
                    on_batches=on_batches,
                )
                return report
        return run()
    finally:
        # Close only what we built (an LLM client's connections); a caller's annotator is theirs.
        if isinstance(annotator, str) and ann is not None:
            getattr(ann, "close", lambda: None)()
        if store is not None and not isinstance(db, Store):
            store.close()


class _Run:
    """One ``annotate`` run: pool threads call the model, this thread alone writes to DuckDB."""

    def __init__(
        self,
        store: Store,
        ann: AnnotatorInfo,
        max_cost: float | None,
        on_start: Callable[[int], None] | None,
        on_progress: Callable[[AnnotateReport], None] | None,
    ) -> None:
        self.store, self.ann = store, ann
        self.on_start, self.on_progress = on_start, on_progress
        self.run_id = uuid.uuid4().hex[:12]
        self.report = AnnotateReport(
            ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, self.run_id
        )
        # Known for a priced model, even when no answer carried tokens (none came).
        self.report.cost_known = price_for(ann.model) is not None
        self.writer = _Writer(store, ann, self.run_id)
        self.budget = _Budget(ann, max_cost)
        self.ctrl_c = _CtrlC()
        # An annotator that labels many papers at once runs in batches, reading each batch's
        # texts only when it comes up.
        self._batches = hasattr(ann, "annotate_many") and int(getattr(ann, "concurrency", 1)) <= 1
        # Only annotators that call a server keep a journal (rules results cost nothing to redo).
        self.journal: Journal | None = None
        if hasattr(ann, "call_sink") and str(store.path) != ":memory:":
            self.journal = Journal(store.path)

    def run(
        self,
        *,
        limit: int | None,
        force: bool,
        retry_failed: bool,
        paper_ids: list[str] | None,
    ) -> AnnotateReport:
        report, ann, store = self.report, self.ann, self.store
        started = time.perf_counter()
        # A Ctrl-C while the run prepares is noticed once it is ready, before any paper
        # starts: raised in the middle of a query or an import, it can leave a library
        # half-loaded, or be swallowed by DuckDB's own imports.
        with self.ctrl_c:
            if self.journal is not None:
                report.recovered = recover_journal(store, self.journal)
            store.con.execute(
                "INSERT INTO annotation_runs (run_id, annotator, model, prompt_version, taxonomy_version, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    self.run_id,
                    ann.name,
                    ann.model,
                    ann.prompt_version,
                    ann.taxonomy.version,
                    _now(),
                ],
            )
            todo, report.skipped = pending_papers(
                store,
                ann,
                force=force,
                retry_failed=retry_failed,
                limit=limit,
                paper_ids=paper_ids,
                texts=not self._batches,
            )
            report.total = len(todo)
            transport = getattr(ann, "transport", None)
            workers = getattr(ann, "concurrency", None)
            if todo and workers is None:
                store.prepare_arrow()
            if transport is not None:
                if not force and todo:
                    transport.replay = paid_answers(store, ann, [p.paper_id for p in todo])
                # Stored before any call that refers to it (journaled calls included).
                save_template(store, getattr(transport, "template", None))
            if self.journal is not None:
                ann.call_sink = functools.partial(  # type: ignore[attr-defined]
                    self.journal.write_call, self.run_id, ann, self.writer.options
                )
            if self.on_start:
                self.on_start(len(todo))
        if self.ctrl_c.take():
            report.stopped = "interrupted"
        try:
            if workers is not None:
                self._concurrent(todo, int(workers))
            else:
                self._inline(todo)
        finally:
            # Whatever happened (Ctrl-C, a fatal error), keep what was finished.
            self._flush()
            self._end_calls()
            report.seconds = time.perf_counter() - started
            report.left = report.total - report.done - report.failed
            store.con.execute(
                "UPDATE annotation_runs SET finished_at = ?, done = ?, skipped = ?, failed = ? WHERE run_id = ?",
                [_now(), report.done, report.skipped, report.failed, self.run_id],
            )
        return report

    def _end_calls(self) -> None:
        """Close the journal (keeping segments not yet committed) and count the 429s."""
        if self.journal is not None:
            self.ann.call_sink = None  # type: ignore[attr-defined]
            # Segments still holding uncommitted answers stay for the next run to recover.
            self.journal.close()
        self.report.throttled = getattr(getattr(self.ann, "throttle", None), "throttled", 0)

    # -- the ways of running --------------------------------------------------------------
    def _inline(self, todo: list[_Pending]) -> None:
        if self._batches:
            self._batched(todo)
            return
        for paper in todo:
            # Nothing is in flight here, so a paper the budget refuses will never fit.
            if self._admit(paper) is not True:
                return
            try:
                outcome = work(cast(Annotator, self.ann), _input(paper))
            except KeyboardInterrupt:
                self.report.stopped = "interrupted"
                return
            self._settle(paper, outcome)
            if self.writer.due():
                self._flush()
            if isinstance(outcome.fatal, KeyboardInterrupt):
                self.report.stopped = "interrupted"
                return

    def _batched(self, todo: list[_Pending]) -> None:
        """An annotator that labels many papers at once (the learned model's matrix
        products): a batch at a time, each result settled and written as one paper's."""
        many = self.ann.annotate_many  # type: ignore[attr-defined]
        for start in range(0, len(todo), BATCH_PAPERS):
            batch = load_texts(self.store, todo[start : start + BATCH_PAPERS])
            began = datetime.now(UTC).replace(tzinfo=None)
            t0 = time.perf_counter()
            try:
                results = many([_input(p) for p in batch])
            except KeyboardInterrupt:
                self.report.stopped = "interrupted"
                return
            per_paper = (time.perf_counter() - t0) * 1000 / len(batch)
            for paper, res in zip(batch, results, strict=True):
                out = Outcome(began, per_paper)
                if isinstance(res, AnnotationError):
                    out.error = res
                else:
                    out.result = res
                self._settle(paper, out)
                if self.writer.due():
                    self._flush()

    def _concurrent(self, todo: list[_Pending], workers: int) -> None:
        """Up to ``workers`` requests in flight at once, each paper in a thread of a pool;
        this thread settles and writes their outcomes as they come."""
        pending = iter(todo)
        held: _Pending | None = None  # next up, waiting for room in the budget
        running: dict[Future[Outcome], _Pending] = {}
        # Futures land here as they finish: one queue to wait on, however many are running.
        finished: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
        ann = cast(Annotator, self.ann)
        ctrl_c = self.ctrl_c
        arrow_ready = False
        threads = THREADS_PER_CALL * workers
        with ThreadPoolExecutor(threads, thread_name_prefix="papertag-annotate") as pool:
            try:
                with ctrl_c:
                    while True:
                        for _ in range(ctrl_c.take()):
                            self._interrupt(running)
                        while self.report.stopped is None and len(running) < threads:
                            paper = held if held is not None else next(pending, None)
                            held = None
                            if paper is None:
                                break
                            admitted = self._admit(paper)
                            if admitted is None:
                                held = paper  # tried again once papers in flight have settled
                            if not admitted:
                                break
                            future = pool.submit(work, ann, _input(paper))
                            running[future] = paper
                            future.add_done_callback(finished.put)
                        if running and not arrow_ready:
                            # While the first requests are out: nothing is due to be written
                            # before their answers come back.
                            self.store.prepare_arrow()
                            arrow_ready = True
                        if not running:
                            return
                        try:
                            done = [finished.get(timeout=FLUSH_EVERY / 4)]
                        except queue.Empty:
                            done = []
                        except KeyboardInterrupt:  # not in the main thread: no flag, an exception
                            self._interrupt(running)
                            continue
                        with contextlib.suppress(queue.Empty):
                            while len(done) < len(running):
                                done.append(finished.get_nowait())
                        for future in done:
                            paper = running.pop(future)
                            if not future.cancelled():  # never started (Ctrl-C)
                                self._settle(paper, future.result())
                        if self.writer.due():
                            self._flush()
            except BaseException:
                # A fatal error (refused key) or a third Ctrl-C: stop the others at once.
                self._cancel(running)
                raise

    # -- shared steps ---------------------------------------------------------------------------
    def _admit(self, paper: _Pending) -> bool | None:
        """Whether ``paper`` may start: True, False (the run stops starting papers), or None
        (not yet: what is set aside for the papers in flight leaves no room, but may once
        they have settled at their real cost)."""
        if self.report.stopped is not None:
            return False
        if self.budget.admit(paper, self.report.cost_usd):
            return True
        if self.budget.reserved:
            return None
        self.report.stopped = "max-cost"
        return False

    def _interrupt(self, running: dict[Future[Outcome], _Pending]) -> None:
        """Ctrl-C: start nothing new, end retry waits; calls in flight finish and are kept.

        A second Ctrl-C also closes the connections, cutting those calls short.
        """
        if self.report.stopped == "interrupted":
            getattr(self.ann, "close", lambda: None)()
        self.report.stopped = "interrupted"
        self._cancel(running)

    def _cancel(self, running: dict[Future[Outcome], _Pending]) -> None:
        """No new call starts: papers waiting in the pool's queue are dropped, retry waits end."""
        for future in running:
            future.cancel()  # only those not started yet
        cancel = getattr(self.ann, "cancel", None)
        if cancel is not None:
            cancel()

    def _settle(self, paper: _Pending, out: Outcome) -> None:
        report, writer = self.report, self.writer
        cost = 0.0
        for c in out.calls:
            if c.replay_of is not None:
                report.replayed += 1
                continue
            report.calls += 1
            report.prompt_tokens += c.prompt_tokens or 0
            report.completion_tokens += c.completion_tokens or 0
            cost += c.cost_usd or 0.0
        report.cost_usd += cost
        self.budget.settle(paper, cost)
        if out.fatal is not None:
            writer.calls(paper, None, out.calls)
            if isinstance(out.fatal, KeyboardInterrupt):
                return
            raise out.fatal
        if out.error is not None:
            writer.calls(paper, None, out.calls)
            if out.error.retryable and report.stopped == "interrupted":
                return  # cut off by Ctrl-C, not a failure: the next run asks again
            writer.fail(paper, out.error, out.started)
            report.failed += 1
            report.failures.append((paper.paper_id, out.error.reason))
        elif out.result is not None:
            aid = writer.add(paper, out.result, out.duration_ms, out.started)
            writer.calls(paper, aid, out.calls)
            report.done += 1
        if self.on_progress:
            self.on_progress(report)

    def _flush(self) -> None:
        uids = self.writer.flush()
        if uids and self.journal is not None:
            self.journal.committed(uids)


class _CtrlC:
    """Ctrl-C as a count the run loop reads, instead of an exception raised wherever the
    main thread happens to be (mid-commit, or inside an import that DuckDB makes and
    whose failure it swallows). A third Ctrl-C raises KeyboardInterrupt as usual.

    Only the main thread can own a signal handler; elsewhere this does nothing and
    Ctrl-C stays an exception.
    """

    def __init__(self) -> None:
        self.count = 0
        self._taken = 0
        self._installed = False
        self._previous: Any = signal.SIG_DFL

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
            # None: a handler set outside Python, which cannot be put back; use the default.
            self._previous = previous if previous is not None else signal.default_int_handler
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count >= 2 and self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def take(self) -> int:
        """Ctrl-Cs since the last call."""
        new, self._taken = self.count - self._taken, self.count
        return new


def _input(paper: _Pending) -> PaperInput:
    return PaperInput(paper.paper_id, paper.title, paper.abstract)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
