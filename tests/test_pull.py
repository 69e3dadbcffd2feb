"""`papertag pull` and `papertag run` against a local daily-papers API (tests.daily_server).

The server answers the real responses in ../shared byte for byte, by day, and injects
faults. The pull sees an injected clock and sleep, so Retry-After and backoff are
asserted as the waits asked for, never slept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from papertag.cli import app
from papertag.db import Store
from papertag.ingest import ingest_digests
from papertag.ingest import pull as pull_module
from papertag.ingest.pull import ATTEMPTS, BACKOFF, PullReport, pull

from .conftest import content
from .daily_server import DAY_FILES, ERROR_BODY, NO_PAPERS, daily_server
from .fault_server import Reply

runner = CliRunner()

SAMPLE_DAY = date(2026, 8, 21)  # 17 papers, current schema
JULY = date(2026, 7, 15)  # 2 papers
REPR_DAY = date(2025, 1, 2)  # a file of Python repr() strings, not the API's list
#: Long after every shared day: each day pulled then is final.
LATER = datetime(2027, 1, 1, 12)


class FakeTime:
    """A clock that moves only when the pull sleeps; records every sleep asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds

    def clock(self) -> float:
        with self._lock:
            return self.now


def run_pull(db: Path, url: str, since: date, until: date, **options: Any) -> PullReport:
    fake = options.pop("fake", None) or FakeTime()
    options.setdefault("now", lambda: LATER)
    return pull(
        db,
        since=since,
        until=until,
        base_url=url,
        sleep=fake.sleep,
        clock=fake.clock,
        **options,
    )


def statuses(report: PullReport) -> dict[date, str]:
    return {d.day: d.status for d in report.days}


def day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def pulled_days(db: Path) -> dict[date, int]:
    with Store(db, read_only=True) as s:
        return dict(s.con.execute("SELECT day, papers FROM pulled_days").fetchall())


# ------------------------------------------------------------------- same as the files
def test_pull_stores_the_same_papers_as_ingesting_the_days_files(tmp_path: Path) -> None:
    first, last = date(2024, 6, 1), date(2024, 7, 6)  # two days with papers, 34 without
    with daily_server() as srv:
        report = run_pull(tmp_path / "pulled.duckdb", srv.url, first, last)
    assert report.ok, report.as_dict()
    assert statuses(report) == {
        d: "stored" if d in DAY_FILES else "empty" for d in day_range(first, last)
    }
    assert report.requests == len(day_range(first, last))
    files = tmp_path / "files.duckdb"
    assert ingest_digests([DAY_FILES[date(2024, 6, 3)], DAY_FILES[date(2024, 7, 5)]], files).ok
    assert content(tmp_path / "pulled.duckdb") == content(files)
    with Store(tmp_path / "pulled.duckdb", read_only=True) as s:
        assert s.con.execute(
            "SELECT digest_id, digest_date, entries, format FROM digests ORDER BY ALL"
        ).fetchall() == [
            ("hf:2024-06-03", date(2024, 6, 3), 6, "hf-api-json"),
            ("hf:2024-07-05", date(2024, 7, 5), 3, "hf-api-json"),
        ]
    assert pulled_days(tmp_path / "pulled.duckdb") == {
        d: (6 if d == date(2024, 6, 3) else 3 if d == date(2024, 7, 5) else 0)
        for d in day_range(first, last)
    }


def test_a_new_user_pulls_from_the_test_server_with_the_command(tmp_path: Path) -> None:
    """The whole command, as a user runs it: a day with papers and one without."""
    db = tmp_path / "cli.duckdb"
    with daily_server() as srv:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("papertag")), "--db", str(db), "pull",
             "--since", "2026-08-20", "--until", str(SAMPLE_DAY), "--base-url", srv.url],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "2026-08-20 … 2026-08-21: 2 days fetched (1 with papers, 1 without), 0 stored before, "
        "0 failed; 17 papers listed: 17 new, 0 updated, 17 new links"
    ]
    files = tmp_path / "files.duckdb"
    assert ingest_digests([DAY_FILES[SAMPLE_DAY]], files).ok
    assert content(db) == content(files)


# ------------------------------------------------------------------------ what is skipped
def test_a_second_pull_asks_nothing_for_days_stored(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    first, last = date(2026, 7, 13), date(2026, 7, 16)
    with daily_server() as srv:
        assert run_pull(db, srv.url, first, last).ok
        asked = dict(srv.requests)
        before = content(db)
        again = run_pull(db, srv.url, first, last)
        assert set(statuses(again).values()) == {"skipped"}
        assert again.requests == 0 and dict(srv.requests) == asked
        # --refresh asks again, and the same answers change nothing.
        refreshed = run_pull(db, srv.url, first, last, refresh=True)
        assert refreshed.requests == 4 and refreshed.total("new_links") == 0
        assert refreshed.total("unchanged") == 2
    assert content(db) == before


def test_today_and_yesterday_are_fetched_again_and_a_grown_list_replaces_the_day(
    tmp_path: Path,
) -> None:
    """A day's list grows (and reorders) during the day and the next: fetched then, it is
    fetched again by the next pull, and its digest lists what the API lists now."""
    db = tmp_path / "p.duckdb"
    today = SAMPLE_DAY
    items = json.loads(DAY_FILES[SAMPLE_DAY].read_bytes())
    # Early in the day the API listed fewer papers: the real list's first five, reversed.
    early = json.dumps(items[:5][::-1], indent=2).encode()
    faults = {today: [Reply(body=early)]}
    morning = datetime(2026, 8, 21, 8)
    days = day_range(today - timedelta(days=3), today)
    with daily_server(faults=faults) as srv:
        first = run_pull(db, srv.url, days[0], today, now=lambda: morning)
        assert first.ok and first.total("new_papers") == 5
        second = run_pull(db, srv.url, days[0], today, now=lambda: morning + timedelta(hours=9))
        assert statuses(second) == {
            days[0]: "skipped",
            days[1]: "skipped",
            days[2]: "empty",
            today: "stored",
        }
        assert (second.total("new_papers"), second.total("new_links")) == (12, 12)
        assert second.total("unchanged") == 5
        # Two days after it began, a day is fetched once more, then never again.
        later = datetime(2026, 8, 23, 1)
        third = run_pull(db, srv.url, days[0], today, now=lambda: later)
        assert [d.day for d in third.days if d.status != "skipped"] == [days[2], today]
        fourth = run_pull(db, srv.url, days[0], today, now=lambda: later)
        assert fourth.requests == 0
        assert srv.requests[today.isoformat()] == 3
    files = tmp_path / "files.duckdb"
    assert ingest_digests([DAY_FILES[SAMPLE_DAY]], files).ok
    pulled, filed = content(db), content(files)
    assert pulled["listings"] == filed["listings"] and pulled["papers"] == filed["papers"]
    with Store(db, read_only=True) as s:
        assert s.scalar("SELECT entries FROM digests WHERE digest_id = 'hf:2026-08-21'") == 17


def test_a_pull_killed_half_way_finishes_without_fetching_a_stored_day_twice(
    tmp_path: Path,
) -> None:
    """kill -9 while a day's answer is slow, then the same command again."""
    db = tmp_path / "p.duckdb"
    first, last = date(2026, 7, 13), date(2026, 7, 19)
    slow = date(2026, 7, 17)
    cmd = [str(Path(sys.executable).with_name("papertag")), "--db", str(db), "pull",
           "--since", str(first), "--until", str(last)]  # fmt: skip
    with daily_server(faults={slow: [Reply(delay=120, body=NO_PAPERS)]}) as srv:
        proc = subprocess.Popen(
            [*cmd, "--base-url", srv.url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 60
            # Every day asked: those before the slow one were answered well before the last ask.
            while srv.requests[last.isoformat()] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        stored = pulled_days(db)
        # Days are stored in order: never one after a day that is not.
        assert sorted(stored) == day_range(first, first + timedelta(days=len(stored) - 1))
        assert slow not in stored
        asked = dict(srv.requests)
        again = subprocess.run(
            [*cmd, "--base-url", srv.url], capture_output=True, text=True, check=False, timeout=120
        )
        assert again.returncode == 0, again.stderr
        for day in day_range(first, last):
            key = day.isoformat()
            assert srv.requests[key] == asked[key] + (0 if day in stored else 1), day
    assert set(pulled_days(db)) == set(day_range(first, last))
    clean = tmp_path / "clean.duckdb"
    with daily_server() as srv:
        assert run_pull(clean, srv.url, first, last).ok
    assert content(db) == content(clean)


# ------------------------------------------------------------------------------ faults
def test_retries_wait_what_retry_after_asks_and_back_off_otherwise(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    faults = {
        SAMPLE_DAY: [Reply(status=429, headers={"Retry-After": "7"}), Reply(status=503)],
        JULY: [Reply(drop=True), Reply(truncate=True, body=DAY_FILES[JULY].read_bytes())],
    }
    fake = FakeTime()
    with daily_server(faults=faults) as srv:
        report = run_pull(db, srv.url, JULY, JULY, fake=fake, rate=1000.0)
        assert report.ok and report.total("new_papers") == 2
        report = run_pull(db, srv.url, SAMPLE_DAY, SAMPLE_DAY, fake=fake, rate=1000.0)
        assert report.ok and report.total("new_papers") == 17
        assert srv.requests[JULY.isoformat()] == srv.requests[SAMPLE_DAY.isoformat()] == 3
    # A reset, then a cut body: backoff, 1 s then 2 s; a 429: the 7 s it asked; then a
    # 503, the second failure of that request: 2 s.
    waits = [s for s in fake.sleeps if s >= BACKOFF / 2]
    assert waits == [BACKOFF, 2 * BACKOFF, 7.0, 2 * BACKOFF]


def test_a_read_timeout_is_retried(tmp_path: Path) -> None:
    db = tmp_path / "p.duckdb"
    with daily_server(faults={JULY: [Reply(delay=5.0, body=b"[]")]}) as srv:
        report = run_pull(db, srv.url, JULY, JULY, timeout=1.0)
        assert report.ok and report.total("new_papers") == 2
        assert srv.requests[JULY.isoformat()] == 2


def test_a_server_that_keeps_failing_stops_the_pull_and_keeps_the_days_stored(
    tmp_path: Path,
) -> None:
    db = tmp_path / "p.duckdb"
    first, bad, last = date(2026, 7, 14), date(2026, 7, 16), date(2026, 7, 18)
    fake = FakeTime()
    with daily_server(faults={bad: [Reply(status=503)] * ATTEMPTS}) as srv:
        report = run_pull(db, srv.url, first, last, fake=fake, concurrency=1, rate=1000.0)
        assert srv.requests[bad.isoformat()] == ATTEMPTS
    assert report.stopped == (
        f"127.0.0.1:{srv.port} keeps failing: HTTP 503 Service Unavailable after "
        f"{ATTEMPTS} attempts; try again later"
    )
    assert statuses(report) == {
        first: "empty",
        JULY: "stored",
        bad: "not fetched",
        date(2026, 7, 17): "not fetched",
        last: "not fetched",
    }
    assert [s for s in fake.sleeps if s >= BACKOFF / 2] == [BACKOFF, 2 * BACKOFF, 4 * BACKOFF]
    assert set(pulled_days(db)) == {first, JULY}


def test_a_retry_after_beyond_reason_stops_the_pull(tmp_path: Path) -> None:
    with daily_server(faults={JULY: [Reply(status=429, headers={"Retry-After": "86400"})]}) as srv:
        report = run_pull(tmp_path / "p.duckdb", srv.url, JULY, JULY)
    assert report.stopped == (
        f"127.0.0.1:{srv.port} asks to wait 86,400 s (HTTP 429 Too Many Requests); try again later"
    )


def _html(_: Path) -> bytes:
    # Not an API answer: the page a proxy or a captive portal puts in its place.
    return b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>\n"


BAD_BODIES = [
    # (case, status, body from the real files, what the error says)
    ("error-object", 200, lambda _: ERROR_BODY.read_bytes(), "JSON is an error response"),
    ("html", 200, _html, "looks like HTML"),
    (
        "truncated-json",
        200,
        lambda p: p.read_bytes()[: len(p.read_bytes()) // 2],
        "invalid JSON",
    ),
    (
        "http-404",
        404,
        lambda _: ERROR_BODY.read_bytes(),
        "HTTP 404 Not Found: Sorry, we can't find the page you are looking for.",
    ),
]


@pytest.mark.parametrize(
    ("status", "make", "says"), [pytest.param(*c[1:], id=c[0]) for c in BAD_BODIES]
)
def test_a_day_that_is_not_the_apis_list_fails_alone(
    tmp_path: Path, status: int, make: Any, says: str
) -> None:
    db = tmp_path / "p.duckdb"
    body = make(DAY_FILES[JULY])
    with daily_server(faults={JULY: [Reply(status=status, body=body)]}) as srv:
        report = run_pull(db, srv.url, JULY - timedelta(days=1), SAMPLE_DAY, rate=1000.0)
    (failed,) = report.failed
    assert failed.day == JULY and failed.error is not None
    assert failed.error.startswith(f"127.0.0.1:{srv.port}/api/daily_papers?date={JULY}: ")
    assert says in failed.error and "\n" not in failed.error
    assert report.stopped is None and not report.ok
    assert report.count("stored") == 1 and report.total("new_papers") == 17
    assert JULY not in pulled_days(db)


def test_the_python_repr_file_is_refused(tmp_path: Path) -> None:
    with daily_server() as srv:
        report = run_pull(tmp_path / "p.duckdb", srv.url, REPR_DAY, REPR_DAY)
    (failed,) = report.failed
    assert failed.error == (
        f"127.0.0.1:{srv.port}/api/daily_papers?date={REPR_DAY}: item 1: items are Python "
        "repr() strings, not JSON objects (a broken export); re-export as real JSON"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://nonexistent.invalid", "cannot reach nonexistent.invalid: "),
        ("http://127.0.0.1:1", "cannot reach 127.0.0.1:1: "),
    ],
    ids=["dns", "closed-port"],
)
def test_no_network_stops_the_pull_in_one_line(tmp_path: Path, url: str, says: str) -> None:
    fake = FakeTime()
    report = run_pull(tmp_path / "p.duckdb", url, JULY, JULY + timedelta(days=2), fake=fake)
    assert report.stopped is not None and report.stopped.startswith(says)
    assert "\n" not in report.stopped
    assert set(statuses(report).values()) == {"not fetched"}
    assert pulled_days(tmp_path / "p.duckdb") == {}


# --------------------------------------------------------------------------------- CLI
@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands without their polite pace and backoff: nothing to wait for here."""
    monkeypatch.setattr(pull_module, "RATE", 1000.0)
    monkeypatch.setattr(pull_module, "BACKOFF", 0.0)


def cli(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_cli_pull_prints_a_summary_each_failed_day_and_every_day_with_v(
    db_path: Path, fast: None
) -> None:
    with daily_server() as srv:
        result = cli(
            "pull", "--since", "2025-01-01", "--until", "2025-01-03", "--base-url", srv.url
        )
        assert result.exit_code == 1
        assert result.stdout.splitlines() == [
            "2025-01-01 … 2025-01-03: 2 days fetched (0 with papers, 2 without), 0 stored "
            "before, 1 failed; 0 papers listed: 0 new, 0 updated, 0 new links"
        ]
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"✗ 127.0.0.1:{srv.port}/api/daily_papers?date=2025-01-02: ")
        verbose = cli("pull", "-v", "--date", str(JULY), "--api-url", srv.url)
    assert verbose.exit_code == 0, verbose.output
    assert verbose.stdout.splitlines()[0] == (
        f"✓ {JULY} (2 papers): 2 new papers, 0 updated, 2 new links, 0 unchanged"
    )
    assert cli("pull", "--date", str(JULY), "--since", str(JULY)).exit_code == 2


def test_cli_pull_that_cannot_reach_the_host_says_so_in_one_line(db_path: Path, fast: None) -> None:
    result = cli("pull", "--date", str(JULY), "--base-url", "http://nonexistent.invalid")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: cannot reach nonexistent.invalid: ")


def test_run_pulls_annotates_and_prints_its_summary(db_path: Path, fast: None) -> None:
    with daily_server() as srv:
        result = cli(
            "run", "--since", "2026-07-14", "--until", "2026-07-16", "--api-url", srv.url,
            "--json", "--annotator", "rules",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["ok"] is True
        assert summary["pull"]["days"] == {
            "stored": 1, "empty": 2, "skipped": 0, "failed": 0, "not_fetched": 0
        }  # fmt: skip
        assert summary["pull"]["new_papers"] == 2
        assert summary["annotate"]["annotated"] == 2
        assert summary["annotate"]["annotator"] == "rules"
        with Store(db_path, read_only=True) as s:
            labels = dict(
                s.con.execute(
                    "SELECT field, count(*) FROM labels WHERE current GROUP BY field"
                ).fetchall()
            )
        assert summary["labels"] == labels
        assert summary["review"]["new"] == summary["review"]["waiting"]
        # Nothing new: quiet says nothing.
        quiet = cli("run", "--quiet", "-a", "rules", "--since", "2026-07-14", "--api-url", srv.url,
                    "--until", "2026-07-16")  # fmt: skip
        assert quiet.exit_code == 0 and quiet.output == ""
    # A failed day is told and exits 1, and what landed is annotated all the same.
    broken = {SAMPLE_DAY + timedelta(days=1): [Reply(body=DAY_FILES[REPR_DAY].read_bytes())]}
    with daily_server(faults=broken) as srv:
        mixed = cli("run", "--since", str(SAMPLE_DAY), "--until", str(SAMPLE_DAY + timedelta(days=1)),
                    "--api-url", srv.url, "-a", "rules")  # fmt: skip
    assert mixed.exit_code == 1
    (error,) = mixed.stderr.splitlines()
    assert error.startswith("✗ ") and "Python repr() strings" in error
    out = mixed.stdout.splitlines()
    assert "17 papers listed: 17 new" in out[0] and ", 1 failed;" in out[0]
    assert out[1].startswith("annotated 17 papers (rules/rules; 2 done before, 0 failed)")


def test_run_takes_annotates_options_and_refuses_others(db_path: Path) -> None:
    result = cli("run", "--annotator", "rules", "--model", "x")
    assert result.exit_code == 2
    assert "--model applies to --annotator llm and learned only" in result.stderr
    assert cli("run", "--paper", "x").exit_code == 2
    assert cli("run", "--no-such-option").exit_code == 2
