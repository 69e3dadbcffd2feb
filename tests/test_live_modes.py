"""The database during a cascade run and a ``--batch --wait`` run (issue 17, item 7).

A plain LLM run opens the file only to store (tests/test_live.py). The cascade's LLM run
and a ``--wait`` run, which polls a batch for as long as the server takes (hours), must
leave it free the same way: another process, the ``papertag`` command a person would
type, reads the database at a point of the run the test chooses (a request at the
server, a poll's pause), never after a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from papertag.annotate import annotate_papers
from papertag.db import Store

from .batch_server import batch_server
from .conftest import PAPERTAG, FakeTime, ingest_variants
from .fault_server import Reply, fault_server
from .test_live import holding


def _look(db: Path) -> subprocess.CompletedProcess[str]:
    """`papertag stats`, as a person would type it beside the run (default wait for a busy
    file: a file held for the whole run fails it)."""
    return subprocess.run(
        [PAPERTAG, "--db", str(db), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _wait_run(db: Path, url: str, fake_time: FakeTime, sleep: Callable[[float], None]) -> Any:
    """`annotate -a llm --batch --wait`, polling every 60 s by ``sleep``."""
    return annotate_papers(
        db,
        "llm",
        model="gpt-4o-mini",
        base_url=url,
        backoff=0.0,
        clock=fake_time.clock,
        sleep=sleep,
        batch=True,
        wait=True,
        poll_every=60,
    )


def test_the_cascade_leaves_the_database_free_during_its_llm_calls(
    demo_db: Path, fake_time: FakeTime
) -> None:
    looks: list[subprocess.CompletedProcess[str]] = []

    def route(request: dict[str, Any], n: int) -> Reply | None:
        if not looks:
            looks.append(_look(demo_db))  # while the first LLM request is being answered
        return None

    with fault_server(route=route) as srv:
        report = annotate_papers(
            demo_db,
            "cascade",
            model="gpt-4o-mini",
            base_url=srv.url,
            limit=40,
            backoff=0.0,
            sleep=fake_time.sleep,
        )
    assert report.cascade.sent > 0 and report.done == report.cascade.sent
    (look,) = looks
    assert look.returncode == 0, look.stderr
    assert json.loads(look.stdout)["papers"] == 623


def test_a_waiting_batch_run_leaves_the_database_free_between_polls(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    ingest_variants(db_path, tmp_path, 3)
    looks: list[subprocess.CompletedProcess[str]] = []

    def sleep(seconds: float) -> None:
        if seconds == 60:  # a poll's pause (retries here pause 0 s: backoff=0)
            looks.append(_look(db_path))
        fake_time.sleep(seconds)

    with batch_server(auto=True) as srv:
        report = _wait_run(db_path, srv.url, fake_time, sleep)
    assert report.done == 3 and srv.count == 0
    # One look at each pause: the batch sent, then in progress, then collected.
    assert len(looks) == 2
    for look in looks:
        assert look.returncode == 0, look.stderr
        assert json.loads(look.stdout)["papers"] == 3
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(DISTINCT paper_id) FROM annotations") == 3


def test_a_database_held_during_a_wait_puts_the_poll_off_instead_of_ending_the_run(
    tmp_path: Path, db_path: Path, fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone opens the database (a duckdb session) while a `--wait` run waits: the next
    poll finds it in use and is put off to the one after, and the run ends as usual."""
    ingest_variants(db_path, tmp_path, 3)
    monkeypatch.setenv("PAPERTAG_BUSY_WAIT", "0.5")  # how long a poll tries the held file
    held = contextlib.ExitStack()
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        if seconds == 60:
            pauses.append(seconds)
            if len(pauses) == 1:
                held.enter_context(holding(db_path))  # another process has it until...
            else:
                held.close()  # ... the next pause
        fake_time.sleep(seconds)

    with held, batch_server(auto=True) as srv:
        report = _wait_run(db_path, srv.url, fake_time, sleep)
    assert report.done == 3 and srv.count == 0
    # The plain run pauses twice (sent, in progress); the poll put off adds one.
    assert len(pauses) == 3
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(DISTINCT paper_id) FROM annotations") == 3
