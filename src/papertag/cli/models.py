"""``papertag train`` and ``models``: the learned annotator's models, trained and listed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..db.store import default_db_path
from ..schema import ACCEPT_THRESHOLD
from ..taxonomy import FIELDS
from .app import app, err, fail, guard, open_store, out, progress_bar, state


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
    from ..annotators.learned.pipeline import train as run_train

    if model is not None and from_annotator is None:
        raise fail("--model needs --from-annotator", 2)
    db = state.db if state.db is not None else default_db_path()
    with progress_bar("train", None) as (progress, task):
        result = guard(
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
    from ..annotators.learned.registry import list_models

    db = state.db if state.db is not None else default_db_path()
    if db.exists():
        with open_store(read_only=True) as store:
            infos = guard(lambda: list_models(store))
    else:
        infos = guard(lambda: list_models(None))
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
