"""Ctrl-C at any moment of a command's life gives exit 130 and one line (issue 17, item 8).

The Ctrl-C is sent at well-defined points of the command's own progress, seen through
Python's audit hooks (sys.addaudithook: a module's first import, the first connection to
the server), never after a fixed sleep: the same point is hit on a fast or a loaded
machine. The command is started as its console script starts it, from its entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from papertag.ingest import ingest_digests

from .fault_server import fault_server

#: Runs the `papertag` console script's entry point, with a Ctrl-C sent to this process
#: the first time an audit event matches: (event, first argument or "" for any).
DRIVER = textwrap.dedent(
    """
    import signal, sys
    from importlib.metadata import entry_points

    # As a command started from a terminal: Ctrl-C not ignored (a background job of a
    # non-interactive shell inherits it ignored, and papertag leaves it so).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    event, name = sys.argv[1], sys.argv[2]
    fired = False

    def hook(ev, args):
        global fired
        if fired or ev != event:
            return
        if name and not (args and str(args[0]) == name):
            return
        fired = True
        signal.raise_signal(signal.SIGINT)

    sys.addaudithook(hook)
    (main,) = [e for e in entry_points(group="console_scripts") if e.name == "papertag"]
    sys.argv = ["papertag", *sys.argv[3:]]
    sys.exit(main.load()())
    """
)

BASE = "We propose a 4-bit post-training quantization method that reduces memory by 3x."

POINTS = [
    # While the command's own modules load.
    ("import", "typer"),
    ("import", "duckdb"),
    ("import", "pyarrow"),
    ("import", "papertag.cli"),
    # While the LLM annotator is built (its client loads on first use).
    ("import", "openai"),
    # The first request goes out.
    ("socket.connect", ""),
]


@pytest.mark.parametrize(("event", "name"), POINTS, ids=[f"{e}:{n}" for e, n in POINTS])
def test_ctrl_c_while_starting_is_clean(
    tmp_path: Path, db_path: Path, event: str, name: str
) -> None:
    papers = tmp_path / "papers.jsonl"
    papers.write_text(
        "".join(json.dumps({"title": f"P{i}", "abstract": BASE}) + "\n" for i in range(5))
    )
    assert ingest_digests([papers], db_path).ok
    with fault_server() as srv:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                DRIVER,
                event,
                name,
                "--db",
                str(db_path),
                "annotate",
                "-a",
                "llm",
                "--model",
                "fake-model",
                "--base-url",
                srv.url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], done.stderr
