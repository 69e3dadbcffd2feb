"""The LLM annotator's calls in a child process, so that a run uses two cores.

An annotation costs about a millisecond of Python per paper in the ``openai``
client and validation, and the writer's batches cost more on top; in one process
both wait on one interpreter lock, and the writer's work delays the answers
waiting to be read. So ``annotate --annotator llm --concurrency N`` (N > 1) runs
the calls here, in a ``python`` child process, and the parent keeps
the database, the progress bar and the budget. The child also imports the ``openai``
client (a third of a second, its packages' ``__init__`` files deferred: see
:func:`defer_openai_inits`) while the parent opens the database and finds the papers to do.

The child owns everything of a call: the client, the throttle (so rate limits are
shared by all calls, as before), the replay of answers already paid for, and the
crash journal, to which each answer is written the moment it arrives. It dies with
its parent (``PR_SET_PDEATHSIG`` on Linux; on other systems when its pipe closes),
so a ``kill -9`` of the command leaves no process still calling the server.

Messages, pickled over two pipes:

* parent to child: ``("init", options)`` (first), ``("start", run_id, options_json,
  db_path, replay)``, ``("papers", [(key, PaperInput), ...])``, ``("committed",
  call_uids)``, ``("cancel",)``, ``("close",)``, ``("end",)``;
* child to parent: ``("ready", RequestTemplate | None)`` or ``("error", exception)``
  once the annotator is built, ``("done", [(key, Outcome), ...])``, ``("bye", throttled)``.

Papers and outcomes travel in batches: whatever is ready when the pipe is free goes
in one message, so at a high rate both sides wake up once per batch, not per paper.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from papertag_launch import spawn_worker, take_prestarted

from .._lazy import defer_package_init
from ..errors import AnnotationError, PapertagError
from ..journal import RequestTemplate
from ..schema import Annotation
from . import Annotator, PaperInput


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
    """Annotate one paper; never raises (a worker thread's errors travel in the outcome)."""
    drain: Callable[[], Sequence[Any]] = getattr(ann, "drain_calls", tuple)
    out = Outcome(datetime.now(UTC).replace(tzinfo=None))
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


class WorkerDied(PapertagError):
    """The child process that calls the model stopped without saying why."""


class ProcessWorker:
    """The parent's handle on the child: submit papers, get futures of outcomes."""

    def __init__(self, options: dict[str, Any]) -> None:
        # The `papertag` command may have started it already, before loading anything.
        self.proc, to_child_w, from_child_r = take_prestarted() or spawn_worker()
        self._out = Connection(to_child_w, readable=False)
        self._in = Connection(from_child_r, writable=False)
        self._send_lock = threading.Lock()
        self._futures: dict[int, Future[Outcome]] = {}
        self._next_key = 0
        self._bye: Future[int] = Future()
        self._reader: threading.Thread | None = None
        self._send("init", options)

    # -- talking to the child -----------------------------------------------------------
    def _send(self, *msg: Any) -> None:
        with self._send_lock:
            try:
                self._out.send(msg)
            except OSError:
                raise self._died() from None

    def _died(self) -> WorkerDied:
        code = self.proc.poll()
        how = f"exit code {code}" if code is not None else "its pipe closed"
        return WorkerDied(f"the process calling the model stopped ({how}); run again to resume")

    def wait_ready(self) -> RequestTemplate | None:
        """Wait until the annotator is built (raising its error); returns the part every
        request of the run shares (to store before any call refers to it)."""
        try:
            kind, payload = self._in.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if kind == "error":
            raise payload
        template: RequestTemplate | None = payload
        return template

    def start(
        self, run_id: str, options_json: str, db_path: Path | None, replay: dict[str, Any]
    ) -> None:
        """Begin a run (after :meth:`wait_ready`)."""
        self._send("start", run_id, options_json, str(db_path) if db_path else None, replay)
        self._reader = threading.Thread(
            target=self._read, name="papertag-worker-reader", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        reason: str | None = None
        while True:
            try:
                msg = self._in.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # an answer that cannot be read ends the run, not the reader
                reason = f"{type(exc).__name__}: {exc}"
                break
            if msg[0] == "done":
                for key, outcome in msg[1]:
                    future = self._futures.pop(key, None)
                    if future is not None:
                        future.set_result(outcome)
            elif msg[0] == "bye":
                self._bye.set_result(msg[1])
                return
        died = self._died() if reason is None else WorkerDied(f"lost the worker process: {reason}")
        for future in list(self._futures.values()):
            future.set_exception(died)
        self._futures.clear()
        if not self._bye.done():
            self._bye.set_exception(died)

    def submit(self, papers: Sequence[PaperInput]) -> list[Future[Outcome]]:
        """Send papers to annotate (one message); their outcomes come back as futures."""
        futures: list[Future[Outcome]] = []
        batch = []
        for paper in papers:
            future: Future[Outcome] = Future()
            key, self._next_key = self._next_key, self._next_key + 1
            self._futures[key] = future
            futures.append(future)
            batch.append((key, paper))
        self._send("papers", batch)
        return futures

    def committed(self, call_uids: list[str]) -> None:
        self._send("committed", call_uids)

    def cancel(self) -> None:
        """Ctrl-C: the child starts no new request and ends its retry waits."""
        self._send("cancel")

    def close_connections(self) -> None:
        """A second Ctrl-C: the child drops its connections, cutting calls in flight."""
        self._send("close")

    def finish(self) -> int:
        """Let calls in flight end, close the journal; returns the 429s the child saw."""
        self._send("end")
        return self._bye.result()

    def close(self) -> None:
        """Make sure the child is gone: it has said goodbye, or it is stopped now.

        Stopping it mid-run loses nothing: every answer it received is in the journal.
        """
        if not self._bye.done() or self._bye.exception() is not None:
            self.proc.kill()
        self.proc.wait()
        for conn in (self._out, self._in):
            conn.close()
        if self._reader is not None:
            self._reader.join()


# -- the child ----------------------------------------------------------------------------
def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class _Outbox:
    """Sends finished outcomes to the parent from one thread, in batches: whatever
    finished while the previous batch was being written goes in the next one."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._items: list[tuple[int, Outcome]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="papertag-outbox", daemon=True)
        self._thread.start()

    def put(self, key: int, outcome: Outcome) -> None:
        with self._cond:
            self._items.append((key, outcome))
            self._cond.notify()

    def close(self) -> None:
        """Send what is left, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                batch, self._items = self._items, []
            if batch:
                self.conn.send_bytes(_pickled_batch(batch))
            elif self._closed:
                return


#: Round trips (an exchange's send to its answer read) from this long on, over the run's
#: latest few, call for a second thread behind each call (see _child).
LONG_ROUND_TRIP_MS = 50.0


class _RoundTrips:
    """The run's latest round trips, and whether they have been long."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=15)
        self.long = threading.Event()

    def add(self, calls: Sequence[Any]) -> None:
        if self.long.is_set():
            return
        for call in calls:
            # A replayed answer or a failed connection says nothing of the server's pace.
            if call.status is not None and call.replay_of is None:
                self.recent.append(call.duration_ms)
        # The median: one slow answer among fast ones (a pause, a retry) changes nothing.
        latest = sorted(self.recent)  # copied in one step: other threads append meanwhile
        if len(latest) >= 5 and latest[len(latest) // 2] >= LONG_ROUND_TRIP_MS:
            self.long.set()


def _pickled_batch(batch: list[tuple[int, Outcome]]) -> bytes:
    try:
        return pickle.dumps(("done", batch))
    except Exception:
        pass
    # An error that cannot cross the pipe still ends the run, as a message.
    for _, out in batch:
        try:
            pickle.dumps(out)
        except Exception:
            out.fatal = PapertagError(f"{type(out.fatal).__name__}: {out.fatal}")
    return pickle.dumps(("done", batch))


def _child(conn_in: Connection, conn_out: Connection) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return  # the parent died before the line above took effect
    # A Ctrl-C sent to the child directly is the parent's to act on, not ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def send(*msg: Any) -> None:
        try:
            data = pickle.dumps(msg)
        except Exception as exc:
            data = pickle.dumps(("error", PapertagError(f"{type(exc).__name__}: {exc}")))
        conn_out.send_bytes(data)

    from .llm import LLMAnnotator

    _, options = conn_in.recv()
    try:
        ann = LLMAnnotator(**options)
    except BaseException as exc:
        send("error", exc)
        return
    send("ready", ann.transport.template)
    _, run_id, options_json, db_path, replay = conn_in.recv()
    ann.transport.replay = replay
    journal = None
    if db_path is not None:
        from ..journal import Journal

        journal = Journal(Path(db_path))
        ann.call_sink = lambda paper_id, record: journal.write_call(
            run_id, ann, options_json, paper_id, record
        )
    outbox = _Outbox(conn_out)
    todo: queue.SimpleQueue[tuple[int, PaperInput] | None] = queue.SimpleQueue()

    round_trips = _RoundTrips()

    def annotate_papers(second: bool) -> None:
        if second:
            round_trips.long.wait()
        while (item := todo.get()) is not None:
            outcome = work(ann, item[1])
            round_trips.add(outcome.calls)
            outbox.put(item[0], outcome)

    # Once answers are slow to come, a second thread waits behind each call in flight with
    # its next request built: the throttle lets it go the moment an answer is read, while
    # the answer's thread parses and validates it. With one thread per call, that work and
    # the next request's building came between every answer and the next request (a few
    # milliseconds of every 0.2 s round trip, once threads queue for the interpreter lock).
    # Against a fast server the second threads would only add hand-offs (5% fewer papers a
    # second at zero latency), so they wait until round trips are long. Connections stay
    # one per call in flight either way (ConnectionStack).
    threads = [
        threading.Thread(
            target=annotate_papers,
            args=(i >= ann.concurrency,),
            name=f"papertag-annotate-{i}",
            daemon=True,
        )
        for i in range(2 * ann.concurrency)
    ]
    for thread in threads:
        thread.start()
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            os._exit(1)  # the parent is gone: nobody is left to store an answer
        if msg[0] == "papers":
            for item in msg[1]:
                todo.put(item)
        elif msg[0] == "committed" and journal is not None:
            journal.committed(msg[1])
        elif msg[0] == "cancel":
            ann.cancel()
        elif msg[0] == "close":
            ann.close()
        elif msg[0] == "end":
            round_trips.long.set()  # second threads still waiting: on to their end
            for _ in threads:
                todo.put(None)
            for thread in threads:
                thread.join()
            outbox.close()
            if journal is not None:
                journal.close()
            send("bye", ann.throttle.throttled)
            # Nothing is left to save (the journal is closed, the parent has every answer):
            # skip the interpreter's teardown, which the parent would wait for.
            conn_out.close()
            os._exit(0)


def defer_openai_inits() -> None:
    """Import openai's modules without its packages' ``__init__`` files, until asked.

    The calls need openai's client, its exceptions and its chat types, not the rest of
    what those files import (every type of every API: 0.35 s of a 0.5 s import, which
    every run waits for before its first request). They still run if a name they
    define is asked for.
    """
    for package in ("openai", "openai.types", "openai.resources"):
        defer_package_init(package)


def main() -> None:
    # openai loads its optional aiohttp transport if it can (a tenth of a second, most of
    # it aiohttp, which instructor installs); this process uses only the sync client, so
    # it is told aiohttp is absent and starts that much sooner (openai handles the absence).
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
    defer_openai_inits()
    conn_in = Connection(int(sys.argv[1]), writable=False)
    conn_out = Connection(int(sys.argv[2]), readable=False)
    _child(conn_in, conn_out)
