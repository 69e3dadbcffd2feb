"""``papertag review``: the terminal app, and sheets to export, import and undo."""

from __future__ import annotations

import dataclasses
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ..query.sql import QueryResult
from ..review import (
    Conflict,
    export_sheet,
    import_sheet,
    review_queue,
    undo_decision,
)
from ..review import conflicts as review_conflicts_
from ..review.core import default_reviewer, summarize
from ..schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from .app import app, fail, guard, open_store, out
from .query import OutputFormat, print_result

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
        raise fail(
            "papertag review needs a terminal; in scripts use `papertag review export` and "
            "`papertag review import`, or the papertag.review library"
        )
    from ..review.app import ReviewApp

    who = reviewer or default_reviewer()
    store = open_store()
    with store:
        queue = guard(
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
    store = open_store()
    with store:
        n = guard(
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
    store = open_store()
    with store:
        report = guard(lambda: import_sheet(store, file, reviewer=reviewer))
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
    store = open_store()
    with store:
        undo = guard(lambda: undo_decision(store, decision_id, reviewer=reviewer, source="cli"))
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
    store = open_store(read_only=True)
    with store:
        found = guard(lambda: review_conflicts_(store))
    if not found and fmt is OutputFormat.table:
        out.print("No conflicts: every current annotation agrees with the people's decisions.")
        return
    columns = [f.name for f in dataclasses.fields(Conflict)]
    rows = [tuple(getattr(c, name) for name in columns) for c in found]
    print_result(QueryResult(columns, ["VARCHAR"] * len(columns), rows), fmt)
