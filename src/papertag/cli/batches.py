"""``papertag batches``: the Batch API batches of ``annotate --batch``, listed or
cancelled."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from .app import app, guard, open_store, out

batches_cli = typer.Typer(
    help="The Batch API batches of `annotate --batch`: list them, or cancel one.",
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(batches_cli, name="batches")


@batches_cli.callback(invoke_without_command=True)
def batches(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the batches this database sent, newest first, with their status and counts as
    last seen (`annotate --batch` or `--wait` asks the server again). Subcommand: `cancel ID`."""
    if ctx.invoked_subcommand is not None:
        return
    from ..annotate.batch import list_batches

    store = open_store(read_only=True)
    with store:
        rows = guard(lambda: list_batches(store))
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        **{k: v for k, v in vars(b).items() if not k.endswith("_at")},
                        "created_at": b.created_at.isoformat(),
                        "collected_at": b.collected_at.isoformat() if b.collected_at else None,
                    }
                    for b in rows
                ]
            )
        )
        return
    if not rows:
        out.print("no batches (send some with `papertag annotate --annotator llm --batch`)")
        return
    table = Table("batch", "model", "status", "requests", "done", "failed", "created", "collected")
    for b in rows:
        table.add_row(
            b.batch_id or b.batch_uid,
            b.model,
            b.status + (f" ({b.error})" if b.error else ""),
            str(b.requests),
            "" if b.completed is None else str(b.completed),
            "" if b.failed is None else str(b.failed),
            b.created_at.strftime("%Y-%m-%d %H:%M"),
            b.collected_at.strftime("%Y-%m-%d %H:%M") if b.collected_at else "open",
        )
    out.print(table)


@batches_cli.command("cancel")
def batches_cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch's id (`papertag batches`).")],
    api_key_env: Annotated[
        str,
        typer.Option(help="Environment variable holding the API key (a local server needs none)."),
    ] = "OPENAI_API_KEY",
) -> None:
    """Ask the server to cancel a batch. Its answers so far are kept and stored by the
    next `annotate` run; its other papers go back to the queue."""
    from ..annotate.batch import cancel_batch

    store = open_store()
    with store:
        info = guard(lambda: cancel_batch(store, batch_id, api_key_env=api_key_env))
    out.print(
        f"batch {info.batch_id or info.batch_uid}: {info.status}; the next `papertag annotate` "
        "of this annotator collects what it finished and queues the rest again"
    )
