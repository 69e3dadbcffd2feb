"""Benchmark: the learned annotator, annotating and training, and its memory.

Three measurements:

a. Annotate: a database of N papers (default 10,000) built from the real digests'
   abstracts under distinct titles (as ``bench/annotate.py`` does), annotated by
   ``papertag.annotate`` with the shipped learned model (``default``): featurize,
   predict, quote evidence, validate, store in DuckDB. Target: at least 5,000 papers/s.
b. Train: ``training.fit`` on the shared silver set (2,240 papers), as ``make model`` does,
   with the default settings, 5-fold cross-validation included. Target: under 60 s.
   The steps (features, folds, calibration, final fit) are timed through ``on_step``.
c. Memory: peak RSS (VmHWM) of a fresh process annotating N and 2N papers (the sizes are
   options). Target: memory that does not grow with the number of papers annotated
   beyond a bounded batch. Also shown: RSS after the imports and model load, and when
   the run has read its list of papers to do (``on_start``).

The annotate runs of (a) and (c) are the same: one fresh process per size, each on a
database written beforehand by this process, so that the figures belong to annotating.

    .venv/bin/python bench/learned.py [--n 10000] [--sizes 10000,20000] [--no-train]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import counts, in_child, peak_rss_mb, status_mb, write_copies  # noqa: E402

SILVER = ROOT.parent / "shared" / "train" / "silver.jsonl"
ANNOTATE_TARGET = 5_000  # papers/s
TRAIN_TARGET = 60.0  # seconds


# -------------------------------------------------------------- annotate (child)
def child(db: str) -> dict[str, Any]:
    """Runs in its own process: load the shipped model, annotate every paper of ``db``."""
    import duckdb

    from papertag.annotate import annotate_papers
    from papertag.annotators import get_annotator
    from papertag.db import Store

    # DuckDB's import of pandas where it is installed (the dev venv): paid here, untimed.
    duckdb.connect().execute("SELECT ?", [1]).fetchall()
    marks: dict[str, float] = {}
    with Store(db) as store:
        t0 = time.perf_counter()
        annotator = get_annotator("learned")  # the shipped model: load, rebuild vectorizers
        startup = time.perf_counter() - t0
        marks["loaded"] = status_mb("VmRSS") or float("nan")

        def on_start(_total: int) -> None:
            marks["started"] = status_mb("VmRSS") or float("nan")

        t0 = time.perf_counter()
        report = annotate_papers(store, annotator, on_start=on_start)
        seconds = time.perf_counter() - t0
        labels = store.scalar("SELECT count(*) FROM annotation_labels")
    return {
        "model": f"{annotator.model} {annotator.prompt_version}",
        "done": report.done,
        "failed": report.failed,
        "seconds": seconds,
        "startup": startup,
        "labels": labels,
        "rss_loaded_mb": marks["loaded"],
        "rss_started_mb": marks.get("started", float("nan")),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(db: Path) -> dict[str, Any]:
    return in_child(__file__, "--child", str(db))


# ------------------------------------------------------------------------- train
def bench_train() -> None:
    from papertag.annotators.learned.sources import examples_from_file, merge
    from papertag.annotators.learned.training import fit
    from papertag.taxonomy import load_taxonomy

    tax = load_taxonomy()
    # As `make model` gathers them (`papertag train --from silver`): one example per paper.
    examples = merge([examples_from_file(SILVER, tax)])
    steps: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    model, report = fit(examples, tax, on_step=lambda s: steps.append((s, time.perf_counter())))
    total = time.perf_counter() - t0
    ends = [t for _, t in steps[1:]] + [t0 + total]
    spans = {name: end - start for (name, start), end in zip(steps, ends, strict=True)}
    folds = [v for k, v in spans.items() if k.startswith("fold ")]
    cv = " ".join(f"{f} {v['micro_f1']:.3f}" for f, v in report.cv.items())
    print(
        f"\nb. train: fit on {report.examples:,} papers ({SILVER.name}), "
        f"default settings, {report.folds}-fold CV"
    )
    print(
        f"  total {total:.1f}s (TrainReport.seconds {report.seconds:.1f}s) "
        f"({'meets' if total < TRAIN_TARGET else 'ABOVE'} the < {TRAIN_TARGET:.0f} s target)"
    )
    print(
        f"  steps: features (embedding, rules) {spans.get('features', 0.0):.1f}s; "
        f"{len(folds)} folds {sum(folds):.1f}s ({', '.join(f'{v:.1f}' for v in folds)}); "
        f"calibration {spans.get('calibration', 0.0):.1f}s; "
        f"final fit alone {spans.get('final fit', 0.0):.1f}s"
    )
    print(f"  cross-validated micro-F1: {cv}; model version {model.version}")


# -------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="papers to annotate (default 10,000)")
    ap.add_argument(
        "--sizes",
        type=counts,
        help="paper counts for the memory runs, comma-separated (default: N,2N)",
    )
    ap.add_argument("--no-train", action="store_true", help="skip the training measurement")
    ap.add_argument("--child", metavar="DB", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return

    sizes = sorted(set(args.sizes or [args.n, 2 * args.n]) | {args.n})
    runs: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            db = Path(tmp) / f"bench-{size}.duckdb"
            distinct = write_copies(db, size)
            runs[size] = run_child(db)
            db.unlink()
    a = runs[args.n]
    rate = a["done"] / a["seconds"]
    print(
        f"a. learned annotator (model {a['model']}), {args.n:,} papers "
        f"({distinct} distinct abstracts repeated), fresh process"
    )
    print(
        f"  annotate+validate+store: {a['done']:,} done, {a['failed']} failed in "
        f"{a['seconds']:.2f}s = {rate:,.0f} papers/s; {a['labels']:,} label rows"
    )
    print(
        f"  target >= {ANNOTATE_TARGET:,} papers/s: {rate / ANNOTATE_TARGET:.2f}x the target "
        f"({'meets' if rate >= ANNOTATE_TARGET else 'BELOW'})"
    )
    print(f"  start-up (load the model, not in the rate above): {a['startup']:.2f}s")

    if not args.no_train:
        bench_train()

    print("\nc. memory: one fresh process per size (RSS of the whole process, MB)")
    print(
        f"  {'papers':>8} {'seconds':>8} {'papers/s':>9} {'loaded':>7} {'to do read':>10} "
        f"{'peak':>6} {'peak-to do':>10}"
    )
    for size, r in runs.items():
        print(
            f"  {size:>8,} {r['seconds']:>8.2f} {r['done'] / r['seconds']:>9,.0f} "
            f"{r['rss_loaded_mb']:>7.0f} {r['rss_started_mb']:>10.0f} {r['peak_rss_mb']:>6.0f} "
            f"{r['peak_rss_mb'] - r['rss_started_mb']:>10.0f}"
        )
    lo, hi = runs[sizes[0]], runs[sizes[-1]]
    if len(sizes) > 1:
        per_k = 1000 / (sizes[-1] - sizes[0])
        growth = hi["peak_rss_mb"] - lo["peak_rss_mb"]
        todo = hi["rss_started_mb"] - lo["rss_started_mb"]
        share = growth / lo["peak_rss_mb"]
        verdict = "grows" if share > 0.10 else "stays within 10%"
        print(
            f"  peak RSS {lo['peak_rss_mb']:.0f} MB at {sizes[0]:,} papers, "
            f"{hi['peak_rss_mb']:.0f} MB at {sizes[-1]:,}: {growth:+.0f} MB ({share:+.0%}, "
            f"{growth * per_k:+.1f} MB per 1,000 papers): the peak {verdict}"
        )
        print(
            f"  RSS once the papers to do are read: {todo:+.0f} MB "
            f"({todo * per_k:+.1f} MB per 1,000 papers)"
        )
    print(
        "  loaded: after imports and model load; to do read: when annotate has read the papers "
        "to do\n  (on_start); peak: VmHWM (ru_maxrss where /proc is missing)."
    )


if __name__ == "__main__":
    main()
