"""The ``papertag`` command: parses arguments, calls the library, prints results.

Every error papertag raises on purpose becomes one line on stderr and exit
code 1 (2 for usage errors); nothing here holds logic of its own.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

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
from rich.table import Table
from typer.core import TyperGroup

from . import __version__
from .annotate import AnnotateReport
from .annotate import annotate as run_annotate
from .annotate import estimate as estimate_run
from .annotators import DEFAULT_CONCURRENCY
from .errors import PapertagError
from .evaluate import evaluate as run_evaluate
from .export import DEFAULT_STEM, ExportFormat
from .export import export as run_export
from .ingest import FileReport
from .ingest import ingest as ingest_files
from .query import QueryResult, read_sql_file, run_script, run_sql, stats, to_csv, to_json
from .review import (
    Conflict,
    default_reviewer,
    export_sheet,
    import_sheet,
    review_queue,
    summarize,
    undo_decision,
)
from .review import conflicts as review_conflicts_
from .schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from .store import DB_ENV, DEFAULT_DB, Store, default_db_path
from .taxonomy import FIELDS

if TYPE_CHECKING:
    # Imported by their commands: httpx is a tenth of a second that no other command needs.
    from .daily import RunReport
    from .pull import DayReport, PullReport

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


def _fail(message: str, code: int = 1) -> typer.Exit:
    # Messages carry user text (paths, titles, SQL): print it verbatim, not as markup.
    err.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code)


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except PapertagError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None


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


def _store(read_only: bool = False, *, create: bool = False) -> Store:
    """The database of --db; only a command that adds papers (``create``) may make it, so a
    mistyped path is an error instead of an empty database and a report of nothing done."""
    path = state.db if state.db is not None else default_db_path()
    if not create and not path.exists():
        raise _fail(
            f"{path}: no such database; run `papertag ingest` first, or check --db / ${DB_ENV}"
        )
    return _run(lambda: Store(path, read_only=read_only))


@contextmanager
def _progress(
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
    store = _store(create=True)
    with store, _progress("ingest", len(files)) as (progress, task):

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

        report = _run(lambda: ingest_files(files, store, on_read=read, on_file=done))
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
_API_HELP = (
    "The daily-papers API's server; days are fetched from URL/api/daily_papers?date=YYYY-MM-DD "
    "(default: https://huggingface.co)."
)
# pull's and run's range of days.
_Since = Annotated[
    datetime | None,
    typer.Option(formats=_DAY, metavar="DAY", help=_SINCE_HELP, show_default=False),
]
_Until = Annotated[
    datetime | None,
    typer.Option(formats=_DAY, metavar="DAY", help=_UNTIL_HELP, show_default=False),
]


def _pull_summary(report: PullReport) -> str:
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
def _pulling(
    verbose: bool, quiet: bool = False
) -> Iterator[tuple[Callable[[int], None], Callable[[DayReport], None], Progress, TaskID]]:
    """A progress bar over the days, and what to print as each one is settled."""
    with _progress("pull", None, quiet=quiet) as (progress, task):

        def start(total: int) -> None:
            progress.update(task, total=total)

        def day(d: DayReport) -> None:
            progress.update(task, advance=1, description=f"pull {d.day}")
            if d.error:
                err.print(f"[red]✗[/] {escape(d.error)}")
            elif verbose:
                out.print(_day_line(d))

        yield start, day, progress, task


def _day_range(
    day: datetime | None, since: datetime | None, until: datetime | None
) -> tuple[date | None, date | None]:
    if day is not None:
        if since is not None or until is not None:
            raise _fail("--date is one day: give it alone, or --since/--until", 2)
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
    since: _Since = None,
    until: _Until = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", "--api-url", help=_API_HELP, metavar="URL", show_default=False),
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
    from .pull import DEFAULT_BASE_URL
    from .pull import pull as run_pull

    first, last = _day_range(day, since, until)
    store = _store(create=True)
    with store, _pulling(verbose) as (start, settled, _, _):
        report = _run(
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
    out.print(_pull_summary(report))
    if report.stopped:
        raise _fail(report.stopped)
    if not report.ok:
        raise typer.Exit(1)


# ------------------------------------------------------------------- annotate
class AnnotatorName(StrEnum):
    learned = "learned"
    rules = "rules"
    llm = "llm"


@app.command()
def annotate(
    annotator: Annotated[
        AnnotatorName,
        typer.Option(
            "--annotator",
            "-a",
            help="Which annotator: `learned` (a local model trained on labelled papers) and "
            "`rules` (keyword patterns) are offline and free; `llm` calls a model server.",
        ),
    ] = AnnotatorName.learned,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Only the first N papers (in ingest order); running it again annotates no more.",
            min=0,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Re-annotate papers that already have an annotation for this key."
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Ask again for papers whose last answer failed validation, was refused or cut off "
            "(network and server failures are always retried).",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="llm: model name, e.g. gpt-4o-mini or the name a local server serves. "
            "learned: a saved model's name (`papertag models`), `default` for the shipped one, "
            "or a model file; default: the newest model trained into this database, else the "
            "shipped one.",
            show_default=False,
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="llm: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (default $OPENAI_BASE_URL, else OpenAI).",
            show_default=False,
        ),
    ] = None,
    api_key_env: Annotated[
        str,
        typer.Option(
            help="llm: environment variable holding the API key (a local server needs none)."
        ),
    ] = "OPENAI_API_KEY",
    mode: Annotated[
        str | None,
        typer.Option(
            help="llm: structured-output mode: tools, json_schema, json or md_json "
            "(default: tools on OpenAI, json with a schema elsewhere).",
            show_default=False,
        ),
    ] = None,
    max_reasks: Annotated[
        int,
        typer.Option(
            help="llm: re-asks after an answer fails validation, before a failure row.", min=0
        ),
    ] = 2,
    concurrency: Annotated[
        int,
        typer.Option(
            help="llm: requests in flight at once, cut back automatically while the server answers 429.",
            min=1,
        ),
    ] = DEFAULT_CONCURRENCY,
    rpm: Annotated[
        float | None,
        typer.Option(
            help="llm: at most this many requests a minute (default: learn the server's limit).",
            show_default=False,
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option(
            help="llm: at most this many tokens a minute (prompt estimate + max tokens).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(help="llm: seconds to wait for one answer before retrying it.", min=0.001),
    ] = 120.0,
    max_cost: Annotated[
        float | None,
        typer.Option(
            help="llm: stop starting papers before this run's estimated spend would pass this many "
            "USD (a budget per run: a rerun has its own; prices: built-in table or "
            "$PAPERTAG_PRICES).",
            show_default=False,
            min=0,
        ),
    ] = None,
    papers: Annotated[
        list[str] | None,
        typer.Option(
            "--paper",
            help="Only this paper (a paper id, arXiv id or title words; repeat for several), "
            "annotated again even if it already has an annotation for this key.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print how many papers would be sent and their estimated tokens and cost; send nothing.",
        ),
    ] = False,
) -> None:
    """Label every paper that lacks an annotation for the annotator's current key.

    The key is (paper text, annotator, model, prompt version, taxonomy version):
    a second run does nothing; an edited abstract, prompt or taxonomy gives new
    annotations and marks the old ones `current = false` in the `labels` view.

    `--annotator llm` calls OpenAI or any OpenAI-compatible server (vLLM, Ollama,
    llama.cpp); every HTTP call is logged in the `llm_calls` table. Answers are
    journaled as they arrive: if a run is killed (or stopped with Ctrl-C), run the
    same command again and it resumes without paying twice for what it already got.
    """
    options = _annotator_options(
        annotator,
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        mode=mode,
        max_reasks=max_reasks,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        timeout=timeout,
        max_cost=max_cost,
    )
    store = _store()
    paper_ids: list[str] | None = None
    if papers:
        from .show import find_paper

        paper_ids = [_run(lambda q=q: find_paper(store, q)) for q in papers]  # type: ignore[misc]
        force = True  # chosen papers are annotated again: that is what naming them asks
    if dry_run:
        with store:
            est = _run(
                lambda: estimate_run(
                    store,
                    annotator.value,
                    limit=limit,
                    force=force,
                    retry_failed=retry_failed,
                    max_cost=max_cost,
                    paper_ids=paper_ids,
                    **options,
                )
            )
        cost = (
            "unknown (no price for this model; set PAPERTAG_PRICES)"
            if est.cost_usd is None
            else f"${est.cost_usd:,.4f}"
        )
        budget = (
            f"; --max-cost {max_cost:g} would stop it after about {est.within_budget} papers"
            if est.within_budget is not None and est.within_budget < est.papers
            else ""
        )
        out.print(
            f"dry run, nothing sent: {est.papers} papers would be annotated by {est.annotator}/{est.model} "
            f"({est.skipped} already done); about {est.prompt_tokens:,} prompt + "
            f"{est.completion_tokens:,} completion tokens on first attempts; estimated cost {cost}"
            f"{budget}"
        )
        return
    with store, _progress(f"annotate ({annotator.value})", None) as (progress, task):

        def start(total: int) -> None:
            progress.update(task, total=total)

        def step(r: AnnotateReport) -> None:
            parts = []
            if r.calls or r.replayed:
                parts.append(f"{r.prompt_tokens + r.completion_tokens:,} tok")
                if r.cost_known:
                    parts.append(f"${r.cost_usd:,.4f}")
            if r.failed:
                parts.append(f"[red]failed {r.failed}[/]")
            progress.update(task, completed=r.done + r.failed, extra=" · ".join(parts))

        report = _run(
            lambda: run_annotate(
                store,
                annotator.value,
                limit=limit,
                force=force,
                retry_failed=retry_failed,
                max_cost=max_cost,
                paper_ids=paper_ids,
                on_start=start,
                on_progress=step,
                **options,
            )
        )
    attempted = report.done + report.failed
    speed = (
        f"; {report.seconds:.1f}s, {attempted / report.seconds:,.1f} papers/s"
        if attempted and report.seconds
        else ""
    )
    out.print(
        f"annotated {report.done}, skipped {report.skipped} (already done), failed {report.failed} "
        f"[dim]({report.annotator}/{report.model}, prompt {report.prompt_version}, taxonomy "
        f"{report.taxonomy_version}{speed})[/]"
    )
    if report.calls or report.replayed or report.recovered:
        cost = (
            f"${report.cost_usd:,.4f}"
            if report.cost_known
            else "cost unknown (no price for this model; see PAPERTAG_PRICES)"
        )
        usage = (
            f"{report.calls} calls, {report.prompt_tokens:,} prompt + {report.completion_tokens:,} "
            f"completion tokens, {cost}"
        )
        if report.throttled:
            usage += f", {report.throttled} answered 429"
        if report.replayed:
            usage += f", {report.replayed} answers reused from an interrupted run (not paid again)"
        if report.recovered:
            usage += f", {report.recovered} journaled calls recovered into llm_calls"
        out.print(f"[dim]{usage}[/]")
    _print_failures(report)
    if report.stopped == "interrupted":
        err.print(
            f"[yellow]interrupted[/]: {report.left} papers left. Run the same command again to "
            "resume; nothing stored is lost or asked again."
        )
        raise typer.Exit(130)
    if report.stopped is not None:
        # A budget is per run: say so, rather than invite a rerun that spends it again.
        err.print(
            f"[yellow]stopped at --max-cost {max_cost:g}[/] after ${report.cost_usd:,.4f} this run: "
            f"{report.left} papers left. --max-cost is a budget for one run, so running the same "
            "command again spends up to that much more; to go on, run it again with the budget "
            "you want for the rest (nothing stored is asked again). `papertag calls` shows the "
            "spend so far."
        )
        raise typer.Exit(0)
    if report.failed:
        raise typer.Exit(1)


def _print_failures(report: AnnotateReport) -> None:
    """The first ten papers that failed, one line each, on stderr."""
    for pid, reason in report.failures[:10]:
        short = reason if len(reason) <= 240 else reason[:239] + "…"
        err.print(f"[red]✗[/] {pid}: {escape(short)}")
    if report.failed > 10:
        err.print(f"… and {report.failed - 10} more; see the annotation_failures table")


def _annotator_options(
    annotator: AnnotatorName,
    *,
    model: str | None,
    base_url: str | None,
    api_key_env: str,
    mode: str | None,
    max_reasks: int,
    concurrency: int,
    rpm: float | None,
    tpm: float | None,
    timeout: float,
    max_cost: float | None,
) -> dict[str, Any]:
    """The annotator's own options, from annotate's (those of another annotator refused)."""
    if annotator is AnnotatorName.llm:
        return {
            "model": model,
            "base_url": base_url,
            "api_key_env": api_key_env,
            "mode": mode,
            "max_reasks": max_reasks,
            "concurrency": concurrency,
            "rpm": rpm,
            "tpm": tpm,
            "timeout": timeout,
        }
    if base_url or mode or rpm or tpm or max_cost is not None:
        raise _fail(
            "--base-url, --mode, --rpm, --tpm and --max-cost apply to --annotator llm only", 2
        )
    if annotator is AnnotatorName.learned:
        return {"model": model}
    if model:
        raise _fail("--model applies to --annotator llm and learned only", 2)
    return {}


# ------------------------------------------------------------------------ run
def _annotate_params(ctx: typer.Context) -> dict[str, Any]:
    """The annotate options among a command's extra arguments, parsed and checked by
    annotate's own command: the same options, defaults and errors."""
    root = ctx.find_root()
    group = root.command
    command = group.get_command(root, "annotate") if isinstance(group, TyperGroup) else None
    if command is None:  # pragma: no cover - annotate is a command of this app
        raise _fail("no annotate command", 2)
    with command.make_context("run", list(ctx.args), parent=root) as sub:
        return dict(sub.params)


def _run_summary(report: RunReport) -> str:
    a = report.annotate
    labels = ", ".join(f"{n} {f}" for f, n in report.labels.items())
    return (
        f"annotated {a.done} papers ({a.annotator}/{a.model}; {a.skipped} done before, "
        f"{a.failed} failed): labels {labels}; {report.review_new} wait for review "
        f"({report.review_waiting} in all: papertag review)"
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    since: _Since = None,
    until: _Until = None,
    api_url: Annotated[
        str | None, typer.Option(help=_API_HELP, metavar="URL", show_default=False)
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing unless something failed.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """The daily job: pull the new days, annotate the new papers, print what is new.

    Pulls as `papertag pull` does, then annotates every paper without an annotation for
    the annotator's key, with annotate's options (--annotator, --model, --base-url,
    --max-cost, ...: see `papertag annotate --help`; learned by default). Prints the days
    and papers pulled, the labels given per field and how many wait for review. Exit
    code 0 when all went well, 1 when a day or a paper failed or the pull stopped (what
    landed is kept and annotated), 130 when interrupted. For cron: --quiet prints only
    failures, --json one object, e.g.
    `17 6 * * * cd /data && papertag run --quiet`.
    """
    from .daily import run as run_daily
    from .pull import DEFAULT_BASE_URL

    params = _annotate_params(ctx)
    if params["papers"] or params["dry_run"]:
        raise _fail("--paper and --dry-run are annotate's own; run annotates what is new", 2)
    annotator = AnnotatorName(params["annotator"])
    options = _annotator_options(
        annotator,
        **{
            k: params[k]
            for k in (
                *("model", "base_url", "api_key_env", "mode", "max_reasks", "concurrency"),
                *("rpm", "tpm", "timeout", "max_cost"),
            )
        },
    )
    first, last = _day_range(None, since, until)
    store = _store(create=True)
    with store, _pulling(verbose=False, quiet=quiet) as (start, settled, progress, task):

        def annotating(total: int) -> None:
            progress.reset(task, total=total, description=f"annotate ({annotator.value})")

        def annotated(r: AnnotateReport) -> None:
            progress.update(task, completed=r.done + r.failed)

        report = _run(
            lambda: run_daily(
                store,
                since=first,
                until=last,
                base_url=api_url or DEFAULT_BASE_URL,
                annotator=annotator.value,
                pull_options={"on_start": start, "on_day": settled},
                annotate_options={
                    **options,
                    "limit": params["limit"],
                    "force": params["force"],
                    "retry_failed": params["retry_failed"],
                    "max_cost": params["max_cost"],
                    "on_start": annotating,
                    "on_progress": annotated,
                },
            )
        )
    a = report.annotate
    _print_failures(a)
    if report.pull.stopped:
        err.print(f"[bold red]Error:[/] {escape(report.pull.stopped)}")
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    elif not quiet:
        out.print(_pull_summary(report.pull))
        out.print(_run_summary(report))
    if a.stopped == "interrupted":
        raise typer.Exit(130)
    if not report.ok:
        raise typer.Exit(1)


# ----------------------------------------------------------------------- eval
@app.command("eval")
def eval_(
    gold: Annotated[
        Path,
        typer.Option(
            "--gold", help="Gold labels, JSONL (see shared/gold/dev.jsonl).", show_default=False
        ),
    ],
    annotator: Annotated[
        AnnotatorName, typer.Option("--annotator", "-a", help="Whose annotations to score.")
    ] = AnnotatorName.learned,
    model: Annotated[
        str | None,
        typer.Option(
            help="The annotator's model: for learned a saved model's name or file (default: "
            "the newest in the database, else the shipped one), for llm the model name.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
    accept: Annotated[
        float,
        typer.Option(help="Accept threshold: labels at or above it skip review.", min=0, max=1),
    ] = ACCEPT_THRESHOLD,
    drop: Annotated[
        float,
        typer.Option(help="Drop threshold: candidates below it are not reviewed.", min=0, max=1),
    ] = DROP_THRESHOLD,
    annotate_missing: Annotated[
        bool,
        typer.Option(
            "--annotate-missing",
            help="Label the gold papers the database lacks (or the annotator has not labelled) "
            "in a scratch database that is thrown away, and score them too. With --annotator "
            "llm this calls the model and costs money.",
        ),
    ] = False,
) -> None:
    """Score stored annotations against a gold set (papers matched by normalised title).

    The database is only read: gold papers it lacks, or that the annotator has not
    labelled, are left out and counted (see --annotate-missing). Prints per-field
    micro precision/recall/F1 and macro-F1, a per-label table, the expected
    calibration error, and what review at the thresholds would cost.
    """
    store = _store(read_only=True)
    with store:
        result = _run(
            lambda: run_evaluate(
                store,
                gold,
                annotator=annotator.value,
                model=model,
                accept=accept,
                drop=drop,
                annotate_missing=annotate_missing,
            )
        )
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
        return
    if result.missing:
        hint = "" if annotate_missing else " (--annotate-missing labels them in a scratch database)"
        err.print(
            f"{result.missing} gold papers have no {result.annotator}/{result.model} annotation "
            f"in the database and are not scored{hint}"
        )
    if result.annotated:
        err.print(f"labelled {result.annotated} gold papers in a scratch database and scored them")
    if not result.n_papers:
        raise _fail(
            f"no gold paper has a {result.annotator}/{result.model} annotation to score; "
            "annotate them first, or use --annotate-missing"
        )
    t = Table(title=f"{result.n_papers} gold papers, annotator {result.annotator}/{result.model}")
    for col in ("field", "precision", "recall", "micro-F1", "macro-F1", "tp", "fp", "fn"):
        t.add_column(col, justify="left" if col == "field" else "right")
    for f in FIELDS:
        s = result.fields[f]
        t.add_row(
            f,
            f"{s.precision:.3f}",
            f"{s.recall:.3f}",
            f"{s.micro_f1:.3f}",
            f"{s.macro_f1:.3f}",
            str(s.tp),
            str(s.fp),
            str(s.fn),
        )
    out.print(t)
    lt = Table(title="per label")
    for col in ("field", "label", "support", "precision", "recall", "F1"):
        lt.add_column(col, justify="left" if col in ("field", "label") else "right")
    for f in FIELDS:
        for lab, v in sorted(result.fields[f].per_label.items(), key=lambda kv: -kv[1]["support"]):
            lt.add_row(
                f,
                lab,
                str(int(v["support"])),
                f"{v['precision']:.2f}",
                f"{v['recall']:.2f}",
                f"{v['f1']:.2f}",
            )
    out.print(lt)
    out.print(
        f"ECE (10 bins, {result.n_items} labels and candidates): {result.ece:.3f}\n"
        f"accept ≥ {result.accept_threshold}: auto-accepted labels {result.auto_precision:.1%} right; "
        f"review share {result.review_share:.1%}, of which {result.review_yield:.1%} wrong (review yield)"
    )


# ----------------------------------------------------------------------- show
@app.command()
def show(
    paper: Annotated[
        str,
        typer.Argument(
            help="A paper id, an arXiv id or URL, or words of the title (all must match).",
            show_default=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Why a paper has its labels: its text with each current label's evidence
    highlighted, every annotation (annotator, model, versions; current first) with its
    labels, candidates and confidences, the LLM calls behind them, and the review
    decisions about it."""
    from rich.text import Text

    from .review import evidence_span
    from .show import paper_details

    store = _store(read_only=True)
    with store:
        d = _run(lambda: paper_details(store, paper))
    if as_json:
        out.print_json(json.dumps(dataclasses.asdict(d), default=str))
        return
    out.print(f"[bold]{escape(d.title)}[/]")
    ids = [f"paper_id {d.paper_id}"]
    if d.arxiv_id:
        ids.append(f"arXiv {d.arxiv_id}")
    if d.url:
        ids.append(escape(d.url))
    if d.digests:
        ids.append("digests: " + escape(", ".join(d.digests)))
    out.print("[dim]" + " · ".join(ids) + "[/]")
    text = Text(d.abstract)
    current = [a for a in d.annotations if a.current]
    for ann in current:
        for lab in ann.labels:
            if lab.kind != "label":
                continue
            span = evidence_span(d.abstract, lab.evidence)
            if span is not None:
                text.stylize("bold yellow", *span)
    out.print(text)
    if not d.annotations:
        out.print("\nnot annotated yet: `papertag annotate`")
    for ann in d.annotations:
        state_word = "current" if ann.current else "stale"
        t = Table(
            title=f"{ann.annotator}/{ann.model} ({state_word}; prompt {ann.prompt_version}, "
            f"taxonomy {ann.taxonomy_version}; {ann.created_at:%Y-%m-%d %H:%M})",
            title_justify="left",
        )
        for col in ("field", "label", "kind", "confidence", "evidence"):
            t.add_column(col, justify="right" if col == "confidence" else "left")
        for lab in ann.labels:
            label = lab.label + (f" ({lab.note})" if lab.note else "")
            t.add_row(
                lab.field, escape(label), lab.kind, f"{lab.confidence:.2f}", escape(lab.evidence)
            )
        out.print(t)
    if d.calls:
        t = Table(title="LLM calls", title_justify="left")
        for col in (
            "id",
            "model",
            "status",
            "attempt",
            "tok_in",
            "tok_out",
            "cost_usd",
            "started",
            "error",
        ):
            t.add_column(col)
        for c in d.calls:
            t.add_row(
                str(c.call_id),
                escape(c.model),
                str(c.status or ""),
                str(c.attempt),
                str(c.prompt_tokens or ""),
                str(c.completion_tokens or ""),
                _cell_text(c.cost_usd),
                f"{c.started_at:%Y-%m-%d %H:%M:%S}",
                escape(c.error or ""),
            )
        out.print(t)
    if d.decisions:
        t = Table(title="review decisions", title_justify="left")
        for col in ("id", "field", "label", "action", "new value", "reviewer", "when", "note"):
            t.add_column(col)
        for r in d.decisions:
            t.add_row(
                str(r.decision_id),
                r.field,
                escape(r.label),
                r.action,
                escape(r.new_value or ""),
                escape(r.reviewer),
                f"{r.decided_at:%Y-%m-%d %H:%M}",
                escape(r.note or ""),
            )
        out.print(t)


# ---------------------------------------------------------------------- train
@app.command()
def train(
    from_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            help="Labelled papers, JSONL in the gold/silver format (title, abstract, technique, "
            "modality, target_metric). Repeat for several files.",
            show_default=False,
        ),
    ] = None,
    from_annotator: Annotated[
        str | None,
        typer.Option(
            help="Also learn from this annotator's current labels in the database (e.g. llm: "
            "distillation).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="With --from-annotator: which of its models (e.g. gpt-4o-mini).",
            show_default=False,
        ),
    ] = None,
    reviews: Annotated[
        bool,
        typer.Option(
            "--reviews/--no-reviews",
            help="Learn from people's review decisions in the database (they win over every "
            "other source for the fields they decide).",
        ),
    ] = True,
    name: Annotated[
        str, typer.Option(help="Save the model in the database under this name.")
    ] = "local",
    output: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the model to this file instead of the database.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the --out file if it exists.")
    ] = False,
    folds: Annotated[
        int, typer.Option(help="Folds of the cross-validation (and of the calibration).", min=2)
    ] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train the learned annotator's model on labelled papers and save it.

    Sources combine: files, an annotator's labels and review decisions; for a
    paper and field, a person's decision wins over an annotator's label, which
    wins over a file's. Prints k-fold cross-validated micro-F1 per field, the
    calibration error (ECE), the training set per source and the labels left
    out for having too few examples. `papertag annotate` then uses the newest
    model of the database.
    """
    from .annotators.learned.pipeline import train as run_train

    if model is not None and from_annotator is None:
        raise _fail("--model needs --from-annotator", 2)
    db = state.db if state.db is not None else default_db_path()
    with _progress("train", None) as (progress, task):
        result = _run(
            lambda: run_train(
                db,
                files=from_files or [],
                annotator=from_annotator,
                annotator_model=model,
                reviews=reviews,
                name=name,
                out=output,
                overwrite=force,
                folds=folds,
                on_step=lambda step: progress.update(task, description=f"train: {step}"),
            )
        )
    rep = result.report
    if as_json:
        out.print_json(json.dumps({**rep.as_dict(), "saved_to": result.saved_to}))
        return
    for fname, lab, n in rep.dropped:
        err.print(
            f"[yellow]warning:[/] {fname} label {lab!r} left out: {n} example"
            f"{'s' if n != 1 else ''}, too few to learn"
        )
    sources = ", ".join(f"{k} {v:,}" for k, v in rep.sources.items())
    out.print(f"trained on {rep.examples:,} papers ({sources}) in {rep.seconds:.1f}s")
    t = Table(title=f"{rep.folds}-fold cross-validation")
    for col in ("field", "micro-F1", "macro-F1", "precision", "recall", "threshold"):
        t.add_column(col, justify="left" if col == "field" else "right")
    for fname in FIELDS:
        cv = rep.cv.get(fname, {})
        t.add_row(
            fname,
            f"{cv.get('micro_f1', 0):.3f}",
            f"{cv.get('macro_f1', 0):.3f}",
            f"{cv.get('precision', 0):.3f}",
            f"{cv.get('recall', 0):.3f}",
            f"{rep.thresholds[fname]:.3f}",
        )
    out.print(t)
    for source, figures in rep.by_source.items():
        out.print(
            f"  {escape(source)} ({int(figures['papers']):,} papers): "
            + ", ".join(f"{f} {figures[f]:.3f}" for f in FIELDS)
        )
    out.print(
        f"ECE (10 bins, labels and candidates): {rep.ece:.3f}; auto-accepted labels "
        f"(confidence ≥ {ACCEPT_THRESHOLD}) {rep.auto_precision:.1%} right; "
        f"review yield {rep.review_yield:.1%}"
    )
    out.print(f"saved model {rep.version} to {escape(result.saved_to)}")


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the learned annotator's models: those trained into this database (newest
    first; the newest is the default of `annotate --annotator learned`) and the shipped one."""
    from .annotators.learned.registry import list_models

    db = state.db if state.db is not None else default_db_path()
    if db.exists():
        with _store(read_only=True) as store:
            infos = _run(lambda: list_models(store))
    else:
        infos = _run(lambda: list_models(None))
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "name": m.name,
                        "version": m.version,
                        "created_at": m.created_at.isoformat() if m.created_at else None,
                        "where": m.where,
                        "examples": m.examples,
                        "cv": m.meta.get("cv", {}),
                    }
                    for m in infos
                ]
            )
        )
        return
    t = Table()
    for col in ("name", "version", "where", "trained", "papers", *FIELDS):
        t.add_column(col, justify="right" if col in ("papers", *FIELDS) else "left")
    for m in infos:
        t.add_row(
            m.name,
            m.version,
            m.where,
            m.created_at.strftime("%Y-%m-%d %H:%M") if m.created_at else "",
            f"{m.examples:,}",
            *(f"{v:.3f}" if (v := m.cv(f)) is not None else "" for f in FIELDS),
        )
    out.print(t)
    out.print("[dim]technique, modality, target_metric: cross-validated micro-F1[/]")


# ------------------------------------------------------------------------ sql
class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _cell_text(value: Any) -> str:
    """A value as a table shows it to a person: no float noise, no microseconds.

    CSV and JSON output keep the values whole.
    """
    if value is None:
        return ""
    if isinstance(value, float):
        if value == 0 or 1e-6 <= abs(value) < 1e15:
            # 0.028034999999999942 -> 0.028035, 4.5e-05 -> 0.000045
            return f"{value:.6f}".rstrip("0").rstrip(".")
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _print_result(result: QueryResult, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.csv:
        sys.stdout.write(to_csv(result))
    elif fmt is OutputFormat.json:
        sys.stdout.write(to_json(result) + "\n")
    else:
        t = Table(show_lines=False)
        cells = [[escape(_cell_text(v)) for v in row] for row in result.rows]
        widths = [
            max([len(col), *(len(row[i]) for row in cells)]) for i, col in enumerate(result.columns)
        ]
        # When the short columns (ids, numbers, times) fit the terminal whole, they stay on
        # one line and only long text folds; when not, every column folds (nothing is cut).
        fixed = [w <= 24 for w in widths]
        keep = sum(w + 3 for w, f in zip(widths, fixed, strict=True) if f) + 10 * fixed.count(False)
        one_line = keep <= out.width
        for col, f in zip(result.columns, fixed, strict=True):
            t.add_column(escape(col), overflow="fold", no_wrap=one_line and f)
        for row in cells:
            t.add_row(*row)
        out.print(t)
        out.print(f"[dim]{len(result.rows)} row{'s' if len(result.rows) != 1 else ''}[/]")


@app.command()
def sql(
    query: Annotated[
        str | None,
        typer.Argument(help='SQL to run, e.g. "SELECT * FROM labels LIMIT 5".', show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Read the SQL from a file.", show_default=False),
    ] = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.table,
    write: Annotated[
        bool, typer.Option("--write", help="Open the database read-write (for CREATE/INSERT/...).")
    ] = False,
) -> None:
    """Run SQL against the database (DuckDB dialect) and print the result.

    Stable views (see the README's "SQL views"): papers, labels, final_labels,
    paper_labels, llm_calls. The database is opened read-only unless --write is given.
    """
    if (query is None) == (file is None):
        raise _fail("give either a SQL string or --file", 2)
    text = query if query is not None else _run(lambda: read_sql_file(file))  # type: ignore[arg-type]
    store = _store(read_only=not write)
    with store:
        results = _run(lambda: run_script(store, text))
    shown = [r for r in results if r.columns and not r.status]
    if len(shown) > 1 and fmt is not OutputFormat.table:
        raise _fail(
            f"{len(shown)} statements return rows; --format {fmt.value} prints one result: "
            "run them one at a time",
            2,
        )
    for n, result in enumerate(shown or results[-1:]):
        if n:
            out.print()
        _print_result(result, fmt)


@app.command()
def calls(
    limit: Annotated[int, typer.Option(help="Show the N most recent calls.", min=1)] = 20,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.table,
) -> None:
    """Show the most recent LLM calls (the `llm_calls` view): model, status, tokens, cost, time.

    Host, attempt and the full request and response bodies are in the view:
    `papertag sql "SELECT * FROM llm_calls"`.
    """
    store = _store(read_only=True)
    with store:
        result = _run(
            lambda: run_sql(
                store,
                # The columns a person scans; host, attempt and the bodies are in the view.
                "SELECT call_id AS id, strftime(started_at, '%m-%d %H:%M:%S') AS started, paper_id, "
                "model, status, finish_reason AS finish, "
                "prompt_tokens AS tok_in, completion_tokens AS tok_out, round(cost_usd, 6) AS cost_usd, "
                "CAST(round(duration_ms) AS INTEGER) AS ms, error FROM llm_calls "
                "ORDER BY started_at DESC, call_id DESC LIMIT ?",
                [limit],
            )
        )
    _print_result(result, fmt)


@app.command("stats")
def stats_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print counts: papers, digests, links, annotations, labels per field."""
    store = _store(read_only=True)
    with store:
        data: dict[str, Any] = _run(lambda: stats(store))
    if as_json:
        out.print_json(json.dumps(data))
        return
    t = Table(show_header=False, box=None)
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        t.add_row(key.replace("_", " "), str(value))
    out.print(t)


# --------------------------------------------------------------------- export
@app.command()
def export(
    fmt: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            help="File format: parquet, csv or jsonl (one JSON object a line). Default: what "
            "--out's extension says (.parquet, .csv, .jsonl), else parquet.",
            show_default=False,
        ),
    ] = None,
    final: Annotated[
        bool,
        typer.Option(
            "--final",
            help="Export the accepted labels (the final_labels view: confident model labels and "
            "review decisions) instead of every current label.",
        ),
    ] = False,
    long: Annotated[
        bool,
        typer.Option("--long", help="One row per label instead of one row per paper."),
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help=f"File to write (default: ./{DEFAULT_STEM}.<format>).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the output file if it exists.")
    ] = False,
) -> None:
    """Write the labels to a Parquet, CSV or JSON Lines file (through DuckDB's COPY).

    By default one row per paper and annotator key (the paper_labels view): paper
    columns plus technique, modality and target_metric as lists. --final gives one
    row per annotated paper with its accepted labels; --long one row per label.
    An existing file is never replaced without --force, and a failed export
    leaves no file behind.
    """
    result = _run(
        lambda: run_export(state.db, fmt, output, final=final, long=long, overwrite=force)
    )
    shape = "labels" if long else "papers"
    out.print(
        f"wrote {result.rows:,} {shape} to {escape(str(result.path))} [dim]({result.format.value}"
        f"{', final labels' if final else ''})[/]"
    )


# --------------------------------------------------------------------- report
@app.command()
def report(
    output: Annotated[
        Path, typer.Option("--out", "-o", help="HTML file to write (replaced if it exists).")
    ] = Path("report.html"),
    gold: Annotated[
        Path | None,
        typer.Option(
            "--gold",
            help="Gold labels (JSONL, as for `papertag eval`): adds per-label F1 and a "
            "calibration diagram.",
            show_default=False,
        ),
    ] = None,
    annotator: Annotated[
        AnnotatorName,
        typer.Option("--annotator", "-a", help="With --gold: whose annotations to score."),
    ] = AnnotatorName.learned,
    model: Annotated[
        str | None,
        typer.Option(
            help="With --gold: the annotator's model (for learned a saved model's name or "
            "file, for llm the model name).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a self-contained HTML report with charts (opens offline in any browser).

    Charts: papers per label, technique × target-metric co-occurrence, techniques
    per digest, the confidence distribution and review progress; with --gold also
    per-label F1 and a reliability diagram (scored as `papertag eval` does: the
    database is only read).
    """
    from .report import write_report  # plotly: imported only by the command that draws

    result = _run(
        lambda: write_report(state.db, output, gold=gold, annotator=annotator.value, model=model)
    )
    s = result.summary
    out.print(
        f"wrote {escape(str(result.path))} ({result.bytes / 1e6:.1f} MB, {len(result.charts)} charts): "
        f"{s['papers']:,} papers, {s['current_labels']:,} current labels, "
        f"{s['reviewed']:,} of {s['review_queue']:,} queued labels reviewed"
    )


# --------------------------------------------------------------------- review
review_cli = typer.Typer(
    help="Review the doubtful labels: run with no subcommand for the terminal app.",
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(review_cli, name="review")


class FieldName(StrEnum):
    technique = "technique"
    modality = "modality"
    target_metric = "target_metric"


ThresholdOpt = Annotated[
    float,
    typer.Option(
        "--threshold",
        help="Accept threshold: labels and candidates below it (and at or above --drop) are queued.",
        min=0,
        max=1,
    ),
]
DropOpt = Annotated[
    float,
    typer.Option(
        help="Drop threshold: below it a label is not worth a reviewer's time.", min=0, max=1
    ),
]
FieldOpt = Annotated[
    FieldName | None,
    typer.Option("--field", help="Only this field.", show_default=False),
]
AnnotatorOpt = Annotated[
    str | None,
    typer.Option(
        "--annotator",
        "-a",
        help="Only labels from this annotator (e.g. rules, llm).",
        show_default=False,
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(help="Only the first N items of the queue.", min=0, show_default=False),
]
ReviewerOpt = Annotated[
    str | None,
    typer.Option(
        help="Name recorded with each decision (default: your user name).", show_default=False
    ),
]


@review_cli.callback(invoke_without_command=True)
def review(
    ctx: typer.Context,
    threshold: ThresholdOpt = ACCEPT_THRESHOLD,
    drop: DropOpt = DROP_THRESHOLD,
    field: FieldOpt = None,
    annotator: AnnotatorOpt = None,
    limit: LimitOpt = None,
    reviewer: ReviewerOpt = None,
) -> None:
    """Clear the review queue in a keyboard-first terminal app.

    The queue is every current label and runner-up candidate with drop <= confidence
    < threshold that no person has decided, the most uncertain paper first with all its
    doubtful labels together. Keys: a accept, r reject, c change (fuzzy picker), n add a
    missing label, s skip, u undo, ? help, q quit. Each decision is saved at once in
    `review_decisions`; `final_labels` applies them; the next run resumes the queue.

    Subcommands: `export` / `import` a spreadsheet (.xlsx or .csv), `conflicts`.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise _fail(
            "papertag review needs a terminal; in scripts use `papertag review export` and "
            "`papertag review import`, or the papertag.review library"
        )
    from .review_app import ReviewApp

    who = reviewer or default_reviewer()
    store = _store()
    with store:
        queue = _run(
            lambda: review_queue(
                store,
                accept=threshold,
                drop=drop,
                field=field.value if field else None,
                annotator=annotator,
                limit=limit,
            )
        )
        if not queue:
            out.print("Nothing to review: the queue is clear.")
            return
        tui = ReviewApp(store, queue, reviewer=who)
        tui.run()
        left = len(tui.pending)
    counts = summarize(tui.recorded)
    made = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "no decisions"
    out.print(f"{made} recorded for {who}; {left} left in this queue")


@review_cli.command("export")
def review_export(
    to: Annotated[
        Path,
        typer.Option("--to", help="The sheet to write: a .xlsx or .csv file.", show_default=False),
    ],
    threshold: ThresholdOpt = ACCEPT_THRESHOLD,
    drop: DropOpt = DROP_THRESHOLD,
    field: FieldOpt = None,
    annotator: AnnotatorOpt = None,
    limit: LimitOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace the sheet if it exists (decisions typed in are lost)."
        ),
    ] = False,
) -> None:
    """Write the review queue to a spreadsheet, one row per queued label, for review elsewhere.

    An existing file is never replaced without --force: it may hold decisions typed in.

    Fill in the `decision` column (accept, reject, change, add, skip; blank = not decided)
    and `new_label` for change and add; add a row (paper_id, field, decision add, new_label)
    for a missing label. Then `papertag review import FILE`.
    """
    store = _store()
    with store:
        n = _run(
            lambda: export_sheet(
                store,
                to,
                accept=threshold,
                drop=drop,
                field=field.value if field else None,
                annotator=annotator,
                limit=limit,
                overwrite=force,
            )
        )
    out.print(f"wrote {n} rows to {to}")


@review_cli.command("import")
def review_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="A sheet written by `papertag review export`, filled in.", show_default=False
        ),
    ],
    reviewer: ReviewerOpt = None,
) -> None:
    """Apply the decisions of a filled review sheet (.xlsx or .csv).

    Every row is checked first: an unknown id or decision word, a label that changed since
    the export (re-annotated or decided otherwise meanwhile), or a label decided in two rows
    makes the whole import fail with each bad row's number and reason, and nothing is
    applied. Rows already applied by an earlier import of the same sheet are counted and
    left alone, so a sheet can be imported, filled further and imported again.
    """
    store = _store()
    with store:
        report = _run(lambda: import_sheet(store, file, reviewer=reviewer))
    made = ", ".join(f"{n} {a}" for a, n in sorted(report.applied.items())) or "no decisions"
    already = f", {report.already} already applied before" if report.already else ""
    out.print(f"applied {made} from {file}; {report.skipped} rows left blank or skipped{already}")


@review_cli.command("undo")
def review_undo(
    decision_id: Annotated[
        int,
        typer.Argument(
            help="The decision to reverse (review_decisions.decision_id).", show_default=False
        ),
    ],
    reviewer: ReviewerOpt = None,
) -> None:
    """Reverse one recorded decision by appending an undo row; nothing is deleted.

    The label goes back to what it was before that decision (and into the review queue if
    it is doubtful). Recent ids: `papertag sql "SELECT decision_id, paper_id, field, label,
    action FROM review_decisions ORDER BY decision_id DESC LIMIT 10"`.
    """
    store = _store()
    with store:
        undo = _run(lambda: undo_decision(store, decision_id, reviewer=reviewer, source="cli"))
    out.print(
        f"undid decision {decision_id} on {undo.paper_id} {undo.field} {undo.label} "
        f"(recorded as decision {undo.decision_id})"
    )


@review_cli.command("conflicts")
def review_conflicts(
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="Output format.")
    ] = OutputFormat.table,
) -> None:
    """List person decisions that a newer annotation disagrees with (the person's word stands).

    A person kept a label the annotation no longer offers, or dropped one it gives at or
    above the accept threshold. Review them again with `papertag review` after deciding.
    """
    store = _store(read_only=True)
    with store:
        found = _run(lambda: review_conflicts_(store))
    if not found and fmt is OutputFormat.table:
        out.print("No conflicts: every current annotation agrees with the people's decisions.")
        return
    columns = [f.name for f in dataclasses.fields(Conflict)]
    rows = [tuple(getattr(c, name) for name in columns) for c in found]
    _print_result(QueryResult(columns, ["VARCHAR"] * len(columns), rows), fmt)


def main() -> None:
    app()
