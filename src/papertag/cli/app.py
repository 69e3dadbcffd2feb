"""The ``papertag`` command's root: the app, its global options, and how our errors become
one line on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .. import __version__
from ..db.store import DB_ENV, DEFAULT_DB, Store, default_db_path
from ..errors import PapertagError

app = typer.Typer(
    name="papertag",
    help="Turn research-paper digests into a queryable, human-checked label database.\n\n"
    "Typical use: `papertag ingest digests/*.txt`, then `papertag annotate`, then "
    '`papertag sql "SELECT * FROM labels LIMIT 5"`.',
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's own help: paragraphs reflowed to the terminal (rich mode kept the docstrings'
    # line breaks, mid-sentence) and no "<bool>" beside every flag.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped into a file or another program, tables keep their full width instead of being
# wrapped at 80 columns (`papertag calls | less`).
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")


class State:
    db: Path | None = None


state = State()


def fail(message: str, code: int = 1) -> typer.Exit:
    # Messages carry user text (paths, titles, SQL): print it verbatim, not as markup.
    err.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code)


def guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except PapertagError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"papertag {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            envvar=DB_ENV,
            help=f"DuckDB file to use (default: ./{DEFAULT_DB}).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    state.db = db


def open_store(read_only: bool = False, *, create: bool = False) -> Store:
    """The database of --db; only a command that adds papers (``create``) may make it, so a
    mistyped path is an error instead of an empty database and a report of nothing done."""
    path = state.db if state.db is not None else default_db_path()
    if not create and not path.exists():
        raise fail(
            f"{path}: no such database; run `papertag ingest` first, or check --db / ${DB_ENV}"
        )
    return guard(lambda: Store(path, read_only=read_only))


@contextmanager
def progress_bar(
    description: str, total: int | None, *, quiet: bool = False
) -> Iterator[tuple[Progress, TaskID]]:
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}"),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total, extra="")
        yield progress, task


def main() -> None:
    app()
