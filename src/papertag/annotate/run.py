"""``annotate``: choose the annotator and the engine for a run, hold the run's lock, and run
it (the local engine, the Batch API, or the cascade of both annotators)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from ..annotators import (
    DEFAULT_ANNOTATOR,
    Annotator,
    AnnotatorInfo,
    resolve_annotator,
)
from ..annotators.llm.prices import price_for
from ..db import Store, default_db_path
from ..errors import ConfigError
from .budget import batch_within
from .engine import LocalRun
from .lock import RunLock
from .pending import pending_papers
from .report import AnnotateReport


def annotate_papers(
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

    ``annotator`` is a name (``rules``, ``learned``, ``llm``, ``cascade``) or an annotator
    object; ``options`` go to its constructor (``model``, ``base_url``, ``concurrency``,
    ``rpm``, ...). ``max_cost`` (USD) stops starting papers before the estimated spend
    would pass it. ``on_start(total)`` and ``on_progress(report)`` let a caller draw
    progress. Ctrl-C returns early with ``report.stopped == "interrupted"``; run again to
    resume.

    ``batch`` (``llm`` and ``cascade``) sends the papers through the server's Batch API
    (:mod:`papertag.annotate.batch`) and returns once the batch is created, unless
    ``wait``: then it polls every ``poll_every`` seconds (by the annotator's ``sleep``),
    calling ``on_batches`` with the open batches after each poll, until every batch is
    collected. Any LLM run first collects its batches that have ended. ``batch_hook(step)``
    is called before each step of sending and collecting (``batch.STEPS``).
    ``cascade`` (:mod:`papertag.annotate.cascade`) runs the learned annotator over every
    paper and the LLM over the doubtful ones; ``learned_model`` names the learned model.
    """
    if limit is not None and limit < 0:
        raise ConfigError("--limit must be 0 or more")
    if max_cost is not None and max_cost < 0:
        raise ConfigError("--max-cost must be 0 or more")
    ann: AnnotatorInfo | None = None
    ids = list(paper_ids) if paper_ids is not None else None
    path = db.path if isinstance(db, Store) else Path(db) if db is not None else default_db_path()
    lock = RunLock(path) if str(path) != ":memory:" else None
    store: Store | None = None
    try:
        if lock is not None:
            lock.acquire()
        store = db if isinstance(db, Store) else Store(db)
        # A caller's Store is used throughout; given a path, each step opens the file only
        # while it needs it, so other commands can use the database during a long run.
        target: Store | Path = db if isinstance(db, Store) else path
        if annotator == "cascade":
            if not isinstance(db, Store):
                store.close()
                store = None
            return _cascade(
                target,
                options,
                limit=limit,
                paper_ids=ids,
                batch=batch,
                run=functools.partial(
                    annotate_papers,
                    target,
                    force=force,
                    retry_failed=retry_failed,
                    on_start=on_start,
                    on_progress=on_progress,
                    poll_every=poll_every,
                    on_batches=on_batches,
                    batch_hook=batch_hook,
                ),
                llm_run={"max_cost": max_cost, "batch": batch, "wait": wait},
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
        run_ann = ann

        def run(only: list[str] | None = None) -> AnnotateReport:
            chosen = ids if only is None else [p for p in only if ids is None or p in set(ids)]
            return LocalRun(target, run_ann, max_cost, on_start, on_progress).run(
                limit=limit, force=force, retry_failed=retry_failed, paper_ids=chosen
            )

        is_llm = ann.name == "llm" and hasattr(ann, "client")
        if (batch or wait) and not is_llm:
            raise ConfigError("--batch and --wait need --annotator llm or cascade")
        if is_llm:
            from .batch import annotate_with_batches, has_open

            if batch and force:
                raise ConfigError("--batch cannot be combined with --force")
            if batch or wait or has_open(store, ann):
                if not isinstance(db, Store):
                    store.close()
                    store = None
                report: AnnotateReport = annotate_with_batches(
                    target,
                    cast(Any, ann),
                    run,
                    submit=batch,
                    wait=wait,
                    pending=lambda open_store: pending_papers(
                        open_store,
                        run_ann,
                        retry_failed=retry_failed,
                        limit=limit,
                        paper_ids=ids,
                    )[0],
                    admit=lambda todo: batch_within(run_ann, todo, max_cost),
                    hook=batch_hook,
                    poll_every=poll_every,
                    on_batches=on_batches,
                )
                return report
        if not isinstance(db, Store):
            store.close()
            store = None
        return run()
    finally:
        # Close only what we built (an LLM client's connections); a caller's annotator is theirs.
        if isinstance(annotator, str) and ann is not None:
            getattr(ann, "close", lambda: None)()
        if store is not None and not isinstance(db, Store):
            store.close()
        if lock is not None:
            lock.release()


def _cascade(
    db: Store | Path,
    options: dict[str, Any],
    *,
    limit: int | None,
    paper_ids: list[str] | None,
    batch: bool,
    run: Callable[..., AnnotateReport],
    llm_run: dict[str, Any],
) -> AnnotateReport:
    """``--annotator cascade``: the learned annotator, then the LLM over the doubtful papers."""
    from .budget import estimate
    from .cascade import run_cascade, split_options

    def one(name: str, ids: list[str], opts: dict[str, Any]) -> AnnotateReport:
        extra = llm_run if name == "llm" else {}
        return run(name, paper_ids=ids, **extra, **opts)

    def cost(ids: list[str]) -> float | None:
        _, llm_opts = split_options(options)
        return estimate(db, "llm", paper_ids=ids, force=True, batch=batch, **llm_opts).cost_usd

    report: AnnotateReport = run_cascade(
        db, options, limit=limit, paper_ids=paper_ids, run=one, llm_cost=cost
    )
    return report
