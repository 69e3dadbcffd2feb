"""``papertag run``: the daily job, pull then annotate, with annotate's own options."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ..annotate import AnnotateReport

if TYPE_CHECKING:
    # Imported by their commands: httpx is a tenth of a second that no other command needs.
    from ..daily import RunReport
from .annotate_options import AnnotatorName, Engine, annotate_kwargs, annotate_params
from .annotate_report import print_failures
from .app import app, err, fail, guard, open_store, out
from .ingest import API_HELP, Since, Until, day_range, pull_summary, pulling


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
    since: Since = None,
    until: Until = None,
    api_url: Annotated[
        str | None, typer.Option(help=API_HELP, metavar="URL", show_default=False)
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
    from ..daily import run as run_daily
    from ..ingest.pull import DEFAULT_BASE_URL

    params = annotate_params(ctx)
    if params["papers"] or params["dry_run"] or params["batch"] or params["wait"]:
        raise fail(
            "--paper, --dry-run, --batch and --wait are annotate's own; run annotates what is new",
            2,
        )
    if params["engine"] != Engine.local:
        raise fail("--engine ray is annotate's own; run annotates with the local engine", 2)
    annotator = AnnotatorName(params["annotator"])
    options = annotate_kwargs(annotator, params)
    first, last = day_range(None, since, until)
    store = open_store(create=True)
    # Each step opens the file for itself: others can read it while the run annotates.
    store.close()
    with pulling(verbose=False, quiet=quiet) as (start, settled, progress, task):

        def annotating(total: int) -> None:
            progress.reset(task, total=total, description=f"annotate ({annotator.value})")

        def annotated(r: AnnotateReport) -> None:
            progress.update(task, completed=r.done + r.failed)

        report = guard(
            lambda: run_daily(
                store.path,
                since=first,
                until=last,
                base_url=api_url or DEFAULT_BASE_URL,
                annotator=annotator.value,
                pull_options={"on_start": start, "on_day": settled},
                annotate_options={
                    **options,
                    "on_start": annotating,
                    "on_progress": annotated,
                },
            )
        )
    a = report.annotate
    print_failures(a)
    if report.pull.stopped:
        err.print(f"[bold red]Error:[/] {escape(report.pull.stopped)}")
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    elif not quiet:
        out.print(pull_summary(report.pull))
        out.print(_run_summary(report))
    if a.stopped == "interrupted":
        raise typer.Exit(130)
    if not report.ok:
        raise typer.Exit(1)
