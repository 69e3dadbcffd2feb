"""``papertag annotate`` and ``run`` (pull then annotate)."""

from __future__ import annotations

import functools
import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..annotate import AnnotateReport
from ..annotate import annotate_papers as run_annotate
from ..annotate import estimate as estimate_run
from ..annotate.shards import DEFAULT_ACTORS, DEFAULT_SHARD_SIZE
from ..annotators import DEFAULT_CONCURRENCY, MAX_PAPERS_PER_CALL

if TYPE_CHECKING:
    # Imported by their commands: httpx is a tenth of a second that no other command needs.
    from ..daily import RunReport
from .app import app, err, fail, guard, open_store, out, progress_bar
from .ingest import API_HELP, Since, Until, day_range, pull_summary, pulling


# ------------------------------------------------------------------- annotate
class AnnotatorName(StrEnum):
    learned = "learned"
    rules = "rules"
    llm = "llm"
    cascade = "cascade"


#: The annotators that call a model server (and take the llm options).
_CALLS_LLM = (AnnotatorName.llm, AnnotatorName.cascade)


class Engine(StrEnum):
    local = "local"
    ray = "ray"


SCALING = "Scaling out (--engine ray)"


@app.command()
def annotate(
    annotator: Annotated[
        AnnotatorName,
        typer.Option(
            "--annotator",
            "-a",
            help="Which annotator: `learned` (a local model trained on labelled papers) and "
            "`rules` (keyword patterns) are offline and free; `llm` calls a model server; "
            "`cascade` runs `learned` on every paper and `llm` only on those it is unsure of "
            "(a label in the review band, or a field without a confident label).",
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
    papers_per_call: Annotated[
        int,
        typer.Option(
            help="llm: papers one request labels (1 to 32). More papers a call share the prompt's "
            "fixed part (instructions, label list, schema): 8 send about a quarter of the prompt "
            "tokens a paper that 1 does. Each paper is still validated on its own, and one whose "
            "answer fails is asked again alone.",
            min=1,
            max=MAX_PAPERS_PER_CALL,
        ),
    ] = 1,
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
            help="Print how many papers would be sent and their estimated tokens and cost "
            "(cascade: the share it would send); send nothing.",
        ),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="llm: where the model is called from: `local` (threads of this process) or "
            "`ray` (actors of a Ray cluster, or of a Ray runtime on this machine; results come "
            "back as Parquet shards and are loaded here; pip install 'papertag[ray]').",
            rich_help_panel=SCALING,
        ),
    ] = Engine.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="The Ray cluster to join, as its head's host:port (default $RAY_ADDRESS, "
            "else a Ray runtime started on this machine for the run).",
            show_default=False,
            rich_help_panel=SCALING,
        ),
    ] = None,
    ray_actors: Annotated[
        int,
        typer.Option(
            help="Actors, each an LLM client with its share of --concurrency, --rpm and --tpm.",
            min=1,
            rich_help_panel=SCALING,
        ),
    ] = DEFAULT_ACTORS,
    shard_size: Annotated[
        int,
        typer.Option(
            help="Papers per shard: the unit of an actor's work and of the files kept beside "
            "the database; a killed run asks again only the shards it had in flight.",
            min=1,
            rich_help_panel=SCALING,
        ),
    ] = DEFAULT_SHARD_SIZE,
    vllm_model: Annotated[
        str | None,
        typer.Option(
            help="Run this model (a directory, or a name vLLM loads) with vLLM in the Ray "
            "workers' GPUs instead of calling a server; --model names it in the annotation "
            "key (default: the directory's name). pip install 'papertag[vllm]'.",
            show_default=False,
            rich_help_panel=SCALING,
        ),
    ] = None,
    vllm_config: Annotated[
        Path | None,
        typer.Option(
            help="YAML of ray.data.llm.vLLMEngineProcessorConfig settings for --vllm-model "
            "(replicas, batch size, engine arguments): see examples/ray-vllm.yaml.",
            show_default=False,
            rich_help_panel=SCALING,
        ),
    ] = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="llm, cascade: send the papers through the server's Batch API (OpenAI's, or "
            "any server with /v1/files and /v1/batches) at half the price, answered within "
            "24 hours. Exits once the batch is created; run the same command again (or add "
            "--wait) to collect the answers. `papertag batches` lists batches.",
        ),
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="llm, cascade: wait for this annotator's open batches to end, polling every "
            "--poll-every seconds, and collect them.",
        ),
    ] = False,
    poll_every: Annotated[
        float, typer.Option(help="With --wait: seconds between two polls of a batch.", min=0)
    ] = 30.0,
    learned_model: Annotated[
        str | None,
        typer.Option(
            help="cascade: the learned annotator's model (as --model is for --annotator learned).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Label every paper that lacks an annotation for the annotator's current key.

    The key is (paper text, annotator, model, prompt version, taxonomy version):
    a second run does nothing; an edited abstract, prompt or taxonomy gives new
    annotations and marks the old ones `current = false` in the `labels` view.

    `--annotator llm` calls OpenAI or any OpenAI-compatible server (vLLM, Ollama,
    llama.cpp); every HTTP call is logged in the `llm_calls` table. Answers are
    journaled as they arrive: if a run is killed (or stopped with Ctrl-C), run the
    same command again and it resumes without paying twice for what it already got.

    `--batch` sends the papers as one batch of the Batch API instead: its file and batch
    ids are stored before each next step, so a killed run never sends a paper twice, and
    every answer is validated as a live one is (what fails is asked again live, what got
    no answer goes into a follow-up batch).

    `--engine ray` runs the same annotator on a Ray cluster (see "Scaling out" in the
    README): the same keys and llm_calls rows; a killed run, run again, loads the shards
    it finished and redoes only those it had in flight.
    """
    if (batch or wait) and annotator not in _CALLS_LLM:
        raise fail("--batch and --wait apply to --annotator llm and cascade only", 2)
    if learned_model and annotator is not AnnotatorName.cascade:
        raise fail("--learned-model applies to --annotator cascade only", 2)
    if engine is Engine.ray and annotator is not AnnotatorName.llm:
        raise fail("--engine ray runs --annotator llm only", 2)
    if engine is Engine.ray and (batch or wait):
        raise fail("--batch and --wait use the Batch API, not --engine ray", 2)
    if engine is Engine.local and (ray_address or vllm_model or vllm_config):
        raise fail("--ray-address, --vllm-model and --vllm-config need --engine ray", 2)
    options = _annotator_options(
        annotator,
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        mode=mode,
        max_reasks=max_reasks,
        concurrency=concurrency,
        papers_per_call=papers_per_call,
        rpm=rpm,
        tpm=tpm,
        timeout=timeout,
        max_cost=max_cost,
        learned_model=learned_model,
    )
    store = open_store()
    paper_ids: list[str] | None = None
    if papers:
        from ..query.show import find_paper

        paper_ids = [guard(lambda q=q: find_paper(store, q)) for q in papers]  # type: ignore[misc]
        force = True  # chosen papers are annotated again: that is what naming them asks
    # The run opens the file only while it stores a batch, so others can read it meanwhile.
    store.close()
    if dry_run:
        with open_store() as store:
            est = guard(
                lambda: estimate_run(
                    store,
                    annotator.value,
                    limit=limit,
                    force=force,
                    retry_failed=retry_failed,
                    max_cost=max_cost,
                    paper_ids=paper_ids,
                    batch=batch,
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
            f"{' at the Batch API price' if batch else ''}{budget}"
        )
        if est.cascade is not None:
            out.print(_cascade_line(est.cascade, sent_word="would send"))
        return
    with progress_bar(f"annotate ({annotator.value})", None) as (progress, task):

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
            if r.unstored:
                parts.append(f"[yellow]{r.unstored} wait for the database (in use)[/]")
            progress.update(task, completed=r.done + r.failed, extra=" · ".join(parts))

        def polled(batches: list[Any]) -> None:
            if batches:
                done = sum(b.completed or 0 for b in batches)
                total = sum(b.requests for b in batches)
                states = ", ".join(sorted({b.status for b in batches}))
                progress.update(
                    task,
                    description=f"{len(batches)} batch(es) {states}",
                    total=total,
                    completed=done,
                    extra=f"next poll in {poll_every:g}s" if wait else "",
                )

        if engine is Engine.ray:
            from ..annotate.ray_engine import annotate_on_ray

            def annotate_with(db: Any, **kw: Any) -> AnnotateReport:
                for name in ("batch", "wait", "poll_every", "on_batches"):
                    kw.pop(name)  # the Batch API's: refused with --engine ray above
                return annotate_on_ray(
                    db,
                    address=ray_address,
                    actors=ray_actors,
                    shard_size=shard_size,
                    vllm_model=vllm_model,
                    vllm_config=vllm_config,
                    **kw,
                )

        else:
            annotate_with = functools.partial(run_annotate, annotator=annotator.value)
        report = guard(
            lambda: annotate_with(
                store.path,
                limit=limit,
                force=force,
                retry_failed=retry_failed,
                max_cost=max_cost,
                paper_ids=paper_ids,
                on_start=start,
                on_progress=step,
                batch=batch,
                wait=wait,
                poll_every=poll_every,
                on_batches=polled,
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
        out.print(f"[dim]{usage}[/]")
    if report.batch is not None:
        _print_batches(report.batch, wait=wait)
    if report.cascade is not None:
        out.print(_cascade_line(report.cascade, sent_word="sent"))
    _print_failures(report)
    if report.unstored:
        kept = (
            "their answers are kept in the journal beside it, and the next `papertag annotate` "
            "stores them without asking again"
            if report.annotator == "llm"
            else "run the same command again to redo them (nothing was paid for)"
        )
        err.print(
            f"[yellow]{report.unstored} results not stored[/]: {escape(str(store.path))} was in use "
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
    papers_per_call: int = 1,
    learned_model: str | None = None,
) -> dict[str, Any]:
    """The annotator's own options, from annotate's (those of another annotator refused)."""
    if annotator is AnnotatorName.cascade:
        llm = _annotator_options(
            AnnotatorName.llm,
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
            papers_per_call=papers_per_call,
        )
        return {**llm, **({"learned_model": learned_model} if learned_model else {})}
    if annotator is AnnotatorName.llm:
        return {
            "model": model,
            "base_url": base_url,
            "api_key_env": api_key_env,
            "mode": mode,
            "max_reasks": max_reasks,
            "concurrency": concurrency,
            "papers_per_call": papers_per_call,
            "rpm": rpm,
            "tpm": tpm,
            "timeout": timeout,
        }
    if base_url or mode or rpm or tpm or max_cost is not None or papers_per_call != 1:
        raise fail(
            "--base-url, --mode, --rpm, --tpm, --max-cost and --papers-per-call apply to "
            "--annotator llm only",
            2,
        )
    if annotator is AnnotatorName.learned:
        return {"model": model}
    if model:
        raise fail("--model applies to --annotator llm and learned only", 2)
    return {}


# ------------------------------------------------------------------------ run
def _annotate_params(ctx: typer.Context) -> dict[str, Any]:
    """The annotate options among a command's extra arguments, parsed and checked by
    annotate's own command: the same options, defaults and errors."""
    root = ctx.find_root()
    group = root.command
    command = group.get_command(root, "annotate") if isinstance(group, TyperGroup) else None
    if command is None:  # pragma: no cover - annotate is a command of this app
        raise fail("no annotate command", 2)
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

    params = _annotate_params(ctx)
    if params["papers"] or params["dry_run"] or params["batch"] or params["wait"]:
        raise fail(
            "--paper, --dry-run, --batch and --wait are annotate's own; run annotates what is new",
            2,
        )
    if params["engine"] != Engine.local:
        raise fail("--engine ray is annotate's own; run annotates with the local engine", 2)
    annotator = AnnotatorName(params["annotator"])
    options = _annotator_options(
        annotator,
        **{
            k: params[k]
            for k in (
                *("model", "base_url", "api_key_env", "mode", "max_reasks", "concurrency"),
                *("papers_per_call", "rpm", "tpm", "timeout", "max_cost", "learned_model"),
            )
        },
    )
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
        out.print(pull_summary(report.pull))
        out.print(_run_summary(report))
    if a.stopped == "interrupted":
        raise typer.Exit(130)
    if not report.ok:
        raise typer.Exit(1)
