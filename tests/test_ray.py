"""``annotate --engine ray`` on a real local Ray runtime against the fault server.

The module starts one Ray runtime (``ray.init(num_cpus=2)``) on 127.0.0.1; runs in this
process use it, and the command-line runs join it with ``--ray-address``, as a driver
joins a cluster. Nothing here is mocked: the actors run the LLM annotator through the
openai client to the fault server, and the results come back to DuckDB through Parquet
shards. Tests wait for points they can see (shard files gone, requests seen), never for
a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from papertag.annotate import annotate_papers
from papertag.annotate.ray_engine import annotate_on_ray
from papertag.annotate.shards import WorkDir
from papertag.annotate.writer import TABLES
from papertag.annotators.llm.prices import estimate_cost
from papertag.db import Store
from papertag.ingest import ingest_digests

from .conftest import ABSTRACT, PAPERTAG, write_papers
from .fault_server import Reply, fault_server, paper_of
from .test_batch import RATE, answer

#: Ray's processes talk over 127.0.0.1 only (not the machine's address), and send no usage
#: report; set before Ray is imported (it reads them then), and inherited by the drivers
#: started here.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(RAY_ENV)

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

#: Short retry waits (what is asserted is what happened, not how long it took).
FAST = {"backoff": 0.01}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray runtime for the module; its address, for drivers that join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def papers(db: Path, tmp_path: Path, n: int, *, start: int = 0, name: str = "papers") -> None:
    rows = [(f"Paper {i:03d}: tiny quant", ABSTRACT + f" Variant {i}.") for i in range(start, n)]
    assert ingest_digests([write_papers(tmp_path / f"{name}.jsonl", rows)], db).ok


def number(request: dict[str, Any]) -> int:
    return int(paper_of(request)["title"][6:9])


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with Store(db) as s:
        return s.con.execute(sql).fetchall()


#: What two engines must store alike: everything but run ids, times and call ids, and what
#: the server said it had cached (which depends on what it had seen by then).
ANNOTATIONS = (
    "SELECT paper_id, annotation_id, content_hash, annotator, model, prompt_version, "
    "taxonomy_version FROM annotations ORDER BY paper_id"
)
LABELS = (
    "SELECT annotation_id, field, kind, rank, label, confidence, evidence FROM annotation_labels "
    "ORDER BY ALL"
)
CALLS = (
    "SELECT paper_id, annotation_id, annotator, model, host, path, prompt_version, "
    "taxonomy_version, options, request_hash, request_body, status, "
    "json_extract(response_body, '$.choices') AS answer, "
    "prompt_tokens, completion_tokens, attempt "
    "FROM llm_calls ORDER BY paper_id, attempt"
)


def test_200_papers_have_the_local_engines_keys_and_provenance(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAPERTAG_PRICES", '{"fake-model": [1.0, 2.0]}')
    on_ray, local = tmp_path / "ray.duckdb", tmp_path / "local.duckdb"
    for db in (on_ray, local):
        papers(db, tmp_path, 200)
    settings = {"model": "fake-model", "concurrency": 8}
    with fault_server() as srv:
        report = annotate_on_ray(on_ray, base_url=srv.url, shard_size=30, **settings)
        asked = srv.calls
        again = annotate_on_ray(on_ray, base_url=srv.url, shard_size=30, **settings)
        assert srv.calls == asked  # a second run sends nothing
        baseline = annotate_papers(local, "llm", base_url=srv.url, **settings)
    assert (report.total, report.done, report.failed, report.calls) == (200, 200, 0, 200)
    usage = ("prompt_tokens", "completion_tokens")
    assert [getattr(report, k) for k in usage] == [getattr(baseline, k) for k in usage]
    # How much of a prompt the server had cached depends on what it had seen by then (the
    # timing of both runs): each call's cost is its own usage at the price set here.
    assert report.cost_known and report.cost_usd > 0
    for model, prompt, completion, cached, cost in rows(
        on_ray,
        "SELECT model, prompt_tokens, completion_tokens, cached_tokens, cost_usd FROM llm_calls",
    ):
        assert cost == pytest.approx(estimate_cost(model, prompt, completion, cached))
    assert (again.total, again.skipped, again.calls) == (0, 200, 0)
    for sql in (ANNOTATIONS, LABELS, CALLS):
        assert rows(on_ray, sql) == rows(local, sql)
    assert len(rows(on_ray, CALLS)) == 200
    # The runs that made them are recorded, and nothing is left beside the database.
    assert rows(on_ray, "SELECT done, failed FROM annotation_runs ORDER BY started_at") == [
        (200, 0),
        (0, 0),
    ]
    assert not on_ray.with_name("ray.duckdb.ray").exists()


def test_429s_and_500s_are_retried_and_a_failed_validation_is_a_failure_row(
    cluster: str, tmp_path: Path, db_path: Path
) -> None:
    papers(db_path, tmp_path, 60)

    def route(request: dict[str, Any], n: int) -> Reply:
        i = number(request)
        if i % 3 == 1 and n == 1:
            return Reply(status=429, body=RATE, headers={"retry-after-ms": "10"})
        if i % 3 == 2 and n <= 2:
            return Reply(status=500, body={"error": {"message": "boom"}})
        if i % 10 == 0:
            return answer(request, modality={"evidence": "a quote the paper never says"})
        return answer(request)

    with fault_server(route=route) as srv:
        report = annotate_on_ray(
            db_path, model="fake-model", base_url=srv.url, shard_size=16, **FAST
        )
    invalid = {f"Paper {i:03d}: tiny quant" for i in range(0, 60, 10)}
    assert (report.done, report.failed) == (54, 6)
    assert report.throttled == 20 == srv.statuses[429]
    assert srv.statuses[500] == 2 * 20
    failures = rows(
        db_path,
        "SELECT p.title, f.reason, f.attempts, f.retryable FROM annotation_failures f "
        "JOIN papers p USING (paper_id) ORDER BY p.title",
    )
    assert {t for t, *_ in failures} == invalid
    for _, reason, attempts, retryable in failures:
        assert "evidence" in reason and attempts == 3 and not retryable
    # Every attempt is a call row: a 429 or two 500s first, then each ask's answer.
    statuses = rows(
        db_path,
        "SELECT p.title, list(c.status ORDER BY c.started_at) FROM llm_calls c "
        "JOIN papers p USING (paper_id) GROUP BY p.title ORDER BY p.title",
    )
    assert len(statuses) == 60
    for title, seen in statuses:
        i = int(title[6:9])
        faults = {0: [], 1: [429], 2: [500, 500]}[i % 3]
        assert seen == faults + [200] * (3 if title in invalid else 1), title


def _driver(db: Path, url: str, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(PAPERTAG, "--db", str(db), "annotate", "-a", "llm", "--model", "fake-model"),
            *("--base-url", url, "--engine", "ray", "--ray-address", address),
            # Room for every request of the two shards an actor has at once, so that the
            # waiting shards never hold up the others' requests.
            *("--shard-size", "20", "--concurrency", "100"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **RAY_ENV, "COLUMNS": "200"},
    )


def test_a_killed_driver_resumes_without_redoing_finished_shards(
    cluster: str, tmp_path: Path, db_path: Path
) -> None:
    papers(db_path, tmp_path, 100)
    papers(db_path, tmp_path, 200, start=100, name="later")
    inputs = db_path.with_name(db_path.name + ".ray") / "in"

    # The second hundred wait at the server until the driver is killed.
    hold = [True]

    def route(request: dict[str, Any], n: int) -> Reply:
        return Reply(delay=300, body={}) if hold[0] and number(request) >= 100 else answer(request)

    with fault_server(route=route) as srv:
        driver = _driver(db_path, srv.url, cluster)
        try:
            # A shard's input file goes once its results are in the database: wait for two.
            while not (inputs.is_dir() and len(list(inputs.glob("*.parquet"))) <= 8):
                assert driver.poll() is None, driver.communicate()
                time.sleep(0.05)
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.communicate(timeout=60)
            hold[0] = False
        with Store(db_path) as s:
            killed = s.con.execute("SELECT paper_id FROM annotations").fetchall()
        again = _driver(db_path, srv.url, cluster)
        out, errors = again.communicate(timeout=300)
        asked = dict(srv.asked)
    assert again.returncode == 0, errors
    assert len(killed) >= 40 and len(killed) % 20 == 0
    assert f"annotated {200 - len(killed)}, skipped {len(killed)}" in out
    with Store(db_path) as s:
        assert (
            s.scalar("SELECT count(DISTINCT paper_id) FROM annotations")
            == s.scalar("SELECT count(*) FROM annotations")
            == 200
        )
        # One answer per paper, each stored once.
        assert s.scalar("SELECT count(*) FROM llm_calls WHERE status = 200") == 200
        assert s.scalar("SELECT count(*) - count(DISTINCT call_uid) FROM llm_call_rows") == 0
        titles = dict(s.con.execute("SELECT paper_id, title FROM papers").fetchall())
    # What the killed run stored was not asked again.
    assert all(asked[titles[pid]] == 1 for (pid,) in killed)
    assert not inputs.parent.exists()


def test_finished_shards_left_by_a_killed_run_load_exactly_once(
    cluster: str, tmp_path: Path
) -> None:
    """A run killed after a shard's files were written: before the load (they are loaded)
    or after it (they are only deleted)."""
    done, fresh = tmp_path / "done.duckdb", tmp_path / "fresh.duckdb"
    for db in (done, fresh):
        papers(db, tmp_path, 30)
    with fault_server() as srv:
        annotate_on_ray(done, model="fake-model", base_url=srv.url, shard_size=30)
        # The shard as the run wrote it: its rows, read back from the database.
        tables = {}
        with Store(done) as s:
            for name in TABLES:
                cut = " EXCLUDE (call_id)" if name == "llm_call_rows" else ""
                sql = f"SELECT *{cut} FROM {name}"
                tables[name] = s.con.sql(sql).to_arrow_table()
        for db in (done, fresh):
            WorkDir(db).write_output("killed-000000", tables)
        asked = srv.calls
        reports = [
            annotate_on_ray(db, model="fake-model", base_url=srv.url, shard_size=30)
            for db in (done, fresh)
        ]
        assert srv.calls == asked, reports  # neither asked again
    assert [(r.done, r.skipped) for r in reports] == [(0, 30), (30, 0)]
    for db in (done, fresh):
        assert len(rows(db, ANNOTATIONS)) == 30 and len(rows(db, CALLS)) == 30
        assert not db.with_name(db.name + ".ray").exists()


def test_other_commands_use_the_database_during_a_ray_run_but_not_a_second_run(
    cluster: str, tmp_path: Path, db_path: Path
) -> None:
    """At each shard loaded (the run's progress callback), another process reads the
    database, and a second annotate run is refused at once, naming this one."""
    papers(db_path, tmp_path, 40)
    looks: list[subprocess.CompletedProcess[str]] = []
    second: list[subprocess.CompletedProcess[str]] = []

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PAPERTAG, "--db", str(db_path), *args], capture_output=True, text=True, timeout=120
        )

    def progress(report: Any) -> None:
        looks.append(cli("sql", "SELECT count(*) AS n FROM annotations", "--format", "csv"))
        if not second:
            second.append(cli("annotate", "-a", "rules"))

    with fault_server() as srv:
        report = annotate_on_ray(
            db_path, model="fake-model", base_url=srv.url, shard_size=10, on_progress=progress
        )
    assert report.done == 40 and report.unstored == 0
    assert len(looks) == 4
    stored = []
    for look in looks:
        assert look.returncode == 0, look.stderr
        stored.append(int(look.stdout.splitlines()[1]))
    # Each look sees the shards loaded so far: one more each time.
    assert stored == [10, 20, 30, 40]
    (refused,) = second
    assert refused.returncode == 1 and "another `papertag annotate` run" in refused.stderr
    assert rows(db_path, "SELECT count(*) FROM annotations WHERE annotator = 'rules'") == [(0,)]
