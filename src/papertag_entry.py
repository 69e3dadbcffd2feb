"""The ``papertag`` command's entry point: a Ctrl-C at any moment is exit 130 and one line.

Loading papertag and its command (DuckDB, pyarrow, typer, rich) takes half a second or
more on a busy machine. A KeyboardInterrupt raised in the middle of an import prints a
long traceback, or is swallowed by a library that imports lazily and turned into another
error. So the imports run here with Ctrl-C held back, and a Ctrl-C pressed meanwhile
ends the command as soon as they are done. From then on the command handles Ctrl-C itself
(an annotate run stops starting papers and keeps what it has). Once the command has
finished, a late Ctrl-C is ignored while the interpreter exits.

Only the standard library is imported here: papertag's own package loads all of it.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn


def main() -> None:
    pressed: list[int] = []
    # None: a handler set outside Python, which cannot be put back; Python's default then.
    previous = signal.getsignal(signal.SIGINT) or signal.default_int_handler
    # An ignored SIGINT (a background job of a non-interactive shell, nohup) stays ignored.
    holding = previous is not signal.SIG_IGN
    if holding:
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from papertag.cli import main as command
    finally:
        if holding:
            signal.signal(signal.SIGINT, previous)
    try:
        if pressed:
            _interrupted()
        command()
    except KeyboardInterrupt:
        _interrupted()
    finally:
        # The work is done (or stopped) and stored: nothing is left to interrupt.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupted() -> NoReturn:
    sys.stderr.write("Error: interrupted\n")
    sys.stderr.flush()
    raise SystemExit(130)
