"""Benchmark: `papertag annotate --annotator llm` against a local OpenAI-compatible server.

The server (tests/fault_server.py, an asyncio HTTP server) runs in this process;
papertag runs as the command a user types, in its own process, and each figure
times the whole command. Four figures, each printed with its target:

1. own overhead: zero latency, end to end (annotate -> validate -> store); no target
   here (one paper a call through the plain client: the 500 papers/s goal belongs to
   calls that carry several papers);
2. concurrency: 0.2 s latency, --concurrency 32, 2,000 papers, vs 32 / 0.2 = 160/s
   (target: 80% of it, in one process);
   (1 and 2: the median of three runs, each run's figures printed too)
3. rate limit: the server allows 600 requests/min and papertag is not told:
   share of the limit used and share of requests answered 429, with the server
   advertising its limit in x-ratelimit-* headers and without any header;
4. crash: runs killed with SIGKILL at random moments, then resumed: every paper
   annotated exactly once; requests repeated vs requests in flight at the kills (sent,
   but their answers not yet recorded in the database or the journal).

    .venv/bin/python bench/llm.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fault_server import FaultServer  # noqa: E402

from papertag.annotate.journal import Journal  # noqa: E402
from papertag.db import Store  # noqa: E402
from papertag.ingest import Entry, FileReport, parse_file, write_entries  # noqa: E402

DIGESTS = sorted((ROOT.parent / "shared" / "digests").glob("*.txt"))
PAPERTAG = str(Path(sys.executable).with_name("papertag"))
#: time.monotonic() when the last command started (the server's clock, for start-up).
started_at = 0.0


def make_db(path: Path, n: int) -> None:
    base = [e for p in DIGESTS for e in parse_file(p).entries]
    entries = [
        Entry(i + 1, None, f"{base[i % len(base)].title} (copy {i})", base[i % len(base)].abstract)
        for i in range(n)
    ]
    with Store(path) as store:
        write_entries(store, entries, digest=None, report=FileReport(path="synthetic"))


def annotate_cmd(db: Path, url: str, *extra: str) -> list[str]:
    return [
        PAPERTAG,
        "--db",
        str(db),
        "annotate",
        "--annotator",
        "llm",
        "--model",
        "fake-model",
        "--base-url",
        url,
        *extra,
    ]


def run(cmd: list[str]) -> float:
    global started_at
    t0 = started_at = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PAPERTAG_"))}


def count(db: Path, sql: str) -> int:
    with Store(db, read_only=True) as s:
        return int(s.scalar(sql))


def line(name: str, value: str, target: str, ok: bool) -> None:
    print(f"  {name:<44} {value:<34} target {target:<22} {'ok' if ok else 'MISSED'}")


def timed_run(tmp: Path, name: str, n: int, latency: float) -> tuple[float, float, float]:
    """One whole `annotate --concurrency 32` command on a new database of n papers:
    (papers/s, seconds to the first request, seconds after the last answer)."""
    db = tmp / f"{name}.duckdb"
    db.unlink(missing_ok=True)
    make_db(db, n)
    with FaultServer(latency=latency, keep_requests=False).start() as srv:
        seconds = run(annotate_cmd(db, srv.url, "--concurrency", "32"))
        startup = (srv.first_at or started_at) - started_at
        tail = started_at + seconds - (srv.last_at or started_at)
    done = count(db, "SELECT count(*) FROM annotations")
    if done != n:
        sys.exit(f"{name}: {done} of {n} papers annotated")
    return done / seconds, startup, tail


def repeated(tmp: Path, name: str, n: int, latency: float, runs: int) -> tuple[float, str]:
    """The median rate of `runs` runs (this machine's speed drifts by a fifth from minute
    to minute), with every run's figures for the record."""
    results = [timed_run(tmp, name, n, latency) for _ in range(runs)]
    rates = sorted(r[0] for r in results)
    detail = "; ".join(
        f"{rate:,.1f}/s, first request {first:.2f}s, exit {tail:.2f}s after the last answer"
        for rate, first, tail in results
    )
    return statistics.median(rates), f"{runs} runs: {detail}"


def bench_overhead(tmp: Path, n: int, runs: int) -> None:
    rate, detail = repeated(tmp, "overhead", n, 0.0, runs)
    line(
        f"1. own overhead, zero latency, {n} papers",
        f"{rate:,.0f} papers/s (median)",
        "none (informative)",
        True,
    )
    print(f"     ({detail})")


def bench_concurrency(tmp: Path, n: int, runs: int) -> None:
    rate, detail = repeated(tmp, "concurrency", n, 0.2, runs)
    share = rate / 160
    line(
        f"2. latency 0.2s, --concurrency 32, {n} papers",
        f"{rate:,.1f} papers/s = {share:.0%} of 160 (median)",
        ">= 80% of 160",
        share >= 0.8,
    )
    print(f"     ({detail})")


def bench_rate_limit(tmp: Path, n: int, headers: bool) -> None:
    db = tmp / f"ratelimit-{headers}.duckdb"
    make_db(db, n)
    with FaultServer(
        latency=0.2, rpm=600, rate_headers=headers, retry_after_header=headers, keep_requests=False
    ).start() as srv:
        run(annotate_cmd(db, srv.url, "--concurrency", "16"))
        span = (srv.last_at or 0) - (srv.first_at or 0)
        ok = srv.statuses[200]
        throttled = srv.statuses[429]
        total = srv.count
    used = ok / (span / 60 * 600) if span else 0.0
    share = throttled / total if total else 0.0
    what = "x-ratelimit headers" if headers else "no headers, bare 429s"
    line(
        f"3. 600 rpm limit, {what}: limit used",
        f"{used:.1%} ({ok} ok in {span:.1f}s)",
        ">= 90%",
        used >= 0.9,
    )
    line(
        "   ... requests answered 429",
        f"{share:.1%} ({throttled} of {total})",
        "< 5%",
        share < 0.05,
    )


def recorded_requests(db: Path) -> set[str]:
    """Hashes of the requests whose answers papertag has recorded: in the database or in
    the crash journal a killed run leaves beside it."""
    with Store(db, read_only=True) as s:
        rows = s.con.execute(
            "SELECT request_hash FROM llm_call_rows WHERE response_body IS NOT NULL"
        ).fetchall()
    journaled = Journal(db).read()
    return {r[0] for r in rows} | {
        r["request_hash"] for r in journaled if r.get("response_body") is not None
    }


def bench_crash(tmp: Path, n: int, kills: int) -> None:
    db = tmp / "crash.duckdb"
    make_db(db, n)
    rng = random.Random(1)
    repeated_at_kill = in_flight_at_kill = 0
    with FaultServer(latency=0.2, keep_requests=False).start() as srv:
        for _ in range(kills):
            before = dict(srv.bodies)
            proc = subprocess.Popen(
                annotate_cmd(db, srv.url, "--concurrency", "16"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_env(),
            )
            # Past start-up (about a second), into the run.
            time.sleep(rng.uniform(1.2, 3.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # In flight at the kill: requests this run sent whose answers papertag had not
            # recorded (in the database or its journal) when it died.
            sent = {h[:16] for h, c in srv.bodies.items() if c > before.get(h, 0)}
            in_flight_at_kill += len(sent - recorded_requests(db))
        run(annotate_cmd(db, srv.url, "--concurrency", "16"))
        repeated_at_kill = sum(c - 1 for c in srv.bodies.values() if c > 1)
    papers = count(db, "SELECT count(*) FROM papers")
    annotated = count(db, "SELECT count(DISTINCT paper_id) FROM annotations")
    dupes = count(
        db,
        "SELECT count(*) FROM (SELECT paper_id, content_hash, annotator, model, prompt_version, "
        "taxonomy_version FROM annotations GROUP BY ALL HAVING count(*) > 1)",
    )
    replayed = count(db, "SELECT count(*) FROM llm_calls WHERE replay_of IS NOT NULL")
    exact = annotated == papers and dupes == 0
    line(
        f"4. {kills} kill -9s then resume: papers annotated once",
        f"{annotated}/{papers}, {dupes} duplicated",
        "all, 0 duplicated",
        exact,
    )
    line(
        "   ... requests repeated vs in flight at kills",
        f"{repeated_at_kill} repeated, {in_flight_at_kill} in flight",
        "repeated <= in flight",
        repeated_at_kill <= in_flight_at_kill,
    )
    print(
        f"     ({replayed} answers paid for before a kill were replayed from the journal, not asked again)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="smaller runs (a smoke test, not the figures)"
    )
    args = ap.parse_args()
    q = args.quick
    print(
        f"LLM annotator against a local OpenAI-compatible server, {os.cpu_count()} cores; whole commands timed"
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        runs = 1 if q else 3
        bench_overhead(t, 300 if q else 3000, runs)
        bench_concurrency(t, 300 if q else 2000, runs)
        bench_rate_limit(t, 60 if q else 400, headers=True)
        bench_rate_limit(t, 60 if q else 400, headers=False)
        bench_crash(t, 200 if q else 1000, 2 if q else 5)


if __name__ == "__main__":
    main()
