"""Client-side flow control shared by every request of a run: concurrency and rate.

Three limits, whichever is tightest wins:

* a concurrency *window* (at most ``concurrency`` requests in flight) that starts
  small and doubles every round trip until the first 429 (slow start), then shrinks
  multiplicatively on a 429 and grows back by one per window of successes (AIMD);
* a request rate: the user's ``--rpm``, the server's advertised limit
  (``x-ratelimit-limit-requests``), or one learned from 429s: the rate the server
  actually admitted over the last seconds, probed upward again while no 429 comes;
* a token rate: the user's ``--tpm`` or ``x-ratelimit-limit-tokens``, paced on each
  request's estimated tokens.

Requests are paced evenly (one slot every 1/rate seconds) rather than sent in
bursts, so a run over a server's limit settles just under it instead of
oscillating between bursts of 429s and idle waits. A 429's ``Retry-After`` pauses
every request, not only the one that got it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

#: Share of a known limit we aim for: the rest absorbs clock skew between us and the server.
HEADROOM = 0.95
#: Seconds of successes used to measure the rate a server admits.
MEASURE_WINDOW = 10.0
#: While no 429 arrives, a learned rate grows by PROBE_STEP every PROBE_EVERY seconds.
PROBE_EVERY = 2.0
PROBE_STEP = 1.05
#: ... or by FAST_PROBE_STEP while the rate comes from fewer than PROVISIONAL_BELOW answers.
FAST_PROBE_STEP = 1.25
PROVISIONAL_BELOW = 30
#: A burst of 429s from one overshoot counts once: cuts are at least this far apart.
CUT_COOLDOWN = 1.0
#: Requests in flight before the first answers come back. Not knowing a server's limit
#: costs one wave of 429s whatever the start (the window doubles every round trip until
#: the first 429, which comes back while a window is in flight: traced, 14 in flight from
#: a start of 4); each doubling round trip costs a slow server's run time at part speed
#: (from 4, a tenth of a 0.2 s server's run; from 16, 1%).
SLOW_START = 32
#: Pause after a 429 that says nothing about when to come back.
DEFAULT_PAUSE = 1.0
MAX_PAUSE = 120.0


class Cancelled(Exception):
    """The run is stopping (Ctrl-C): no new request may start."""


def _float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class Throttle:
    def __init__(
        self,
        concurrency: int = 8,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """``clock`` and ``sleep`` are the time it paces by: a test hands in a fake pair
        (a sleep that moves the clock on), and nothing then waits for real."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.max_window = concurrency
        # Slow start (as TCP): a few requests first, one more per success (doubling every
        # round trip) until the first 429, so an unknown limit is not hit by a full wave.
        self.window = float(min(concurrency, SLOW_START))
        self._slow_start = True
        self.user_rate = rpm / 60 if rpm else None
        self.user_tps = tpm / 60 if tpm else None
        self.header_rate: float | None = None
        self.header_tps: float | None = None
        self.learned_rate: float | None = None
        self.clock = clock
        self._sleep = sleep
        self.in_flight = 0
        self.throttled = 0  # 429s seen
        self._cond = threading.Condition()
        self._cancel = threading.Event()
        self._next_slot = 0.0
        self._next_token_slot = 0.0
        self._pause_until = 0.0
        self._last_cut = -math.inf
        self._last_probe = clock()
        self._successes: deque[float] = deque()
        self._provisional = False

    # -- state ------------------------------------------------------------------
    @property
    def rate(self) -> float | None:
        """Requests per second we pace at (None: unpaced)."""
        rates = [r for r in (self.user_rate, self.header_rate, self.learned_rate) if r]
        return min(rates) if rates else None

    @property
    def token_rate(self) -> float | None:
        rates = [r for r in (self.user_tps, self.header_tps) if r]
        return min(rates) if rates else None

    def cancel(self) -> None:
        """Refuse every request from now on and wake those waiting."""
        self._cancel.set()
        with self._cond:
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        """A wait that Ctrl-C (cancel) cuts short; the injected ``sleep`` if one was given."""
        if self._sleep is not None:
            self._sleep(max(0.0, seconds))
            if self._cancel.is_set():
                raise Cancelled()
        elif self._cancel.wait(max(0.0, seconds)):
            raise Cancelled()

    # -- the two calls around every HTTP attempt ------------------------------------
    def acquire(self, tokens: int = 0) -> None:
        """Wait for a slot: no pause after a 429, room in the window, the rate's next turn."""
        while True:
            with self._cond:
                if self._cancel.is_set():
                    raise Cancelled()
                now = self.clock()
                paused = self._pause_until - now
                if paused <= 0 and self.in_flight >= max(1, int(self.window)):
                    self._cond.wait(0.5)  # release() wakes it when a slot frees
                    continue
                if paused <= 0:
                    self.in_flight += 1
                    at = now
                    if (rate := self.rate) is not None:
                        at = max(at, self._next_slot)
                        self._next_slot = at + 1 / rate
                    if tokens and (tps := self.token_rate) is not None:
                        at = max(at, self._next_token_slot)
                        self._next_token_slot = at + tokens / tps
            if paused > 0:
                # Every request waits out a 429's pause (outside the lock: others may
                # finish meanwhile), then queues again.
                self.sleep(paused)
                continue
            if at <= now:
                return
            try:
                self.sleep(at - now)
            except Cancelled:
                self.release(None, {})
                raise
            with self._cond:
                if self.clock() >= self._pause_until:
                    return
                # A 429 came while this request waited for its slot: the slot was paced for
                # a rate now known to be too high. Give it back and queue again.
                self.in_flight -= 1

    def release(
        self, status: int | None, headers: Mapping[str, str], wait: float | None = None
    ) -> None:
        """Account for one finished attempt: its status (None: no answer) and headers.

        ``wait`` is what the server asked for (Retry-After and friends), if anything.
        """
        with self._cond:
            self.in_flight -= 1
            now = self.clock()
            self._read_limits(headers)
            if status == 429:
                self._on_throttled(now, wait)
            elif status is not None and status < 400:
                self._on_success(now)
            # Wake as many as may start now, not every waiter: against a slow server a
            # worker keeps a second request ready behind each one in flight, and waking
            # them all for one free slot would spend the calls' time on a herd that goes
            # back to sleep.
            self._cond.notify(max(1, int(self.window) - self.in_flight))

    # -- adaptation ------------------------------------------------------------------
    def _read_limits(self, headers: Mapping[str, str]) -> None:
        limit = _float(headers, "x-ratelimit-limit-requests")
        if limit and limit > 0:
            self.header_rate = limit / 60 * HEADROOM
        tlimit = _float(headers, "x-ratelimit-limit-tokens")
        if tlimit and tlimit > 0:
            self.header_tps = tlimit / 60 * HEADROOM
        remaining = _float(headers, "x-ratelimit-remaining-requests")
        if remaining is not None and remaining < self.in_flight:
            # Nearly out: what is already in flight may use up the rest; stop widening.
            self.window = max(1.0, min(self.window, float(self.in_flight)))

    def _measured_rate(self, now: float) -> float | None:
        while self._successes and self._successes[0] < now - MEASURE_WINDOW:
            self._successes.popleft()
        if len(self._successes) < 3:
            return None
        # At least a second: a server's burst allowance (often a second of its rate) admits a
        # quick wave at the start, which over a shorter span would look like a far higher rate.
        span = max(now - self._successes[0], 1.0)
        return len(self._successes) / span

    def _on_throttled(self, now: float, wait: float | None) -> None:
        self.throttled += 1
        pause = min(wait if wait is not None else DEFAULT_PAUSE, MAX_PAUSE)
        self._pause_until = max(self._pause_until, now + pause)
        # Slots handed out before this 429 are void (their holders queue again): pace anew
        # from the end of the pause.
        self._next_slot = self._next_token_slot = self._pause_until
        self._last_probe = now
        if now - self._last_cut < CUT_COOLDOWN:
            return
        self._last_cut = now
        self._slow_start = False
        self.window = max(1.0, self.window * 0.7)
        measured = self._measured_rate(now)
        # A first 429 that comes within a few answers measures the start-up ramp, not the
        # server: probe up fast from there until the next 429 gives a real measurement.
        self._provisional = self.learned_rate is None and len(self._successes) < PROVISIONAL_BELOW
        if measured is not None:
            # What the server admitted while we pushed past it is its limit: aim just under.
            self.learned_rate = measured * HEADROOM
        elif self.learned_rate is not None:
            self.learned_rate *= 0.7

    def _on_success(self, now: float) -> None:
        self._successes.append(now)
        step = 1.0 if self._slow_start else 1 / self.window
        self.window = min(float(self.max_window), self.window + step)
        if self.learned_rate is not None and now - self._last_probe >= PROBE_EVERY:
            self._last_probe = now
            self.learned_rate *= FAST_PROBE_STEP if self._provisional else PROBE_STEP
            ceiling = min((r for r in (self.user_rate, self.header_rate) if r), default=None)
            if ceiling is not None and self.learned_rate >= ceiling:
                self.learned_rate = None
