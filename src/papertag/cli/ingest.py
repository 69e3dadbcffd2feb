"""``papertag ingest`` and ``papertag pull``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    Progress,
    TaskID,
)

from ..ingest import FileReport
from ..ingest import ingest_digests as ingest_files

if TYPE_CHECKING:
    # Imported by their commands: httpx is a tenth of a second that no other command needs.
    from ..ingest.pull import DayReport, PullReport
from .app import app, err, fail, guard, open_store, out, progress_bar


# --------------------------------------------------------------------- ingest
@app.command()
def ingest(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Digest files: Hugging Face Daily Papers page text, HF API JSON, JSONL/JSON, "
            "CSV/TSV (any delimiter; a title and an abstract/summary column), or an Atom or RSS "
            "feed (the arXiv API's answers, arXiv's RSS lists). The format is detected from the "
            "content; a file that is none of these is refused, saying what it looks like.",
            show_default=False,
        ),
    ],
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Print a line for every file, not only failures."),
    ] = False,
) -> None:
    """Add papers from digest files to the database, once per paper.

    Papers are keyed on their arXiv id when known, else on a normalised title;
    every listing is recorded in `digest_papers`. A digest is keyed on what it
    lists, not its file name: the same file from another path is the digest
    already stored, and two files of one name in two folders are two digests.
    Running it again adds nothing.
    Each file is all-or-nothing: a bad file adds nothing and is reported on one
    line, the others still land, and the exit code is 1. Prints one summary line
    (and a line for a file read with a guessed encoding); -v lists every file.
    """
    store = open_store(create=True)
    with store, progress_bar("ingest", len(files)) as (progress, task):

        def read(fr: FileReport) -> None:
            progress.update(task, advance=1, description=f"ingest {Path(fr.path).name}")

        def done(fr: FileReport) -> None:
            if fr.error:
                err.print(f"[red]✗[/] {escape(fr.error)}")
            elif verbose or fr.note:
                note = f" [yellow]({escape(fr.note)})[/]" if fr.note else ""
                out.print(
                    f"[green]✓[/] {escape(fr.path)} [dim]({fr.format})[/]: {fr.entries} entries, "
                    f"{fr.new_papers} new papers, {fr.updated_papers} updated, {fr.new_links} new links, "
                    f"{fr.unchanged} unchanged{note}"
                )

        report = guard(lambda: ingest_files(files, store, on_read=read, on_file=done))
    out.print(
        f"{len(report.files)} files read: {report.total('new_papers')} new papers, "
        f"{report.total('updated_papers')} updated, {report.total('new_links')} new links, "
        f"{report.total('unchanged')} unchanged, {len(report.failed)} failed"
    )
    if not report.ok:
        raise typer.Exit(1)


# ----------------------------------------------------------------------- pull
_DAY = ["%Y-%m-%d"]
_SINCE_HELP = (
    "First day (YYYY-MM-DD; default: the day before the newest day pulled, else yesterday)."
)
_UNTIL_HELP = "Last day (YYYY-MM-DD; default: today, UTC)."
API_HELP = (
    "The daily-papers API's server; days are fetched from URL/api/daily_papers?date=YYYY-MM-DD "
    "(default: https://huggingface.co)."
)
# pull's and run's range of days.
Since = Annotated[
    datetime | None,
    typer.Option(formats=_DAY, metavar="DAY", help=_SINCE_HELP, show_default=False),
]
Until = Annotated[
    datetime | None,
    typer.Option(formats=_DAY, metavar="DAY", help=_UNTIL_HELP, show_default=False),
]


def pull_summary(report: PullReport) -> str:
    fetched = report.count("stored") + report.count("empty")
    line = (
        f"{report.since} … {report.until}: {fetched} days fetched ({report.count('stored')} with "
        f"papers, {report.count('empty')} without), {report.count('skipped')} stored before, "
        f"{len(report.failed)} failed"
    )
    if report.stopped:
        line += f", {report.count('not fetched')} not fetched"
    return line + (
        f"; {report.total('entries')} papers listed: {report.total('new_papers')} new, "
        f"{report.total('updated_papers')} updated, {report.total('new_links')} new links"
    )


def _day_line(d: DayReport) -> str:
    if d.file is not None:
        f = d.file
        note = f" [yellow]({escape(f.note)})[/]" if f.note else ""
        return (
            f"[green]✓[/] {d.day} [dim]({f.entries} papers)[/]: {f.new_papers} new papers, "
            f"{f.updated_papers} updated, {f.new_links} new links, {f.unchanged} unchanged{note}"
        )
    return f"[dim]·[/] {d.day}: " + {"empty": "no papers", "not fetched": "not fetched"}.get(
        d.status, d.status
    )


@contextmanager
def pulling(
    verbose: bool, quiet: bool = False
) -> Iterator[tuple[Callable[[int], None], Callable[[DayReport], None], Progress, TaskID]]:
    """A progress bar over the days, and what to print as each one is settled."""
    with progress_bar("pull", None, quiet=quiet) as (progress, task):

        def start(total: int) -> None:
            progress.update(task, total=total)

        def day(d: DayReport) -> None:
            progress.update(task, advance=1, description=f"pull {d.day}")
            if d.error:
                err.print(f"[red]✗[/] {escape(d.error)}")
            elif verbose:
                out.print(_day_line(d))

        yield start, day, progress, task


def day_range(
    day: datetime | None, since: datetime | None, until: datetime | None
) -> tuple[date | None, date | None]:
    if day is not None:
        if since is not None or until is not None:
            raise fail("--date is one day: give it alone, or --since/--until", 2)
        return day.date(), day.date()
    return (since.date() if since else None), (until.date() if until else None)


@app.command()
def pull(
    day: Annotated[
        datetime | None,
        typer.Option(
            "--date",
            formats=_DAY,
            metavar="DAY",
            help="This day alone (YYYY-MM-DD).",
            show_default=False,
        ),
    ] = None,
    since: Since = None,
    until: Until = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", "--api-url", help=API_HELP, metavar="URL", show_default=False),
    ] = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Fetch again the days stored before for good.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print a line for every day fetched.")
    ] = False,
) -> None:
    """Fetch days of the Hugging Face daily-papers API and ingest each as a digest.

    Each day is one digest, `hf:YYYY-MM-DD`, read and stored as a file of the API's
    answers would be. Days stored before are skipped, except today and yesterday, whose
    lists still grow (a day is final once fetched two days after it began, UTC);
    --refresh fetches them all again. Killed and run again, it fetches no stored day
    twice. A day answered with a 4xx, or with something that is not the API's list, fails
    alone (one line each, exit code 1); a host that cannot be reached stops the pull. The
    days that were stored stay.
    """
    from ..ingest.pull import DEFAULT_BASE_URL
    from ..ingest.pull import pull as run_pull

    first, last = day_range(day, since, until)
    store = open_store(create=True)
    with store, pulling(verbose) as (start, settled, _, _):
        report = guard(
            lambda: run_pull(
                store,
                since=first,
                until=last,
                base_url=base_url or DEFAULT_BASE_URL,
                refresh=refresh,
                on_start=start,
                on_day=settled,
            )
        )
    out.print(pull_summary(report))
    if report.stopped:
        raise fail(report.stopped)
    if not report.ok:
        raise typer.Exit(1)
