"""``papertag sql``, ``calls``, ``stats``, ``show``, ``export``, ``eval`` and ``report``."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..query.evaluate import evaluate as run_evaluate
from ..query.export import DEFAULT_STEM, ExportFormat
from ..query.export import export as run_export
from ..query.sql import QueryResult, read_sql_file, run_script, run_sql, stats, to_csv, to_json
from ..schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from ..taxonomy import FIELDS
from .annotate_options import AnnotatorName
from .app import app, err, fail, guard, open_store, out, state


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
    store = open_store(read_only=True)
    with store:
        result = guard(
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
        raise fail(
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

    from ..query.show import paper_details
    from ..review.core import evidence_span

    store = open_store(read_only=True)
    with store:
        d = guard(lambda: paper_details(store, paper))
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


def print_result(result: QueryResult, fmt: OutputFormat) -> None:
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
        raise fail("give either a SQL string or --file", 2)
    text = query if query is not None else guard(lambda: read_sql_file(file))  # type: ignore[arg-type]
    store = open_store(read_only=not write)
    with store:
        results = guard(lambda: run_script(store, text))
    shown = [r for r in results if r.columns and not r.status]
    if len(shown) > 1 and fmt is not OutputFormat.table:
        raise fail(
            f"{len(shown)} statements return rows; --format {fmt.value} prints one result: "
            "run them one at a time",
            2,
        )
    for n, result in enumerate(shown or results[-1:]):
        if n:
            out.print()
        print_result(result, fmt)


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
    store = open_store(read_only=True)
    with store:
        result = guard(
            lambda: run_sql(
                store,
                # The columns a person scans; host, attempt and the bodies are in the view.
                "SELECT call_id AS id, strftime(started_at, '%m-%d %H:%M:%S') AS started, paper_id, "
                "papers, model, status, finish_reason AS finish, "
                "prompt_tokens AS tok_in, cached_tokens AS cached, completion_tokens AS tok_out, "
                "round(cost_usd, 6) AS cost_usd, "
                "CAST(round(duration_ms) AS INTEGER) AS ms, error FROM llm_calls "
                "ORDER BY started_at DESC, call_id DESC LIMIT ?",
                [limit],
            )
        )
    print_result(result, fmt)


@app.command("stats")
def stats_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print counts: papers, digests, links, annotations, labels per field."""
    store = open_store(read_only=True)
    with store:
        data: dict[str, Any] = guard(lambda: stats(store))
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
    result = guard(
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
    from ..query.report import write_report  # plotly: imported only by the command that draws

    result = guard(
        lambda: write_report(state.db, output, gold=gold, annotator=annotator.value, model=model)
    )
    s = result.summary
    out.print(
        f"wrote {escape(str(result.path))} ({result.bytes / 1e6:.1f} MB, {len(result.charts)} charts): "
        f"{s['papers']:,} papers, {s['current_labels']:,} current labels, "
        f"{s['reviewed']:,} of {s['review_queue']:,} queued labels reviewed"
    )
