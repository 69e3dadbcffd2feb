"""The local engine: one run of an annotator over the papers that lack an annotation for
its current key.

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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from ..annotators import (
    Annotator,
    AnnotatorInfo,
)
from ..annotators.llm.prices import price_for
from ..db import Store, using, utc_now
from ..db.store import prepare_arrow
from ..errors import AnnotationError, DatabaseBusy
from .budget import Budget
from .journal import Journal
from .pending import Pending, load_texts, paper_input, pending_papers
from .recovery import paid_calls, recover_journal, replay_index, save_template
from .report import AnnotateReport, finish_run, start_run
from .work import THREADS_PER_CALL, Outcome, Work, calls_of, work
from .writer import FLUSH_EVERY, TURN_EVERY, Writer

#: Seconds a batch waits for a database in use during a run before it is left for the
#: next turn (the run's thread does not stall), and at the end of a run before its
#: results are left to the journal and the next run.
TURN_WAIT = 0.25
FINAL_WAIT = 60.0
#: Papers handed at once to an annotator that labels in batches (``annotate_many``).
BATCH_PAPERS = 512


class LocalRun:
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
