"""One ``annotate`` with batches: collect and settle, run live what is left, send the rest."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...annotators import get_annotator
from ...annotators.llm.annotator import LLMAnnotator
from ...db import Store, using
from ...errors import DatabaseBusy
from ..pending import Pending
from .batches import Batches
from .info import BatchInfo, find_batch
from .settle import settle

#: A paper that came back without an answer from this many batches is asked live.
MAX_BATCH_TRIES = 2
#: Seconds between two polls of a batch with ``--wait``.
POLL_EVERY = 30.0


def cancel_batch(store: Store, ident: str, **options: Any) -> BatchInfo:
    """Ask the server to cancel a batch (ours or the server's id). What it finished is
    collected by the next run; its other papers go back to the queue. ``options`` are the
    LLM annotator's client options (``api_key_env``, ...); model and server are the batch's."""
    info = find_batch(store, ident)
    row = store.con.execute(
        "SELECT base_url FROM llm_batches WHERE batch_uid = ?", [info.batch_uid]
    ).fetchone()
    ann: Any = get_annotator("llm", model=info.model, base_url=row[0] if row else None, **options)
    batches = Batches(store, ann, "cancel")
    try:
        return batches.cancel(ident)
    finally:
        batches.close()
        ann.close()


def annotate_with_batches(
    db: Store | Path,
    ann: LLMAnnotator,
    run: Callable[[list[str] | None], Any],
    *,
    submit: bool,
    wait: bool,
    pending: Callable[[Store], Sequence[Pending]],
    admit: Callable[[Sequence[Pending]], Sequence[Pending]] | None = None,
    hook: Callable[[str], None] | None = None,
    poll_every: float | None = None,
    on_batches: Callable[[list[BatchInfo]], None] | None = None,
) -> Any:
    """One ``annotate`` of an LLM annotator with batches: collect the batches that ended
    and settle their answers; run the live engine (``run(paper_ids)``; None: every
    pending paper) over what is left, or with ``submit`` only over papers that came back
    unanswered from :data:`MAX_BATCH_TRIES` batches, sending the rest (``pending(store)``,
    cut by ``admit``) in a batch; with ``wait``, again until no batch is open. Returns the
    live runs' report, the batches' answers counted in, with ``.batch`` filled in.

    Given a path, the file is open only while batches are collected, settled or sent:
    not during the live run's calls (it opens the file to store), nor while waiting for
    the server, which can take hours."""
    every = POLL_EVERY if poll_every is None else poll_every
    batches: Batches | None = None
    total: Any = None
    try:
        while True:
            try:
                with using(db) as store:
                    if batches is None:
                        batches = Batches(store, ann, "batch-" + uuid.uuid4().hex[:8], hook=hook)
                    batches.store = store
                    waiting = batches.refresh()
                    settle(batches)
                    live = None if not submit else _given_up(store, ann)
            except DatabaseBusy:
                # A file someone holds while --wait waits (a duckdb session left open) only
                # puts this poll off: the batches' state is in the file, nothing is lost.
                if batches is None or not wait or isinstance(db, Store):
                    raise
                ann.throttle.sleep(every)
                continue
            if live is None or live:
                report = run(live)
                total = report if total is None else total.add(report)
                if report.stopped is not None:
                    break
            if submit:
                with using(db) as store:
                    batches.store = store
                    todo = list(pending(store))
                    if admit is not None:
                        allowed = list(admit(todo))
                        batches.report.held_back = len(todo) - len(allowed)
                        todo = allowed
                    if todo:
                        batches.submit(todo)
                        waiting = batches.waiting()
            if on_batches is not None:
                on_batches(waiting)
            if not wait or not waiting:
                break
            ann.throttle.sleep(every)
    finally:
        if batches is not None:
            batches.close()
    assert batches is not None  # made by the loop's first step, or raised
    if total is None:
        total = run([])
    report = batches.report
    total.batch = report
    total.done += report.annotated
    total.failed += report.failed
    total.failures += report.failures
    total.calls += report.reasks
    total.cost_usd += report.cost_usd
    total.prompt_tokens += report.prompt_tokens
    total.completion_tokens += report.completion_tokens
    total.cached_tokens += report.cached_tokens
    return total


def _given_up(store: Store, ann: Any) -> list[str]:
    """Papers that came back without an answer from :data:`MAX_BATCH_TRIES` batches and
    still lack an annotation: asked live even with ``--batch``."""
    rows = store.con.execute(
        "SELECT r.paper_id FROM llm_batch_requests r JOIN llm_batches b USING (batch_uid) "
        "WHERE b.collected_at IS NOT NULL AND r.call_uid IS NULL AND b.annotator = ? "
        "AND b.model = ? AND b.prompt_version = ? AND b.taxonomy_version = ? "
        "AND NOT EXISTS (SELECT 1 FROM annotations a JOIN papers p USING (paper_id) "
        "  WHERE a.paper_id = r.paper_id AND a.content_hash = p.content_hash "
        "  AND a.annotator = b.annotator AND a.model = b.model "
        "  AND a.prompt_version = b.prompt_version AND a.taxonomy_version = b.taxonomy_version) "
        "GROUP BY r.paper_id HAVING count(*) >= ?",
        [ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, MAX_BATCH_TRIES],
    ).fetchall()
    return [r[0] for r in rows]
