"""Benchmark: `annotate --engine ray` against the local engine, on the same server.

5,000 papers (the shared digests' abstracts, copied), a local OpenAI-compatible server
(tests/fault_server.py) answering after 0.2 s, and the same total concurrency for both
engines: --concurrency 32 in one process, and 2 Ray actors of 16 each. Prints, for each
engine, papers/s for the whole run (reading the pending papers to the last commit; the
Ray figure includes writing the Parquet shards, starting the actors, and loading), the
Ray engine's overhead against the local one (target: within 30%, so that machines added
to a cluster add throughput), the time to start the local Ray runtime (once per cluster,
not per run: outside the run's figure), and the time to load 5,000 papers' finished
shards into DuckDB in one writer.

On 2 cores the Ray engine cannot win: its actors and the driver share the cores that the
local engine has to itself.

    .venv/bin/python bench/ray.py [--papers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Ray reads these as it is imported: its processes talk over 127.0.0.1, and send no report.
os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"})

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is called ray.py: its own folder must not stand in for the ray package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

from bench.common import write_copies  # noqa: E402
from tests.fault_server import FaultServer  # noqa: E402

import ray  # noqa: E402
from papertag.annotate import annotate_papers  # noqa: E402
from papertag.annotate.ray_engine import annotate_on_ray  # noqa: E402
from papertag.annotate.shards import WorkDir  # noqa: E402
from papertag.annotate.writer import TABLES  # noqa: E402
from papertag.db import Store  # noqa: E402

CONCURRENCY = 32
ACTORS = 2
SHARD = 125
LATENCY = 0.2


def shards_of(db: Path, into: Path, n: int) -> None:
    """The Ray run's rows, cut into the shards it wrote, left in ``into``'s work directory
    as a killed run leaves them (to time the load alone)."""
    with Store(db) as store:
        ids = [
            r[0]
            for r in store.con.execute("SELECT paper_id FROM papers ORDER BY paper_id").fetchall()
        ]
        for i, start in enumerate(range(0, n, SHARD)):
            part = ids[start : start + SHARD]
            store.con.execute("CREATE OR REPLACE TEMP TABLE part AS SELECT unnest(?) AS id", [part])
            tables = {}
            for name in TABLES:
                cut = " EXCLUDE (call_id)" if name == "llm_call_rows" else ""
                where = (
                    "annotation_id IN (SELECT annotation_id FROM annotations WHERE paper_id IN "
                    "(SELECT id FROM part))"
                    if name == "annotation_labels"
                    else "paper_id IN (SELECT id FROM part)"
                )
                tables[name] = store.con.sql(
                    f"SELECT *{cut} FROM {name} WHERE {where}"
                ).to_arrow_table()
            WorkDir(into).write_output(
                f"bench-{i:06d}", {k: v for k, v in tables.items() if v.num_rows}
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--papers", type=int, default=5_000)
    n = ap.parse_args().papers
    settings = {"model": "fake-model", "concurrency": CONCURRENCY}
    with tempfile.TemporaryDirectory() as tmp:
        local, on_ray, load = (Path(tmp) / f"{name}.duckdb" for name in ("local", "ray", "load"))
        for db in (local, on_ray, load):
            write_copies(db, n)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        try:
            srv = FaultServer(latency=LATENCY, keep_requests=False).start()
            try:
                local_report = annotate_papers(local, "llm", base_url=srv.url, **settings)
                ray_report = annotate_on_ray(
                    on_ray, base_url=srv.url, actors=ACTORS, shard_size=SHARD, **settings
                )
            finally:
                srv.stop()
        finally:
            ray.shutdown()
        assert local_report.done == ray_report.done == n, (local_report, ray_report)
        shards_of(on_ray, load, n)
        t0 = time.perf_counter()
        loaded = annotate_on_ray(load, base_url="http://127.0.0.1:9/v1", **settings)
        load_seconds = time.perf_counter() - t0
        assert loaded.done == n and loaded.calls == n, loaded
    local_rate = n / local_report.seconds
    ray_rate = n / ray_report.seconds
    ideal = CONCURRENCY / LATENCY
    print(
        f"{n:,} papers, {LATENCY} s a call, {CONCURRENCY} requests in flight ({ideal:.0f}/s at best)"
    )
    print(f"local engine: {local_rate:6.1f} papers/s ({local_report.seconds:.1f} s)")
    print(
        f"ray engine:   {ray_rate:6.1f} papers/s ({ray_report.seconds:.1f} s; {ACTORS} actors x "
        f"{CONCURRENCY // ACTORS}, shards of {SHARD})"
    )
    print(
        f"ray overhead: {local_rate / ray_rate - 1:+.0%} time against the local engine "
        "(target: within 30%)"
    )
    print(f"Ray runtime start (once per cluster, not in the figure above): {ray_start:.1f} s")
    print(
        f"DuckDB load of {n:,} papers' shards, one writer: {load_seconds:.2f} s ({n / load_seconds:,.0f} papers/s)"
    )


if __name__ == "__main__":
    main()
