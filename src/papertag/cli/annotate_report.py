"""What an annotate run did, as ``papertag annotate`` and ``run`` print it, and the exit
code it gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ..annotate import AnnotateReport, Estimate
from .app import err, out


def print_estimate(est: Estimate, *, batch: bool, max_cost: float | None) -> None:
    """``--dry-run``'s answer: what the run would send and spend."""
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
        f"{' at the Batch API price' if batch else ''}{budget}"
    )
    if est.cascade is not None:
        out.print(_cascade_line(est.cascade, sent_word="would send"))


def print_report(report: AnnotateReport, *, db: Path, wait: bool, max_cost: float | None) -> None:
    """The run's summary, its spend and what is left; raises the exit code of a run that
    failed, was interrupted or stopped at its budget."""
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
        out.print(f"[dim]{_usage(report)}[/]")
    if report.batch is not None:
        _print_batches(report.batch, wait=wait)
    if report.cascade is not None:
        out.print(_cascade_line(report.cascade, sent_word="sent"))
    print_failures(report)
    if report.unstored:
        kept = (
            "their answers are kept beside it (in the journal, or with --engine ray in "
            "finished shards), and the next `papertag annotate` with the same engine stores "
            "them without asking again"
            if report.annotator == "llm"
            else "run the same command again to redo them (nothing was paid for)"
        )
        err.print(
            f"[yellow]{report.unstored} results not stored[/]: {escape(str(db))} was in use "
            f"by another process until the end of the run; {kept}."
        )
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
        raise typer.Exit(1 if report.unstored else 0)
    if report.failed or report.unstored:
        raise typer.Exit(1)


def _usage(report: AnnotateReport) -> str:
    cost = (
        f"${report.cost_usd:,.4f}"
        if report.cost_known
        else "cost unknown (no price for this model; see PAPERTAG_PRICES)"
    )
    cached = (
        f" ({report.cached_tokens / report.prompt_tokens:.0%} from the provider's cache)"
        if report.cached_tokens and report.prompt_tokens
        else ""
    )
    usage = (
        f"{report.calls} calls, {report.prompt_tokens:,} prompt{cached} + "
        f"{report.completion_tokens:,} completion tokens, {cost}"
    )
    if report.throttled:
        usage += f", {report.throttled} answered 429"
    if report.replayed:
        usage += f", {report.replayed} answers reused from an interrupted run (not paid again)"
    if report.recovered:
        usage += f", {report.recovered} journaled calls recovered into llm_calls"
    return usage


def _cascade_line(summary: Any, *, sent_word: str) -> str:
    saved = (
        "cost saved unknown (no price for this model)"
        if summary.saved_usd is None
        else f"about ${summary.saved_usd:,.4f} saved on the others"
    )
    return (
        f"cascade {sent_word} {summary.sent} of {summary.papers} papers to the LLM "
        f"({summary.share:.0%}); the learned annotator's labels stand for the rest: {saved}"
    )


def _print_batches(report: Any, *, wait: bool) -> None:
    """What the Batch API side did, and how to collect what is still out."""
    for b in report.submitted:
        out.print(
            f"sent batch {b.batch_id or b.batch_uid}: {b.papers} papers in {b.requests} requests "
            f"({b.status})"
        )
    if report.collected:
        cost = f", ${report.cost_usd:,.4f} at the batch price" if report.cost_usd else ""
        out.print(
            f"collected {len(report.collected)} batch(es): {report.answers} answers, "
            f"{report.prompt_tokens:,} prompt + {report.completion_tokens:,} completion tokens"
            f"{cost}; {report.unanswered} requests without an answer go again"
        )
    if report.held_back:
        err.print(
            f"[yellow]--max-cost[/]: {report.held_back} papers not sent in a batch this run "
            "(their estimated cost at the batch price would pass it)"
        )
    if report.waiting:
        ids = ", ".join(b.batch_id or b.batch_uid for b in report.waiting)
        hint = "" if wait else "; run the same command again to collect them (or add --wait)"
        out.print(
            f"{len(report.waiting)} batch(es) still at the server ({ids}): their papers are not "
            f"sent again{hint}. `papertag batches` shows them."
        )


def print_failures(report: AnnotateReport) -> None:
    """The first ten papers that failed, one line each, on stderr."""
    for pid, reason in report.failures[:10]:
        short = reason if len(reason) <= 240 else reason[:239] + "…"
        err.print(f"[red]✗[/] {pid}: {escape(short)}")
    if report.failed > 10:
        err.print(f"… and {report.failed - 10} more; see the annotation_failures table")
