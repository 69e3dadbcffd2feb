"""Benchmark: the rules annotator end to end (annotate -> validate -> store).

Builds a database of N papers (default 10,000) from the real digests' abstracts,
repeated under distinct titles, then times ``papertag.annotate`` with the rules
annotator on one core. Target: at least 2,000 papers/s.

    .venv/bin/python bench/annotate.py [--n 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from papertag.annotate import annotate_papers
from papertag.annotators import get_annotator
from papertag.db import Store
from papertag.ingest import Entry, FileReport, parse_file, write_entries

ROOT = Path(__file__).resolve().parents[1]
DIGESTS = sorted((ROOT.parent / "shared" / "digests").glob("*.txt"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    base = [e for path in DIGESTS for e in parse_file(path).entries]
    entries = [
        Entry(i + 1, None, f"{base[i % len(base)].title} (copy {i})", base[i % len(base)].abstract)
        for i in range(args.n)
    ]
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.duckdb") as store:
        write_entries(store, entries, digest=None, report=FileReport(path="synthetic"))
        t0 = time.perf_counter()
        annotator = get_annotator("rules")  # compiles the taxonomy's patterns once per process
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = annotate_papers(store, annotator)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = annotate_papers(store, "rules")
        second = time.perf_counter() - t0
        labels = store.scalar("SELECT count(*) FROM annotation_labels")
    print(
        f"rules annotator, {args.n:,} papers ({len(base)} distinct abstracts repeated), one process"
    )
    print(
        f"  annotate+validate+store: {report.done:,} done, {report.failed} failed in {first:.2f}s "
        f"= {report.done / first:,.0f} papers/s (target >= 2,000); {labels:,} label rows"
    )
    print(f"  start-up (load and compile the taxonomy, not in the rate above): {startup:.2f}s")
    print(f"  second run (nothing to do): {again.skipped:,} skipped in {second:.2f}s")


if __name__ == "__main__":
    main()
