"""The ``papertag`` command's entry point: start the LLM worker before anything else loads.

``papertag annotate --annotator llm`` makes its calls in a second Python process
(``papertag/annotators/worker.py``), which spends a third of a second importing
the ``openai`` client. Started here, before this process imports papertag and its CLI (a
quarter of a second), that import overlaps all of this process's start-up. The
CLI adopts the worker; if the command turns out not to need it (the guess below
reads the command line before the CLI parses it), it is stopped unused.

Only the standard library is imported here: importing papertag would spend the
time this saves.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

# -c, not -m: what the child pickles (Outcome) must be the worker module's classes, not
# those of a second copy run as __main__. The package is registered without running its
# __init__, whose public API (ingest, evaluate, review, ...) the worker never uses: a
# tenth of a second off every LLM run's start.
_CHILD_MAIN = (
    "import sys, importlib.util as u; s = u.find_spec('papertag'); "
    "sys.modules['papertag'] = u.module_from_spec(s); "
    "from papertag.annotators.worker import main; main()"
)

Spawned = tuple["subprocess.Popen[bytes]", int, int]

#: A worker started by :func:`main`, for the CLI to adopt (:func:`take_prestarted`).
_prestarted: Spawned | None = None


def spawn_worker() -> Spawned:
    """Start the worker process; returns it with this side's ends of its pipes (to, from)."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD_MAIN, str(to_child_r), str(from_child_w)],
        pass_fds=(to_child_r, from_child_w),
        stdin=subprocess.DEVNULL,
        # Its own process group: a Ctrl-C at the terminal reaches only this process,
        # which decides what it means (even while the child is still importing).
        process_group=0,
        # The child finds papertag where this process did (a notebook may have added
        # a source checkout to sys.path), as multiprocessing's spawn does.
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, to_child_w, from_child_r


def take_prestarted() -> Spawned | None:
    """The worker :func:`main` started for this command, once; None if it started none."""
    global _prestarted
    taken, _prestarted = _prestarted, None
    return taken


def wants_worker(argv: list[str]) -> bool:
    """A guess from the raw command line: ``annotate`` with the llm annotator, more than
    one call at a time, something to send (no ``--dry-run``, no ``--help``)."""
    if os.name != "posix" or "annotate" not in argv:
        return False
    if any(a in ("--dry-run", "--help", "-h") for a in argv):
        return False
    pairs = list(zip(argv, [*argv[1:], ""], strict=True))
    llm = any(
        a == "--annotator=llm" or (a in ("--annotator", "-a") and b == "llm") for a, b in pairs
    )
    one = any(a == "--concurrency=1" or (a == "--concurrency" and b == "1") for a, b in pairs)
    return llm and not one


class _WithoutPandas:
    """Makes ``import pandas`` fail in this process, as if pandas were not installed.

    No command uses pandas, but DuckDB imports it when it can, on a connection's first
    query with parameters, to recognise pandas' values among them: with numpy, a third
    of a second of every command's start (of ``annotate``'s wait for its first request).
    A finder that raises, not ``sys.modules["pandas"] = None``: pyarrow's Cython import
    takes that None for the module.
    """

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is not used by the papertag command", name=name)


def keep_pandas_out() -> None:
    """From now on ``import pandas`` fails in this process (see :class:`_WithoutPandas`)."""
    if not any(isinstance(f, _WithoutPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _WithoutPandas())


def main() -> None:
    global _prestarted
    if wants_worker(sys.argv[1:]):
        _prestarted = spawn_worker()
    keep_pandas_out()
    try:
        from papertag.cli import main as cli_main

        cli_main()
    finally:
        unused = take_prestarted()
        if unused is not None:
            proc, to_child, from_child = unused
            proc.kill()
            proc.wait()
            os.close(to_child)
            os.close(from_child)
        # The command is done (files closed, database checkpointed): spare the interpreter's
        # exit the search for cycles among everything it loaded (a tenth of a second of
        # DuckDB, Arrow and pydantic objects). Memory goes back to the system either way.
        gc.freeze()
