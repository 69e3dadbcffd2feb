"""``papertag pull``: days of the Hugging Face daily-papers API, fetched and ingested.

``GET {base}/api/daily_papers?date=YYYY-MM-DD`` answers the day's papers as a JSON list
(``[]`` for a day without). Each day is one digest, ``hf:YYYY-MM-DD`` with its date, read
by the same code as a file (:class:`papertag.ingest.Digest`) and written by the same
writer (:func:`papertag.ingest.write.write_digests`). A day's list grows and reorders during
the day (papers gain upvotes), so fetched again, its digest's listing is the newest one.

Each day is recorded in ``pulled_days`` in the transaction that stores it: a pull that
is killed and run again fetches no stored day twice. A day's list keeps growing during
that day and the next, so a day fetched before two days had passed since it began (UTC)
is fetched again by the next pull (today and yesterday always are); after that it is
final, and skipped unless ``refresh``.

HTTP goes through httpx: a few requests in flight and a few started a second at most.
429s, 5xx answers, timeouts and broken connections are retried by tenacity, waiting what
``Retry-After`` asks. A day answered with a 4xx, or with a body that is not the API's
list (an error object, HTML, truncated JSON, ...), fails alone. A host that cannot be
reached, or keeps failing once the retries are spent, stops the pull. Either way the days
that were stored stay.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ..db import Store, utc_now
from ..errors import ConfigError, FetchError, InputError, Unreachable
from ..retry_after import retry_after_seconds
from .bulk import compress
from .digests import DigestFile
from .entries import Entry
from .formats import Digest
from .report import FileReport
from .write import write_digests

DEFAULT_BASE_URL = "https://huggingface.co"
API_PATH = "/api/daily_papers"
#: Requests in flight at once.
CONCURRENCY = 3
#: Requests started a second, at most: polite to a public API.
RATE = 3.0
#: Tries of one request before its fault counts (429, 5xx, timeout, broken connection).
ATTEMPTS = 4
#: Seconds before the first retry, doubled for each next one, unless the server says.
BACKOFF = 1.0
#: The longest Retry-After waited for; a server asking more stops the pull.
MAX_WAIT = 300.0
#: Seconds to wait for a connection, and for an answer.
CONNECT_TIMEOUT = 10.0
TIMEOUT = 30.0
#: A day's list is final once fetched this long after the day began (UTC).
FINAL_AFTER = timedelta(days=2)

_EMPTY_LIST = re.compile(rb"\s*\[\s*\]\s*")


@dataclass
class DayReport:
    day: date
    #: ``stored`` (its papers written), ``empty`` (no papers that day), ``skipped`` (stored
    #: before and final), ``failed`` (its error says why), or ``not fetched`` (the pull
    #: stopped first).
    status: str
    url: str
    file: FileReport | None = None  # what its digest added, when stored
    error: str | None = None


@dataclass
class PullReport:
    since: date
    until: date
    days: list[DayReport] = field(default_factory=list)
    #: Why the pull stopped before fetching every day (the host unreachable, or failing
    #: after every retry), else None.
    stopped: str | None = None
    #: HTTP requests sent, retries included.
    requests: int = 0

    def count(self, status: str) -> int:
        return sum(d.status == status for d in self.days)

    @property
    def failed(self) -> list[DayReport]:
        return [d for d in self.days if d.status == "failed"]

    @property
    def ok(self) -> bool:
        return self.stopped is None and not self.failed

    def total(self, attr: str) -> int:
        """A :class:`FileReport` figure summed over the days stored."""
        return sum(int(getattr(d.file, attr)) for d in self.days if d.file is not None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "days": {s: self.count(s) for s in ("stored", "empty", "skipped", "failed")}
            | {"not_fetched": self.count("not fetched")},
            "papers": self.total("entries"),
            "new_papers": self.total("new_papers"),
            "updated_papers": self.total("updated_papers"),
            "new_links": self.total("new_links"),
            "requests": self.requests,
            "errors": [d.error for d in self.failed],
            "stopped": self.stopped,
        }


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class _Busy(Exception):
    """A 429 or 5xx answer: worth asking again."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code} {response.reason_phrase}".strip())
        self.retry_after = retry_after_seconds(response.headers.get("retry-after"))


class _Stopped(Exception):
    """The pull is stopping: no new request."""


def _transient(exc: BaseException) -> bool:
    return isinstance(
        exc, _Busy | httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


@dataclass
class _Fetched:
    day: date
    url: str
    fetched_at: datetime
    entries: list[Entry]  # empty for a day without papers
    digest: DigestFile | None  # None for a day without papers
    report: FileReport


class _Fetcher:
    """Fetches days for several threads at once: paced, retried, stoppable."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        rate: float,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        now: Callable[[], datetime],
    ) -> None:
        self.base = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"--base-url {base_url!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"--base-url {base_url!r}: not an http(s) URL")
        self.host = url.netloc.decode("ascii")
        self._sleep, self._clock, self._now = sleep, clock, now
        self._interval = 1.0 / rate
        self._lock = threading.Lock()
        self._next_start = 0.0  # the clock's time before which no request may start
        self.requests = 0
        self.stop = threading.Event()
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            headers={"User-Agent": f"papertag/{version('papertag')}", "Accept": "application/json"},
            follow_redirects=True,
        )

    def url(self, day: date) -> str:
        return f"{self.base}{API_PATH}?date={day.isoformat()}"

    def _pace(self) -> None:
        """Wait for this request's turn: at most one start every 1/rate seconds."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
            self.requests += 1
        if start > now:
            self._sleep(start - now)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Busy) and exc.retry_after is not None:
            # The server said how long: every request waits, not only this one.
            with self._lock:
                self._next_start = max(self._next_start, self._clock() + exc.retry_after)
            return exc.retry_after
        return float(BACKOFF * 2 ** (state.attempt_number - 1))

    def _get(self, url: str) -> httpx.Response:
        retrying = Retrying(
            stop=stop_after_attempt(ATTEMPTS),
            wait=self._wait,
            retry=retry_if_exception(_transient),
            sleep=self._sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if self.stop.is_set():
                    raise _Stopped
                self._pace()
                if self.stop.is_set():  # again after waiting for its turn, which may be long
                    raise _Stopped
                response = self.client.get(url)
                if response.status_code == 429 or response.status_code >= 500:
                    busy = _Busy(response)
                    if busy.retry_after is not None and busy.retry_after > MAX_WAIT:
                        raise Unreachable(
                            f"{self.host} asks to wait {busy.retry_after:,.0f} s ({busy}); "
                            "try again later"
                        )
                    raise busy
                return response
        raise AssertionError("tenacity neither returned nor raised")  # pragma: no cover

    def _get_day(self, url: str) -> httpx.Response:
        """The answer for a day's URL, faults retried. A host that cannot be reached or
        keeps failing raises Unreachable, and no request starts after it: every other day
        would fail the same way."""
        try:
            return self._get(url)
        except _Busy as exc:
            problem = f"{self.host} keeps failing: {exc} after {ATTEMPTS} attempts; try again later"
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            problem = f"cannot reach {self.host}: {_reason(exc)}"
        except httpx.HTTPError as exc:
            problem = f"{self.host} keeps failing: {_reason(exc)} after {ATTEMPTS} attempts"
        except Unreachable:
            self.stop.set()
            raise
        self.stop.set()
        raise Unreachable(problem)

    def fetch(self, day: date) -> _Fetched:
        """One day: fetched, checked and parsed; raises Unreachable, FetchError (a 4xx),
        InputError (not the API's list) or _Stopped."""
        url = self.url(day)
        label = url.split("://", 1)[1]
        response = self._get_day(url)
        fetched_at = self._now()
        body = response.content
        if response.status_code >= 400:
            raise FetchError(
                f"{label}: HTTP {response.status_code} {response.reason_phrase}{_said(body)}"
            )
        report = FileReport(path=url, format="hf-api-json")
        if _EMPTY_LIST.fullmatch(body):
            return _Fetched(day, url, fetched_at, [], None, report)
        with Digest(label, data=body) as digest:
            if digest.format != "hf-api-json":
                raise InputError(
                    label, f"not the daily-papers API's list of papers (reads as {digest.format})"
                )
            entries = list(digest.entries())
            report.note = digest.note
            file = DigestFile(label, url, digest.format, digest.sha256, f"hf:{day}", day)
        return _Fetched(day, url, fetched_at, entries, file, report)

    def close(self) -> None:
        self.client.close()


def _said(body: bytes) -> str:
    """What an error answer says, when it is the API's JSON error object."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    message = data.get("error") if isinstance(data, dict) else None
    return f": {str(message)[:200]}" if message else ""


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def default_since(store: Store, today: date) -> date:
    """From the day before the newest day pulled (one more read of it, as the list may
    have grown), else yesterday: with today's, the two days whose lists still grow."""
    newest = store.scalar("SELECT max(day) FROM pulled_days")
    yesterday = today - timedelta(days=1)
    return min(newest - timedelta(days=1), yesterday) if newest else yesterday


def _final_days(store: Store, first: date, last: date) -> set[date]:
    rows = store.con.execute(
        "SELECT day FROM pulled_days WHERE day BETWEEN ? AND ? AND fetched_at >= day + ?",
        [first, last, FINAL_AFTER],
    ).fetchall()
    return {row[0] for row in rows}


def _store_days(store: Store, fetched: list[_Fetched]) -> None:
    """Write fetched days in one transaction, each recorded in pulled_days with it."""

    def record(s: Store) -> None:
        for f in fetched:
            s.con.execute(
                "INSERT OR REPLACE INTO pulled_days (day, papers, fetched_at, url) "
                "VALUES (?, ?, ?, ?)",
                [f.day, len(f.entries), f.fetched_at, f.url],
            )

    write_digests(
        store,
        [(f.digest, f.entries, f.report) for f in fetched if f.digest is not None],
        after=record,
        compress=False,  # once at the end of the pull (see _pull)
    )


def pull(
    db: Store | str | Path | None = None,
    *,
    since: date | None = None,
    until: date | None = None,
    base_url: str = DEFAULT_BASE_URL,
    refresh: bool = False,
    concurrency: int = CONCURRENCY,
    rate: float = RATE,
    timeout: float = TIMEOUT,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = utc_now,
    on_start: Callable[[int], None] | None = None,
    on_day: Callable[[DayReport], None] | None = None,
) -> PullReport:
    """Fetch the days from ``since`` to ``until`` (default: :func:`default_since` to
    today, UTC) and store each as a digest; days stored before and final are skipped.

    ``on_start(n)`` is told how many days will be fetched; ``on_day`` sees each day's
    report once it is stored or has failed, in day order. ``sleep``, ``clock`` and ``now``
    (a naive UTC datetime) are the time the pull sees. Returns a :class:`PullReport`:
    check ``report.ok``.
    """
    if concurrency < 1 or rate <= 0:
        raise ConfigError("concurrency must be 1 or more and rate above 0")
    store = db if isinstance(db, Store) else Store(db)
    try:
        today = now().date()
        until = until or today
        since = since or default_since(store, today)
        if since > until:
            raise ConfigError(f"--since {since} is after --until {until}")
        fetcher = _Fetcher(base_url, timeout=timeout, rate=rate, sleep=sleep, clock=clock, now=now)
        try:
            return _pull(
                store, fetcher, _days(since, until), refresh, concurrency, on_start, on_day
            )
        finally:
            fetcher.close()
    finally:
        if not isinstance(db, Store):
            store.close()


def _pull(
    store: Store,
    fetcher: _Fetcher,
    days: list[date],
    refresh: bool,
    concurrency: int,
    on_start: Callable[[int], None] | None,
    on_day: Callable[[DayReport], None] | None,
) -> PullReport:
    report = PullReport(days[0], days[-1])
    final = set() if refresh else _final_days(store, days[0], days[-1])
    reports = {d: DayReport(d, "skipped", fetcher.url(d)) for d in days}
    report.days = list(reports.values())
    todo = [d for d in days if d not in final]
    if on_start:
        on_start(len(todo))
    # Days are stored in day order, each once it and the days before it are settled
    # (fetched, failed or given up): whenever the pull is killed, the days stored are
    # never fetched again, and a paper listed on several days keeps the latest day's text,
    # as when their files are ingested in order.
    fetched: dict[date, _Fetched] = {}
    settled: set[date] = set()
    next_day = 0  # index in `todo` of the first day not yet stored or reported
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="papertag-pull")
    futures: dict[Future[_Fetched], date] = {pool.submit(fetcher.fetch, d): d for d in todo}
    try:
        while futures:
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in finished:
                day = futures.pop(future)
                settled.add(day)
                try:
                    fetched[day] = future.result()
                except Unreachable as exc:
                    reports[day].status = "not fetched"
                    if report.stopped is None:
                        # Every other day would fail the same way.
                        report.stopped = str(exc)
                        fetcher.stop.set()
                        for pending in futures:
                            pending.cancel()
                except (FetchError, InputError) as exc:
                    reports[day].status, reports[day].error = "failed", str(exc)
                except (_Stopped, CancelledError):
                    reports[day].status = "not fetched"
            ready = []
            while next_day < len(todo) and todo[next_day] in settled:
                ready.append(todo[next_day])
                next_day += 1
            batch = [fetched.pop(d) for d in ready if d in fetched]
            if batch:
                _store_days(store, batch)
                for day_fetched in batch:
                    r = reports[day_fetched.day]
                    if day_fetched.digest is None:
                        r.status = "empty"
                    else:
                        r.status, r.file = "stored", day_fetched.report
            if on_day:
                for d in ready:
                    on_day(reports[d])
        if report.count("stored") or report.count("empty"):
            compress(store)
    except BaseException:
        # Interrupted: start nothing more, and end the requests under way.
        fetcher.stop.set()
        for pending in futures:
            pending.cancel()
        fetcher.close()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        report.requests = fetcher.requests
    return report
