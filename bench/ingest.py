"""Benchmark: ingest of synthetic digests, speed and peak memory.

Generates N synthetic digest entries (default 100,000) as JSONL and as Hugging
Face page text in a temporary directory: distinct titles, abstracts of 1,000 to
1,500 characters assembled from sentences of the real digests in ../shared. Then,
for each format and for N/4 and N entries, it measures

* ingest into a new database, and
* a repeat ingest of the same file, which must add nothing,

each in a fresh process, so that peak RSS (``resource.getrusage``) belongs to that
phase alone. Peak Python heap (``tracemalloc``) is measured in separate runs,
since tracing slows Python down. Target: at least 20,000 papers/s, and memory that
does not grow with the input beyond a bounded batch.

First, the real-world case: many small files, as a day of the daily-papers API each
(600 files of 16 papers; 580 real days took 44 s one file at a time). The whole
``papertag ingest`` command is timed, start to exit, into a new database and again
(adding nothing); target: at least 5,000 papers/s for the whole command.

    .venv/bin/python bench/ingest.py [--n 100000] [--no-trace] [--keep DIR]
    .venv/bin/python bench/ingest.py --only-many [--files 600] [--per-file 16]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import DIGESTS, counts, in_child, peak_rss_mb, status_mb  # noqa: E402

#: A real answer of the daily-papers API (current schema): the shape of every generated day.
API_SAMPLE = ROOT.parent / "shared" / "samples" / "hf_daily_papers_api_2026-08-21.json"
TARGET = 20_000
#: Papers a second for the whole `papertag ingest` command on many daily API files.
MANY_TARGET = 5_000


# --------------------------------------------------------------------------- data
def _corpus() -> tuple[list[str], list[str]]:
    """Sentences and title words of the real digests."""
    from papertag.ingest import parse_file

    sentences: list[str] = []
    words: set[str] = set()
    for path in DIGESTS:
        for e in parse_file(path).entries:
            sentences += [s for s in re.split(r"(?<=[.!?])\s+", e.abstract) if 40 <= len(s) <= 400]
            words.update(w for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", e.title))
    return sentences, sorted(words)


def _name(i: int) -> str:
    """A distinct pronounceable word per number, so every title (and title key) differs."""
    syllables = ["ka", "ro", "ven", "ti", "mal", "su", "dex", "no", "pra", "lu", "zen", "qua"]
    out = ""
    i += 1
    while i:
        i, r = divmod(i, len(syllables))
        out += syllables[r]
    return out.capitalize()


def generate(n: int, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    sentences, words = _corpus()
    entries = []
    for i in range(n):
        target = rng.randint(1_000, 1_500)
        parts: list[str] = []
        size = 0
        while size < target:
            s = rng.choice(sentences)
            parts.append(s)
            size += len(s) + 1
        abstract = " ".join(parts)[:target].rstrip() + "."
        title_words = rng.sample(words, rng.randint(5, 10))
        title = f"{_name(i)}: {' '.join(title_words).capitalize()}"
        arxiv = f"{23 + i // 1_200_000}{(i // 100_000) % 12 + 1:02d}.{i % 100_000:05d}"
        entries.append({"title": title, "abstract": abstract, "arxiv_id": arxiv})
    return entries


def write_jsonl(path: Path, entries: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for e in entries:
            fh.write(json.dumps(e, ensure_ascii=False) + "\n")


def write_page_text(path: Path, entries: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write("new\n\nGet trending papers in your email inbox!\n\nSubscribe\n\n")
        fh.write("byAK and the research community\n\nMar 11\n\n")
        for e in entries:
            fh.write(f"{e['title']}\n\n{e['abstract']}\n\n")


def write_api_days(folder: Path, entries: list[dict[str, str]], per_file: int) -> list[Path]:
    """One file per day in the daily-papers API's shape: each item is an item of the real
    sample (authors, upvotes, keywords, organisation...) with its paper's id, title,
    abstract and listing day replaced by a generated entry's, pretty-printed as HF's
    archives are."""
    items = json.loads(API_SAMPLE.read_text(encoding="utf-8"))
    paths = []
    first = date(2024, 1, 1)
    for start in range(0, len(entries), per_file):
        day = first + timedelta(days=start // per_file)
        stamp = f"{day.isoformat()}T00:00:00.000Z"
        body = []
        for k, e in enumerate(entries[start : start + per_file]):
            item = copy.deepcopy(items[k % len(items)])
            item["paper"].update(
                id=e["arxiv_id"], title=e["title"], summary=e["abstract"], submittedOnDailyAt=stamp
            )
            item.update(title=e["title"], summary=e["abstract"])
            body.append(item)
        path = folder / f"hf_daily_papers_{day.isoformat()}.json"
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False), encoding="utf-8")
        paths.append(path)
    return paths


def run_command(args: list[str]) -> dict[str, Any]:
    """Run a `papertag` command as a user would, timed from start to exit; its own peak
    RSS and CPU time from the kernel (wait4), whatever its parent holds."""
    exe = Path(sys.executable).with_name("papertag")
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(exe), *args], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"papertag {args[:3]}... failed ({proc.returncode}):\n{text}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "output": text.strip().splitlines()[-1],
    }


def many_files(tmp: Path, files: int, per_file: int) -> None:
    """The whole `papertag ingest` command on many small daily API files."""
    n = files * per_file
    entries = generate(n, seed=11)
    folder = tmp / "api-days"
    folder.mkdir(exist_ok=True)
    paths = write_api_days(folder, entries, per_file)
    size = sum(p.stat().st_size for p in paths) / 2**20
    print(f"many files: {files} daily API files of {per_file} papers ({n:,} papers, {size:.0f} MB)")
    rows = []
    # Three runs of each phase (this machine's speed drifts from minute to minute); each
    # new-database run into a database of its own, the repeats into the last of them.
    for phase in ("new db", "repeat"):
        want = f"{files} files read: " + (
            f"{n} new papers, 0 updated, {n} new links, 0 unchanged, 0 failed"
            if phase == "new db"
            else f"0 new papers, 0 updated, 0 new links, {n} unchanged, 0 failed"
        )
        for run in range(3):
            db = tmp / f"many-{run if phase == 'new db' else 2}.duckdb"
            r = run_command(["--db", str(db), "ingest", *map(str, paths)])
            assert r["output"] == want, r["output"]
            rows.append((phase, r))
    print(f"\n{'phase':<7} {'seconds':>8} {'papers/s':>9} {'cpu s':>6} {'peak RSS':>9}")
    for phase, r in rows:
        print(
            f"{phase:<7} {r['seconds']:>8.2f} {n / r['seconds']:>9,.0f} {r['cpu_seconds']:>6.2f} "
            f"{r['peak_rss_mb']:>6,.0f} MB"
        )
    runs = sorted(n / r["seconds"] for phase, r in rows if phase == "new db")
    rate = runs[1]
    print(
        f"\nmany files, whole command into a new database (median of 3): {rate:,.0f} papers/s "
        f"(runs: {', '.join(f'{x:,.0f}' for x in runs)}; "
        f"{'meets' if rate >= MANY_TARGET else 'BELOW'} the {MANY_TARGET:,} papers/s target); "
        "seconds from start to exit of `papertag ingest`, cpu s its CPU time (all threads), "
        "peak RSS its own\n"
    )


# -------------------------------------------------------------------- one phase
def child(path: str, db: str, trace: bool, memory_limit: str | None) -> dict[str, Any]:
    """Runs in its own process: one ingest of one file, measured (opening, writing and
    closing the database, as `papertag ingest` does)."""
    import tracemalloc

    import duckdb

    from papertag.db import Store
    from papertag.ingest import ingest_digests

    # DuckDB imports pandas, where it is installed (the dev venv, not a user's), on the first
    # query with parameters: a third of a second that is not ingest's. Paid here, untimed.
    duckdb.connect().execute("SELECT ?", [1]).fetchall()

    baseline = status_mb("VmRSS") or float("nan")
    if trace:
        tracemalloc.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with Store(db) as store:
        if memory_limit:
            store.con.execute("SET memory_limit = ?", [memory_limit])
        report = ingest_digests([path], store)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    heap = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    if not report.ok:
        raise SystemExit(report.failed[0].error)
    fr = report.files[0]
    return {
        "entries": fr.entries,
        "new_papers": fr.new_papers,
        "new_links": fr.new_links,
        "unchanged": fr.unchanged,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_heap_mb": heap,
    }


def run_phase(
    path: Path, db: Path, *, trace: bool = False, memory_limit: str | None = None
) -> dict[str, Any]:
    args = ["--child", str(path), str(db)]
    args += ["--trace"] if trace else []
    args += ["--memory-limit", memory_limit] if memory_limit else []
    return in_child(__file__, *args)


# -------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="entries (default 100,000)")
    ap.add_argument(
        "--sizes",
        type=counts,
        help="entry counts to measure, comma-separated (default: N/4,N)",
    )
    ap.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="DuckDB memory_limit for the runs, e.g. 300MB (default: DuckDB's, 80%% of RAM); "
        "caps DuckDB's cache of written blocks",
    )
    ap.add_argument("--no-trace", action="store_true", help="skip the tracemalloc runs")
    ap.add_argument("--files", type=int, default=600, help="many-files case: files (default 600)")
    ap.add_argument(
        "--per-file", type=int, default=16, help="many-files case: papers a file (default 16)"
    )
    ap.add_argument("--only-many", action="store_true", help="run the many-files case alone")
    ap.add_argument("--keep", type=Path, help="write the files and databases here and keep them")
    ap.add_argument("--child", nargs=2, metavar=("FILE", "DB"), help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, trace=args.trace, memory_limit=args.memory_limit)))
        return

    sizes = sorted(set(args.sizes or [max(1, args.n // 4), args.n]))
    args.n = max(sizes)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        many_files(tmp, args.files, args.per_file)
        if args.only_many:
            return
        t0 = time.perf_counter()
        entries = generate(args.n)
        files: dict[tuple[str, int], Path] = {}
        for size in sizes:
            for fmt, writer, ext in (
                ("jsonl", write_jsonl, "jsonl"),
                ("page-text", write_page_text, "txt"),
            ):
                path = tmp / f"digest-{size}.{ext}"
                writer(path, entries[:size])
                files[fmt, size] = path
        mean = sum(len(e["abstract"]) for e in entries) / len(entries)
        print(
            f"generated {args.n:,} entries (abstracts {mean:,.0f} chars on average, "
            f"{len({e['title'] for e in entries}):,} distinct titles) in "
            f"{time.perf_counter() - t0:.1f}s; files: "
            + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.0f} MB" for p in files.values())
        )
        del entries
        rows = []
        for (fmt, size), path in files.items():
            db = tmp / f"{fmt}-{size}.duckdb"
            new = run_phase(path, db, memory_limit=args.memory_limit)
            again = run_phase(path, db, memory_limit=args.memory_limit)
            assert new["new_papers"] == size and new["new_links"] == size, new
            assert again["new_papers"] == again["new_links"] == 0, again
            assert again["unchanged"] == size, again
            heaps: list[Any] = [None, None]
            if not args.no_trace:
                tdb = tmp / f"{fmt}-{size}-traced.duckdb"
                heaps = [
                    run_phase(path, tdb, trace=True, memory_limit=args.memory_limit)["peak_heap_mb"]
                    for _ in range(2)
                ]
            rows.append((fmt, size, "new db", new, heaps[0]))
            rows.append((fmt, size, "repeat", again, heaps[1]))
        _print_table(rows)
        best = min(r[3]["entries"] / r[3]["seconds"] for r in rows if r[1] == args.n)
        print(
            f"\nslowest at {args.n:,} entries: {best:,.0f} papers/s "
            f"({'meets' if best >= TARGET else 'BELOW'} the {TARGET:,} papers/s target)"
        )


def _print_table(rows: list[tuple[str, int, str, dict[str, Any], Any]]) -> None:
    head = (
        f"\n{'format':<10} {'entries':>8} {'phase':<7} {'seconds':>8} {'papers/s':>9} {'cpu s':>6} "
        f"{'new':>7} {'unchanged':>9} {'peak RSS':>9} {'RSS base':>9} {'py heap':>8}"
    )
    print(head)
    print("-" * (len(head) - 1))
    for fmt, size, phase, r, heap in rows:
        heap_s = f"{heap:,.0f} MB" if heap is not None else "-"
        print(
            f"{fmt:<10} {size:>8,} {phase:<7} {r['seconds']:>8.2f} "
            f"{r['entries'] / r['seconds']:>9,.0f} {r['cpu_seconds']:>6.2f} "
            f"{r['new_papers']:>7,} {r['unchanged']:>9,} "
            f"{r['peak_rss_mb']:>6,.0f} MB {r['baseline_rss_mb']:>6,.0f} MB {heap_s:>8}"
        )
    print(
        "\ncpu s: CPU time of the process (all threads; DuckDB uses several), a check when the "
        "machine is shared;\npeak RSS: the whole process (Python, pyarrow, DuckDB) at its highest "
        "(VmHWM; getrusage's ru_maxrss where /proc is missing); RSS base: after imports;"
        "\npy heap: tracemalloc peak of Python allocations during ingest (separate run). "
        "Each phase runs in a fresh process."
    )


if __name__ == "__main__":
    main()
