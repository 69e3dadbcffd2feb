"""The database while an annotate run goes on (issue 17, item 7).

DuckDB lets one process write a file, or several read it, never both at once. A run
therefore keeps its answers in its crash journal and opens the database only to store a
batch; other commands that find the file in use wait a moment and try again. These
tests run the real command against the local fault server, and move from one step to
the next at points they can see (how many answers the server has let go, what the
database holds, a hook of the run), never after a fixed sleep.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from papertag.annotate import AnnotateReport, annotate_papers
from papertag.db import Store
from papertag.errors import DatabaseBusy, StoreError

from .conftest import ABSTRACT, PAPERTAG, FakeTime, ingest_variants, reaped, spawn_annotate
from .fault_server import Reply, completion, fault_server, valid_answer

BIN = Path(sys.executable).parent


def _doubtful(request: dict[str, Any], n: int) -> Reply:
    """A valid answer whose technique is doubtful (0.6): every paper enters the review queue."""
    body = valid_answer(request)
    content = json.loads(body["choices"][0]["message"]["content"])
    # One paper's answer, or (several papers a call) a list of them.
    for entry in content.get("papers", [content]):
        entry["technique"][0]["confidence"] = 0.6
    return Reply(body=completion(json.dumps(content)))


def _until(cond: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait for a point the test can see. The timeout only ends a hung test: nothing here
    depends on how fast the machine is."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"never reached: {what}")
        time.sleep(0.05)


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PAPERTAG, "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


class Watcher:
    """Runs the commands a person watching a run would, and checks what each one saw."""

    def __init__(self, db: Path, tmp_path: Path) -> None:
        self.db, self.tmp = db, tmp_path
        self.seen_annotations = 0
        self.seen_queue = 0
        self.seen_papers = 0
        self.rounds = 0

    def stored(self) -> int:
        done = _cli(self.db, "sql", "SELECT count(*) AS n FROM annotations", "--format", "csv")
        assert done.returncode == 0, done.stderr
        return int(done.stdout.splitlines()[1])

    def look(self) -> None:
        self.rounds += 1
        stats = _cli(self.db, "stats", "--json")
        assert stats.returncode == 0, stats.stderr
        annotations = json.loads(stats.stdout)["annotations"]
        # Answers are only ever added: a later look never sees fewer.
        assert annotations >= self.seen_annotations
        self.seen_annotations = annotations

        # Each batch is stored whole: no annotation without its labels and its call.
        check = _cli(
            self.db,
            "sql",
            "SELECT count(*) AS annotations, count(DISTINCT paper_id) AS papers, "
            "count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM annotation_labels l "
            "WHERE l.annotation_id = a.annotation_id)) AS bare, "
            "count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM llm_calls c "
            "WHERE c.annotation_id = a.annotation_id)) AS unlogged FROM annotations a",
            "--format",
            "json",
        )
        assert check.returncode == 0, check.stderr
        (row,) = json.loads(check.stdout)
        assert row["annotations"] == row["papers"] >= annotations
        assert row["bare"] == 0 and row["unlogged"] == 0

        sheet = self.tmp / f"sheet-{self.rounds}.csv"
        export = _cli(self.db, "review", "export", "--to", str(sheet))
        assert export.returncode == 0, export.stderr
        with sheet.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        # Every annotated paper has a doubtful technique label; the queue only grows.
        papers = {r["paper_id"] for r in rows}
        assert len(papers) >= annotations and len(papers) >= self.seen_papers
        assert len(rows) >= self.seen_queue
        self.seen_queue, self.seen_papers = len(rows), len(papers)

        calls = _cli(self.db, "calls", "--limit", "5", "--format", "csv")
        assert calls.returncode == 0, calls.stderr


def test_stats_sql_and_review_export_work_during_a_run(tmp_path: Path, db_path: Path) -> None:
    n = 24
    ingest_variants(db_path, tmp_path, n)
    watcher = Watcher(db_path, tmp_path)
    with fault_server(route=_doubtful, gated=True) as srv:
        with reaped(spawn_annotate(db_path, srv.url, "--concurrency", "2")) as run:
            # The run is under way: its first requests wait at the server.
            _until(lambda: srv.count >= 2, "the run's first requests")
            watcher.look()
            assert watcher.seen_annotations == 0
            # The duckdb CLI reads the file too (read-only) while the run goes on.
            duck = subprocess.run(
                [
                    str(BIN / "duckdb"),
                    "-readonly",
                    str(db_path),
                    "-c",
                    "SELECT count(*) FROM papers",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert duck.returncode == 0 and str(n) in duck.stdout, duck.stderr

            # Let answers go a few at a time; each step is seen once the run has stored it.
            for allowed in (4, 10):
                srv.allow(allowed)
                _until(lambda a=allowed: watcher.stored() >= a, f"{allowed} stored")  # type: ignore[misc]
                watcher.look()
                assert watcher.seen_annotations == allowed
            # Now answers arrive while the commands run: the run stores batches between them.
            allowed = 10
            while allowed < n:
                allowed = min(n, allowed + 3)
                srv.allow(allowed)
                watcher.look()
            _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
        asked = srv.count
    # Nothing lost, nothing paid twice.
    assert asked == n
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(DISTINCT paper_id) FROM annotations") == n
        assert s.scalar("SELECT count(*) FROM annotations") == n
        assert s.scalar("SELECT count(*) FROM llm_calls") == n
        run_row = s.con.execute(
            "SELECT done, failed, finished_at IS NOT NULL FROM annotation_runs"
        ).fetchall()
    assert run_row == [(n, 0, True)]
    assert not db_path.with_name(db_path.name + ".journal").exists()
    watcher.look()
    assert watcher.seen_annotations == n and watcher.seen_papers == n


def test_a_second_run_is_refused_and_sends_nothing(tmp_path: Path, db_path: Path) -> None:
    ingest_variants(db_path, tmp_path, 8)
    with fault_server(gated=True) as srv:
        with reaped(spawn_annotate(db_path, srv.url, "--concurrency", "2")) as first:
            _until(lambda: srv.count >= 2, "the first run's requests")
            second = _cli(
                db_path, "annotate", "-a", "llm", "--model", "fake-model", "--base-url", srv.url
            )
            asked = srv.count
            srv.allow(None)
            _, first_err = first.communicate(timeout=120)
        total = srv.count
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr
    # It says what holds the database, and what to do.
    assert f"pid {first.pid}" in lines[0] and "annotate" in lines[0] and "wait" in lines[0].lower()
    # The second run asked for nothing: each paper was asked once, by the first.
    assert asked == 2 and total == 8
    assert first.returncode == 0, first_err
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM annotations") == 8
        # The refused run left no trace (no annotation_runs row of its own).
        assert s.scalar("SELECT count(*) FROM annotation_runs") == 1


def test_other_writers_take_turns_with_a_run(tmp_path: Path, db_path: Path) -> None:
    """A command that writes (ingest, review import) also finds the file free between the
    run's batches; what it adds is kept, and the run's answers too."""
    ingest_variants(db_path, tmp_path, 6)
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"title": "Another paper", "abstract": ABSTRACT}) + "\n")
    with (
        fault_server(gated=True) as srv,
        reaped(spawn_annotate(db_path, srv.url, "--concurrency", "2")) as run,
    ):
        _until(lambda: srv.count >= 2, "the run's requests")
        srv.allow(3)
        added = _cli(db_path, "ingest", str(more))
        srv.allow(None)
        _, stderr = run.communicate(timeout=120)
    assert added.returncode == 0, added.stderr
    assert run.returncode == 0, stderr
    with Store(db_path, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM papers") == 7
        # The run annotates the papers it found at its start.
        assert s.scalar("SELECT count(*) FROM annotations") == 6


# --- a run whose database another process holds -------------------------------------------


@contextmanager
def holding(db: Path, *, read_only: bool = True) -> Iterator[subprocess.Popen[str]]:
    """Another process with the database open (as `duckdb -readonly` left open would be),
    until the block ends or it is told to close."""
    code = (
        "import duckdb, sys\n"
        f"con = duckdb.connect(sys.argv[1], read_only={read_only})\n"
        "print('open', flush=True)\n"
        "sys.stdin.readline()\n"
        "con.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "open\n"
    try:
        yield proc
    finally:
        release(proc)


def release(proc: subprocess.Popen[str]) -> None:
    if proc.returncode is None:
        proc.communicate("\n", timeout=30)


def _count(db: Path, sql: str) -> int:
    with Store(db, read_only=True) as s:
        return int(s.scalar(sql))


def test_answers_wait_for_a_held_database_and_are_stored_once_it_is_free(
    tmp_path: Path, db_path: Path
) -> None:
    ingest_variants(db_path, tmp_path, 10)
    settled = threading.Event()
    done: list[AnnotateReport] = []

    def progress(report: AnnotateReport) -> None:
        if report.done >= 8:
            settled.set()

    with fault_server(gated=True) as srv:

        def run() -> None:
            done.append(
                annotate_papers(
                    db_path, "llm", model="fake-model", base_url=srv.url, on_progress=progress
                )
            )

        thread = threading.Thread(target=run)
        thread.start()
        try:
            srv.allow(5)
            _until(lambda: _count(db_path, "SELECT count(*) FROM annotations") == 5, "5 stored")
            with holding(db_path) as holder:
                srv.allow(8)
                # The run has 8 answers, and cannot store the last three while the file is held.
                _until(settled.is_set, "8 answers settled")
                release(holder)
            srv.allow(None)
        finally:
            srv.allow(None)
            thread.join(120)
        asked = srv.count
    (report,) = done
    assert report.done == 10 and report.unstored == 0
    assert asked == 10
    assert _count(db_path, "SELECT count(*) FROM annotations") == 10
    assert not db_path.with_name(db_path.name + ".journal").exists()


def test_answers_the_run_could_not_store_are_kept_for_the_next_run(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papertag.annotate.engine as engine_module

    # How long the end of a run waits for a held database (a minute by default).
    monkeypatch.setattr(engine_module, "FINAL_WAIT", 0.5)
    ingest_variants(db_path, tmp_path, 10)
    with fault_server(gated=True) as srv:
        result: list[AnnotateReport] = []
        thread = threading.Thread(
            target=lambda: result.append(
                annotate_papers(db_path, "llm", model="fake-model", base_url=srv.url)
            )
        )
        thread.start()
        try:
            srv.allow(5)
            _until(lambda: _count(db_path, "SELECT count(*) FROM annotations") == 5, "5 stored")
            with holding(db_path):
                srv.allow(None)
                thread.join(120)
        finally:
            srv.allow(None)
            thread.join(120)
        (first,) = result
        # Five answers came while the file was held to the end: kept in the journal.
        assert first.done == 10 and first.unstored == 5
        assert db_path.with_name(db_path.name + ".journal").is_dir()
        assert _count(db_path, "SELECT count(*) FROM annotations") == 5
        second = annotate_papers(db_path, "llm", model="fake-model", base_url=srv.url)
        asked = srv.count
    # The next run stores them without asking again.
    assert second.recovered == 5 and second.replayed == 5 and second.calls == 0
    assert asked == 10
    assert _count(db_path, "SELECT count(*) FROM annotations") == 10


# --- opening a database another process holds ----------------------------------------------


def test_a_reader_waits_for_a_held_database(db_path: Path, fake_time: FakeTime) -> None:
    Store(db_path).close()
    with holding(db_path, read_only=False) as holder:
        tries: list[float] = []

        def sleep(seconds: float) -> None:
            tries.append(seconds)
            if len(tries) == 3:
                release(holder)
            fake_time.sleep(seconds)

        with Store(db_path, read_only=True, wait=10, sleep=sleep, clock=fake_time.clock) as s:
            assert s.scalar("SELECT count(*) FROM papers") == 0
    # A short backoff that grows, well within the bound.
    assert len(tries) == 3 and tries == sorted(tries) and sum(tries) < 10


def test_a_reader_gives_up_after_its_wait_with_one_line(db_path: Path, fake_time: FakeTime) -> None:
    Store(db_path).close()
    with holding(db_path, read_only=False), pytest.raises(DatabaseBusy) as caught:
        Store(db_path, read_only=True, wait=10, sleep=fake_time.sleep, clock=fake_time.clock)
    message = str(caught.value)
    assert "\n" not in message and "in use by another process" in message
    assert 10 <= fake_time.now < 11 and len(fake_time.slept) > 3


def test_the_command_says_the_database_is_in_use_after_waiting(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(db_path).close()
    monkeypatch.setenv("PAPERTAG_BUSY_WAIT", "0.2")
    with holding(db_path, read_only=False):
        done = _cli(db_path, "stats")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "in use by another process" in done.stderr


def test_a_run_in_a_missing_directory_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        annotate_papers(tmp_path / "nowhere" / "papers.duckdb", "rules")
