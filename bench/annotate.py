"""Benchmark: the rules annotator end to end (annotate -> validate -> store).

Builds a database of N papers (default 10,000) from the real digests' abstracts,
repeated under distinct titles, then times ``papertag.annotate`` with the rules
annotator on one core. Target: at least 2,000 papers/s.

    .venv/bin/python bench/annotate.py [--n 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_copies

from papertag.annotate import annotate_papers
from papertag.annotators import get_annotator
from papertag.db import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        distinct = write_copies(db, args.n)
        with Store(db) as store:
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
        f"rules annotator, {args.n:,} papers ({distinct} distinct abstracts repeated), one process"
    )
    print(
        f"  annotate+validate+store: {report.done:,} done, {report.failed} failed in {first:.2f}s "
        f"= {report.done / first:,.0f} papers/s (target >= 2,000); {labels:,} label rows"
    )
    print(f"  start-up (load and compile the taxonomy, not in the rate above): {startup:.2f}s")
    print(f"  second run (nothing to do): {again.skipped:,} skipped in {second:.2f}s")


if __name__ == "__main__":
    main()
