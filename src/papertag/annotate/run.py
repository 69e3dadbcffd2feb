"""Run an annotator over the papers that lack an annotation for its current key.

The key is (paper content hash, annotator, model, prompt version, taxonomy
version): re-running the same annotator on the same text does nothing, while a
changed abstract, prompt or taxonomy gives a new annotation and leaves the old
one queryable (``current = false`` in the ``labels`` view).

LLM annotators run ``concurrency`` calls at once, each in a thread of a pool, each
call carrying ``papers_per_call`` papers (in order); a call's results come back
together to the one thread that writes to DuckDB, which commits at least once a
second. Every model response is also journaled the moment it arrives
(:mod:`papertag.annotate.journal`), so after a ``kill -9`` the same command resumes: it
stores what the journal holds and replays those answers instead of paying for
them again. Ctrl-C stops starting papers, lets those in flight finish, commits
and returns a report that says how to resume.

A run given a database path (the command's way) opens the file only for the moment it
stores a batch, every couple of seconds, so other processes can read the database (or
write to it: ingest, review import) between batches; DuckDB lets one process have the
file for writing, or several for reading, never both. A batch that finds the file in use
waits in memory (its answers are in the journal) and is tried again at the next turn.
One run at a time per database (:mod:`.lock`): a second is refused before it asks for
anything. A run given an open :class:`Store` holds it, and commits every second.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from ..annotators import (
    DEFAULT_ANNOTATOR,
    Annotator,
    AnnotatorInfo,
    PaperInput,
    resolve_annotator,
)
from ..annotators.llm.prices import price_for
from ..db import Store, default_db_path, using, utc_now
from ..db.store import prepare_arrow
from ..errors import AnnotationError, ConfigError, DatabaseBusy
from ..schema import Annotation
from .budget import Budget, batch_within
from .journal import Journal
from .lock import RunLock
from .pending import Pending, load_texts, paper_input, pending_papers
from .recovery import paid_calls, recover_journal, replay_index, save_template
from .writer import FLUSH_EVERY, TURN_EVERY, Writer

#: Seconds a batch waits for a database in use during a run before it is left for the
#: next turn (the run's thread does not stall), and at the end of a run before its
#: results are left to the journal and the next run.
TURN_WAIT = 0.25
FINAL_WAIT = 60.0


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
    #: Prompt tokens the provider served from its prompt cache (part of prompt_tokens).
    cached_tokens: int = 0
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
    #: Papers whose result is not in the database yet, because another process had it open:
    #: during a run, what waits for the next turn; at its end, what could not be stored (an
    #: LLM's answers stay in the journal, for the next run to store without asking again).
    unstored: int = 0
    #: What the Batch API side did (``--batch``, or batches of an earlier run collected):
    #: a :class:`papertag.annotate.batch.BatchReport`.
    batch: Any = None
    #: ``--annotator cascade``: the share sent to the LLM and the cost saved
    #: (:class:`papertag.annotate.cascade.CascadeSummary`), and the learned annotator's run.
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


@dataclass
class Work:
    """What one call of the annotator gave: an outcome for each of its papers, and the
    HTTP exchanges it made (each names the papers it carried)."""

    outcomes: list[Outcome]
    calls: Sequence[Any] = ()


def work(ann: Annotator, papers: Sequence[PaperInput]) -> Work:
    """Annotate papers in one call (``annotate_call`` where the annotator has it, else one
    paper with ``annotate``); never raises (a pool thread's errors travel in the outcome)."""
    drain: Callable[[], Sequence[Any]] = getattr(ann, "drain_calls", tuple)
    started = utc_now()
    outcomes = [Outcome(started) for _ in papers]
    t0 = time.perf_counter()
    try:
        call = getattr(ann, "annotate_call", None)
        results: Sequence[Annotation | AnnotationError] = (
            call(papers) if call is not None else [_one(ann, papers[0])]
        )
        for paper, out, result in zip(papers, outcomes, results, strict=True):
            if isinstance(result, AnnotationError):
                result.paper_id = paper.paper_id
                out.error = result
            else:
                out.result = result
    except BaseException as exc:
        for out in outcomes:
            out.fatal = exc
    # A call's time is each of its papers' time.
    for out in outcomes:
        out.duration_ms = (time.perf_counter() - t0) * 1000
    return Work(outcomes, drain())


def _one(ann: Annotator, paper: PaperInput) -> Annotation | AnnotationError:
    try:
        return ann.annotate(paper)
    except AnnotationError as exc:
        return exc


def calls_of(
    papers: Sequence[Pending], size: int, kept: Sequence[Sequence[str]] = ()
) -> list[list[Pending]]:
    """The papers in calls of ``size``, in order. The groups of ``kept`` (the papers of
    calls a killed run paid for) come as they were, where all their papers are still to
    do: the same request again, whose answer is replayed instead of paid twice."""
    index = {p.paper_id: i for i, p in enumerate(papers)}
    taken: set[str] = set()
    groups: list[list[Pending]] = []
    for ids in kept:
        if len(ids) > 1 and all(i in index and i not in taken for i in ids):
            groups.append([papers[index[i]] for i in ids])
            taken.update(ids)
    rest = [p for p in papers if p.paper_id not in taken]
    groups += [rest[i : i + size] for i in range(0, len(rest), size)]
    return sorted(groups, key=lambda g: index[g[0].paper_id])


#: Threads (and papers started) per request the annotator may have in flight: behind each
#: call in flight a second thread waits with its next request built, and the throttle
#: lets it go the moment an answer is read, while that answer's thread validates and
#: stores it. The throttle, not the pool, keeps the requests in flight to --concurrency.
THREADS_PER_CALL = 2

#: Papers handed at once to an annotator that labels in batches (``annotate_many``).
BATCH_PAPERS = 512


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
            return _Run(target, run_ann, max_cost, on_start, on_progress).run(
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


def start_run(store: Store, ann: AnnotatorInfo, run_id: str) -> None:
    """The run's row in ``annotation_runs``, which its results refer to."""
    store.con.execute(
        "INSERT INTO annotation_runs (run_id, annotator, model, prompt_version, taxonomy_version, started_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, utc_now()],
    )


def finish_run(store: Store, report: AnnotateReport, *, finished: bool = True) -> None:
    """The run's counts in ``annotation_runs``; ``finished`` also stamps its end."""
    store.con.execute(
        "UPDATE annotation_runs SET finished_at = ?, done = ?, skipped = ?, failed = ? WHERE run_id = ?",
        [
            utc_now() if finished else None,
            report.done,
            report.skipped,
            report.failed,
            report.run_id,
        ],
    )


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


class _Run:
    """One ``annotate`` run: pool threads call the model, this thread alone writes to DuckDB."""

    def __init__(
        self,
        db: Store | Path,
        ann: AnnotatorInfo,
        max_cost: float | None,
        on_start: Callable[[int], None] | None,
        on_progress: Callable[[AnnotateReport], None] | None,
    ) -> None:
        #: An open Store (the caller's, held throughout), or the path of a file opened for
        #: each step that needs it.
        self.db, self.ann = db, ann
        path = db.path if isinstance(db, Store) else db
        self.on_start, self.on_progress = on_start, on_progress
        self.run_id = uuid.uuid4().hex[:12]
        self.report = AnnotateReport(
            ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, self.run_id
        )
        # Known for a priced model, even when no answer carried tokens (none came).
        self.report.cost_known = price_for(ann.model) is not None
        self.writer = Writer(ann, self.run_id, FLUSH_EVERY if isinstance(db, Store) else TURN_EVERY)
        #: The thread that stores batches into a file, and the batch it is storing.
        self._storer = ThreadPoolExecutor(1, thread_name_prefix="papertag-store")
        self._storing: Future[Writer | None] | None = None
        #: Papers a call carries (--papers-per-call).
        self.per_call = int(getattr(ann, "papers_per_call", 1))
        #: The papers of calls paid for by a killed run, kept together in this one.
        self.kept: list[list[str]] = []
        self.budget = Budget(ann, max_cost)
        self.ctrl_c = _CtrlC()
        # An annotator that labels many papers at once runs in batches, reading each batch's
        # texts only when it comes up.
        self._batches = hasattr(ann, "annotate_many") and int(getattr(ann, "concurrency", 1)) <= 1
        # Only annotators that call a server keep a journal (rules results cost nothing to redo).
        self.journal: Journal | None = None
        if hasattr(ann, "call_sink") and str(path) != ":memory:":
            self.journal = Journal(path)

    def run(
        self,
        *,
        limit: int | None,
        force: bool,
        retry_failed: bool,
        paper_ids: list[str] | None,
    ) -> AnnotateReport:
        report, ann = self.report, self.ann
        started = time.perf_counter()
        # A Ctrl-C while the run prepares is noticed once it is ready, before any paper
        # starts: raised in the middle of a query or an import, it can leave a library
        # half-loaded, or be swallowed by DuckDB's own imports.
        with self.ctrl_c, using(self.db) as store:
            if self.journal is not None:
                report.recovered = recover_journal(store, self.journal)
            start_run(store, ann, self.run_id)
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
                prepare_arrow()
            if transport is not None:
                if not force and todo:
                    paid = paid_calls(store, ann, [p.paper_id for p in todo])
                    transport.replay = replay_index(paid)
                    # Calls paid for before a kill are made again as they were (their
                    # answers replayed), whichever of their neighbours are done since.
                    self.kept = [c.paper_ids for c in paid]
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
            report.seconds = time.perf_counter() - started
            report.left = report.total - report.done - report.failed
            try:
                self._flush(final=True)
            finally:
                self._storer.shutdown()
            self._end_calls()
        return report

    def _end_calls(self) -> None:
        """Close the journal (keeping segments not yet committed) and count the 429s."""
        if self.journal is not None:
            self.ann.call_sink = None  # type: ignore[attr-defined]
            # Segments still holding uncommitted answers stay for the next run to recover.
            self.journal.close()
        self.report.throttled = getattr(getattr(self.ann, "throttle", None), "throttled", 0)

    # -- the ways of running --------------------------------------------------------------
    def _inline(self, todo: list[Pending]) -> None:
        if self._batches:
            self._batched(todo)
            return
        for group in calls_of(todo, self.per_call, self.kept):
            # Nothing is in flight here, so papers the budget refuses will never fit.
            if self._admit(group) is not True:
                return
            try:
                done = work(cast(Annotator, self.ann), [paper_input(p) for p in group])
            except KeyboardInterrupt:
                self.report.stopped = "interrupted"
                return
            self._settle(group, done)
            if self.writer.due():
                self._flush()
            if isinstance(done.outcomes[0].fatal, KeyboardInterrupt):
                self.report.stopped = "interrupted"
                return

    def _batched(self, todo: list[Pending]) -> None:
        """An annotator that labels many papers at once (the learned model's matrix
        products): a batch at a time, each result settled and written as one paper's."""
        many = self.ann.annotate_many  # type: ignore[attr-defined]
        for start in range(0, len(todo), BATCH_PAPERS):
            with using(self.db) as store:
                batch = load_texts(store, todo[start : start + BATCH_PAPERS])
            began = utc_now()
            t0 = time.perf_counter()
            try:
                results = many([paper_input(p) for p in batch])
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
                self._settle([paper], Work([out]))
                if self.writer.due():
                    self._flush()

    def _concurrent(self, todo: list[Pending], workers: int) -> None:
        """Up to ``workers`` requests in flight at once, each call (its papers) in a thread
        of a pool; this thread settles and writes their outcomes as they come."""
        pending = iter(calls_of(todo, self.per_call, self.kept))
        held: list[Pending] | None = None  # next up, waiting for room in the budget
        running: dict[Future[Work], list[Pending]] = {}
        # Futures land here as they finish: one queue to wait on, however many are running.
        finished: queue.SimpleQueue[Future[Work]] = queue.SimpleQueue()
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
                            group = held if held is not None else next(pending, None)
                            held = None
                            if group is None:
                                break
                            admitted = self._admit(group)
                            if admitted is None:
                                held = group  # tried again once papers in flight have settled
                            if not admitted:
                                break
                            future = pool.submit(work, ann, [paper_input(p) for p in group])
                            running[future] = group
                            future.add_done_callback(finished.put)
                        if running and not arrow_ready:
                            # While the first requests are out: nothing is due to be written
                            # before their answers come back.
                            prepare_arrow()
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
                            group = running.pop(future)
                            if not future.cancelled():  # never started (Ctrl-C)
                                self._settle(group, future.result())
                        if self.writer.due():
                            self._flush()
            except BaseException:
                # A fatal error (refused key) or a third Ctrl-C: stop the others at once.
                self._cancel(running)
                raise

    # -- shared steps ---------------------------------------------------------------------------
    def _admit(self, papers: list[Pending]) -> bool | None:
        """Whether a call of ``papers`` may start: True, False (the run stops starting
        papers), or None (not yet: what is set aside for the papers in flight leaves no
        room, but may once they have settled at their real cost)."""
        if self.report.stopped is not None:
            return False
        if self.budget.admit(papers, self.report.cost_usd):
            return True
        if self.budget.reserved:
            return None
        self.report.stopped = "max-cost"
        return False

    def _interrupt(self, running: dict[Future[Work], list[Pending]]) -> None:
        """Ctrl-C: start nothing new, end retry waits; calls in flight finish and are kept.

        A second Ctrl-C also closes the connections, cutting those calls short.
        """
        if self.report.stopped == "interrupted":
            getattr(self.ann, "close", lambda: None)()
        self.report.stopped = "interrupted"
        self._cancel(running)

    def _cancel(self, running: dict[Future[Work], list[Pending]]) -> None:
        """No new call starts: papers waiting in the pool's queue are dropped, retry waits end."""
        for future in running:
            future.cancel()  # only those not started yet
        cancel = getattr(self.ann, "cancel", None)
        if cancel is not None:
            cancel()

    def _settle(self, group: list[Pending], done: Work) -> None:
        """Count, write and report one call's papers. An exchange's cost is shared by the
        papers it carried; each paper's annotation names the last exchange that carried
        it (the answer it was validated from)."""
        report, writer = self.report, self.writer
        cost = {p.paper_id: 0.0 for p in group}
        made_by: dict[str, str] = {}
        for c in done.calls:
            carried = [i for i in (c.paper_ids or ()) if i in cost] or [group[0].paper_id]
            for paper_id in carried:
                made_by[paper_id] = c.call_uid
            if c.replay_of is not None:
                report.replayed += 1
                continue
            report.calls += 1
            report.prompt_tokens += c.prompt_tokens or 0
            report.completion_tokens += c.completion_tokens or 0
            report.cached_tokens += c.cached_tokens or 0
            for paper_id in carried:
                cost[paper_id] += (c.cost_usd or 0.0) / len(carried)
        report.cost_usd += sum(cost.values())
        for paper in group:
            self.budget.settle(paper, cost[paper.paper_id])
        fatal = done.outcomes[0].fatal
        if fatal is not None:
            writer.calls(group, {}, done.calls)
            if isinstance(fatal, KeyboardInterrupt):
                return
            raise fatal
        annotations: dict[str, str] = {}
        for paper, out in zip(group, done.outcomes, strict=True):
            if out.error is not None:
                if out.error.retryable and report.stopped == "interrupted":
                    continue  # cut off by Ctrl-C, not a failure: the next run asks again
                writer.fail(paper, out.error, out.started)
                report.failed += 1
                report.failures.append((paper.paper_id, out.error.reason))
            elif out.result is not None:
                annotations[paper.paper_id] = writer.add(
                    paper, out.result, out.duration_ms, out.started, made_by.get(paper.paper_id)
                )
                report.done += 1
        writer.calls(group, annotations, done.calls)
        if self.on_progress:
            self.on_progress(report)

    def _flush(self, *, final: bool = False) -> None:
        """Store what is queued, with the run's counts (and, at the end, its finish time).

        Into a caller's open Store, at once. Into a file, from a thread of its own, so this
        thread goes on settling answers and starting papers while the file is opened,
        written and closed (a checkpoint); one batch at a time. A file another process has
        open is waited for briefly; if it stays in use, the batch goes back to wait for the
        next turn (at the end: for the next run, from the journal)."""
        writer = self.writer
        if isinstance(self.db, Store):
            self._store(writer, final)
            return
        if self._storing is not None:
            if not final and not self._storing.done():
                return  # the last batch is still being stored: this one waits its turn
            self._collect(self._storing.result())
            self._storing = None
        if final:
            self._collect(self._store(writer.take(), final=True))
            return
        if not len(writer):
            writer.flushed_at = time.monotonic()
            return
        self._storing = self._storer.submit(self._store, writer.take(), False)

    def _collect(self, unstored: Writer | None) -> None:
        if unstored is not None:
            self.writer.put_back(unstored)
        self.report.unstored = self.writer.results()

    def _store(self, batch: Writer, final: bool) -> Writer | None:
        """Write ``batch`` and the run's counts; returns the batch if the file was in use."""
        try:
            with using(self.db, wait=FINAL_WAIT if final else TURN_WAIT) as store:
                uids = batch.flush(store)
                finish_run(store, self.report, finished=final)
        except DatabaseBusy:
            if isinstance(self.db, Store):
                raise
            return batch
        if uids and self.journal is not None:
            self.journal.committed(uids)
        return None


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
