"""``papertag annotate``: checks the options, runs the library's annotate (or its estimate)
with a progress bar, and prints the report."""

from __future__ import annotations

import functools
from typing import Any

import typer

from ..annotate import AnnotateReport
from ..annotate import annotate_papers as run_annotate
from ..annotate import estimate as estimate_run
from ..annotate.shards import DEFAULT_ACTORS, DEFAULT_SHARD_SIZE
from ..annotators import DEFAULT_CONCURRENCY
from .annotate_options import (
    CALLS_LLM,
    Annotator,
    AnnotatorName,
    ApiKeyEnv,
    BaseUrl,
    Batch,
    Concurrency,
    DryRun,
    Engine,
    EngineOption,
    Force,
    LearnedModel,
    Limit,
    MaxCost,
    MaxReasks,
    Mode,
    Model,
    Papers,
    PapersPerCall,
    PollEvery,
    RayActors,
    RayAddress,
    RetryFailed,
    Rpm,
    ShardSize,
    Timeout,
    Tpm,
    VllmConfig,
    VllmModel,
    Wait,
    annotate_kwargs,
)
from .annotate_report import print_estimate, print_report
from .app import app, fail, guard, open_store, progress_bar


@app.command()
def annotate(
    ctx: typer.Context,
    annotator: Annotator = AnnotatorName.learned,
    limit: Limit = None,
    force: Force = False,
    retry_failed: RetryFailed = False,
    model: Model = None,
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = "OPENAI_API_KEY",
    mode: Mode = None,
    max_reasks: MaxReasks = 2,
    concurrency: Concurrency = DEFAULT_CONCURRENCY,
    papers_per_call: PapersPerCall = 1,
    rpm: Rpm = None,
    tpm: Tpm = None,
    timeout: Timeout = 120.0,
    max_cost: MaxCost = None,
    papers: Papers = None,
    dry_run: DryRun = False,
    engine: EngineOption = Engine.local,
    ray_address: RayAddress = None,
    ray_actors: RayActors = DEFAULT_ACTORS,
    shard_size: ShardSize = DEFAULT_SHARD_SIZE,
    vllm_model: VllmModel = None,
    vllm_config: VllmConfig = None,
    batch: Batch = False,
    wait: Wait = False,
    poll_every: PollEvery = 30.0,
    learned_model: LearnedModel = None,
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
    if (batch or wait) and annotator not in CALLS_LLM:
        raise fail("--batch and --wait apply to --annotator llm and cascade only", 2)
    if learned_model and annotator is not AnnotatorName.cascade:
        raise fail("--learned-model applies to --annotator cascade only", 2)
    if engine is Engine.ray and annotator is not AnnotatorName.llm:
        raise fail("--engine ray runs --annotator llm only", 2)
    if engine is Engine.ray and (batch or wait):
        raise fail("--batch and --wait use the Batch API, not --engine ray", 2)
    if engine is Engine.local and (ray_address or vllm_model or vllm_config):
        raise fail("--ray-address, --vllm-model and --vllm-config need --engine ray", 2)
    kwargs = {**annotate_kwargs(annotator, ctx.params), "paper_ids": None, "batch": batch}
    store = open_store()
    if papers:
        from ..query.show import find_paper

        kwargs["paper_ids"] = [guard(lambda q=q: find_paper(store, q)) for q in papers]  # type: ignore[misc]
        kwargs["force"] = True  # chosen papers are annotated again: that is what naming them asks
    # The run opens the file only while it stores a batch, so others can read it meanwhile.
    store.close()
    if dry_run:
        with open_store() as store:
            est = guard(lambda: estimate_run(store, annotator.value, **kwargs))
        print_estimate(est, batch=batch, max_cost=max_cost)
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
                on_start=start,
                on_progress=step,
                wait=wait,
                poll_every=poll_every,
                on_batches=polled,
                **kwargs,
            )
        )
    print_report(report, db=store.path, wait=wait, max_cost=max_cost)
