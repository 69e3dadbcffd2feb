"""What the benchmarks share: the shared digests as a database of any size, a process's
memory as the kernel reports it, and a measurement run in a fresh process.

Imported as ``bench.common``: a benchmark puts the repository's root on ``sys.path``
(bench/ray.py must keep its own folder off it, where ray.py would stand in for Ray).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DIGESTS = sorted((ROOT.parent / "shared" / "digests").glob("*.txt"))


def write_copies(path: Path, n: int) -> int:
    """A database of ``n`` papers: the digests' abstracts repeated under distinct titles.
    Returns the number of distinct abstracts."""
    # Imported here: the children of bench/ingest.py and bench/learned.py import this module
    # for its memory figures alone, and time their own imports.
    from papertag.db import Store
    from papertag.ingest import Entry, FileReport, parse_file, write_entries

    base = [e for p in DIGESTS for e in parse_file(p).entries]
    entries = [
        Entry(i + 1, None, f"{base[i % len(base)].title} (copy {i})", base[i % len(base)].abstract)
        for i in range(n)
    ]
    with Store(path) as store:
        write_entries(store, entries, digest=None, report=FileReport(path="synthetic"))
    return len(base)


def status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc (Linux), in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS of this process. getrusage's ru_maxrss is the number to use, except that on
    Linux a child keeps its parent's value from the fork (a benchmark's parent may hold
    large inputs), so the kernel's high-water mark of the process's own memory, VmHWM, is
    preferred where it exists."""
    hwm = status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def counts(text: str) -> list[int]:
    """An option's comma-separated numbers of papers: ``--sizes 10000,20000``."""
    return [int(x) for x in text.split(",")]


def in_child(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh process, so that its memory figures are its
    own, and return the JSON object its last line of output prints."""
    out = subprocess.run(
        [sys.executable, script, *args], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result
