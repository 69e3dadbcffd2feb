"""The throttle on a fake clock: every wait is recorded and passes at once.

The clock moves only when the throttle sleeps (``FakeTime``), or when a test moves it, so
each figure below is exact whatever the machine's speed.
"""

from __future__ import annotations

import pytest

from papertag.annotators.llm.throttle import (
    DEFAULT_PAUSE,
    HEADROOM,
    PROBE_EVERY,
    PROBE_STEP,
    SLOW_START,
    Cancelled,
    Throttle,
)

from .conftest import FakeTime


def throttle(fake: FakeTime, concurrency: int = 8, **limits: float) -> Throttle:
    return Throttle(concurrency, clock=fake.clock, sleep=fake.sleep, **limits)


def test_unpaced_requests_go_at_once_up_to_the_window(fake_time: FakeTime) -> None:
    t = throttle(fake_time, concurrency=4)
    for _ in range(4):
        t.acquire()
    assert t.in_flight == 4 and fake_time.slept == []
    t.release(200, {})
    t.acquire()
    assert t.in_flight == 4 and fake_time.slept == []


def test_rpm_paces_requests_evenly(fake_time: FakeTime) -> None:
    t = throttle(fake_time, rpm=600)  # 10 a second
    for _ in range(4):
        t.acquire()
    assert fake_time.slept == pytest.approx([0.1, 0.1, 0.1])
    assert fake_time.now == pytest.approx(0.3)


def test_tpm_paces_by_each_requests_tokens(fake_time: FakeTime) -> None:
    t = throttle(fake_time, tpm=6_000)  # 100 tokens a second
    t.acquire(50)
    t.acquire(200)
    t.acquire(10)
    # Each request waits for the tokens of the one before it.
    assert fake_time.slept == pytest.approx([0.5, 2.0])


def test_an_advertised_limit_is_paced_just_under(fake_time: FakeTime) -> None:
    t = throttle(fake_time)
    t.acquire()
    t.release(200, {"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "60000"})
    assert t.rate == pytest.approx(10 * HEADROOM)
    assert t.token_rate == pytest.approx(1000 * HEADROOM)
    t.acquire()
    t.acquire()
    assert fake_time.slept == pytest.approx([1 / (10 * HEADROOM)])


def test_slow_start_then_multiplicative_cut_on_429(fake_time: FakeTime) -> None:
    t = throttle(fake_time, concurrency=100)
    assert t.window == SLOW_START
    t.acquire()
    t.release(200, {})
    assert t.window == SLOW_START + 1  # one more per success until the first 429
    t.acquire()
    t.release(429, {}, 0.0)
    assert t.window == pytest.approx((SLOW_START + 1) * 0.7) and t.throttled == 1
    before = t.window
    t.acquire()
    t.release(200, {})
    assert t.window == pytest.approx(before + 1 / before)  # then one per window of successes


def test_a_429_pauses_every_request_for_its_retry_after(fake_time: FakeTime) -> None:
    t = throttle(fake_time)
    t.acquire()
    t.release(429, {}, 2.5)
    t.acquire()
    assert fake_time.slept == pytest.approx([2.5])
    t.release(429, {}, None)  # says nothing: a second
    t.acquire()
    assert fake_time.slept[1:] == pytest.approx([DEFAULT_PAUSE])


def test_a_429_during_a_paced_wait_sends_the_request_back_to_the_queue(
    fake_time: FakeTime,
) -> None:
    def sleep(seconds: float) -> None:
        fake_time.sleep(seconds)
        if len(fake_time.slept) == 1:  # while the second request waits for its slot...
            t.release(429, {}, 3.0)  # ...the first one gets a 429

    t = Throttle(8, rpm=60, clock=fake_time.clock, sleep=sleep)  # one a second
    t.acquire()  # in flight
    t.acquire()
    # Its slot (at 1 s) was paced for a rate now known too high: it gave the slot back,
    # waited out the pause (to 4 s) and took the next slot, paced anew from there.
    assert fake_time.slept == pytest.approx([1.0, 3.0])
    assert fake_time.now == pytest.approx(4.0) and t.in_flight == 1


def test_the_rate_a_server_admitted_is_learned_from_429s_then_probed_upward(
    fake_time: FakeTime,
) -> None:
    t = throttle(fake_time, concurrency=4)
    # 40 answers over 4 s (10 a second), then a 429 that says nothing.
    for _ in range(40):
        t.acquire()
        fake_time.now += 0.1
        t.release(200, {})
    t.acquire()
    t.release(429, {}, None)
    learned = t.learned_rate
    assert learned is not None and learned == pytest.approx(40 / 3.9 * HEADROOM, rel=0.05)
    # No 429 for a while: the rate grows a step every PROBE_EVERY seconds.
    fake_time.now += DEFAULT_PAUSE + PROBE_EVERY
    t.acquire()
    t.release(200, {})
    assert t.learned_rate == pytest.approx(learned * PROBE_STEP)


def test_cancel_ends_waits_and_refuses_new_requests(fake_time: FakeTime) -> None:
    t = throttle(fake_time, rpm=60)
    t.acquire()
    t.cancel()
    with pytest.raises(Cancelled):
        t.acquire()
    with pytest.raises(Cancelled):
        t.sleep(5)
    assert t.in_flight == 1  # the one in flight still releases its slot when it ends
