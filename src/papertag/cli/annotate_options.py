"""The options of ``papertag annotate``, which ``papertag run`` takes too, and the library
call's keyword arguments they give.

``run`` declares none of them: it has annotate's own command parse them
(:func:`annotate_params`), so the two cannot drift apart in names, defaults or checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ..annotators import MAX_PAPERS_PER_CALL
from .app import fail


class AnnotatorName(StrEnum):
    learned = "learned"
    rules = "rules"
    llm = "llm"
    cascade = "cascade"


#: The annotators that call a model server (and take the llm options).
CALLS_LLM = (AnnotatorName.llm, AnnotatorName.cascade)


class Engine(StrEnum):
    local = "local"
    ray = "ray"


SCALING = "Scaling out (--engine ray)"


def _unset(*names: str, help: str, **settings: Any) -> Any:
    # Their default is "not set": the help says what that means; "[default: None]" would not.
    return typer.Option(*names, help=help, show_default=False, **settings)


Annotator = Annotated[
    AnnotatorName,
    typer.Option(
        "--annotator",
        "-a",
        help="Which annotator: `learned` (a local model trained on labelled papers) and "
        "`rules` (keyword patterns) are offline and free; `llm` calls a model server; "
        "`cascade` runs `learned` on every paper and `llm` only on those it is unsure of "
        "(a label in the review band, or a field without a confident label).",
    ),
]
Limit = Annotated[
    int | None,
    typer.Option(
        help="Only the first N papers (in ingest order); running it again annotates no more.",
        min=0,
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Re-annotate papers that already have an annotation for this key."
    ),
]
RetryFailed = Annotated[
    bool,
    typer.Option(
        "--retry-failed",
        help="Ask again for papers whose last answer failed validation, was refused or cut off "
        "(network and server failures are always retried).",
    ),
]
Model = Annotated[
    str | None,
    _unset(
        help="llm: model name, e.g. gpt-4o-mini or the name a local server serves. "
        "learned: a saved model's name (`papertag models`), `default` for the shipped one, "
        "or a model file; default: the newest model trained into this database, else the "
        "shipped one."
    ),
]
BaseUrl = Annotated[
    str | None,
    _unset(
        help="llm: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1 (default $OPENAI_BASE_URL, else OpenAI)."
    ),
]
ApiKeyEnv = Annotated[
    str,
    typer.Option(help="llm: environment variable holding the API key (a local server needs none)."),
]
Mode = Annotated[
    str | None,
    _unset(
        help="llm: structured-output mode: tools, json_schema, json or md_json "
        "(default: tools on OpenAI, json with a schema elsewhere)."
    ),
]
MaxReasks = Annotated[
    int,
    typer.Option(
        help="llm: re-asks after an answer fails validation, before a failure row.", min=0
    ),
]
Concurrency = Annotated[
    int,
    typer.Option(
        help="llm: requests in flight at once, cut back automatically while the server answers 429.",
        min=1,
    ),
]
PapersPerCall = Annotated[
    int,
    typer.Option(
        help="llm: papers one request labels (1 to 32). More papers a call share the prompt's "
        "fixed part (instructions, label list, schema): 8 send about a quarter of the prompt "
        "tokens a paper that 1 does. Each paper is still validated on its own, and one whose "
        "answer fails is asked again alone.",
        min=1,
        max=MAX_PAPERS_PER_CALL,
    ),
]
Rpm = Annotated[
    float | None,
    _unset(help="llm: at most this many requests a minute (default: learn the server's limit)."),
]
Tpm = Annotated[
    float | None,
    _unset(help="llm: at most this many tokens a minute (prompt estimate + max tokens)."),
]
Timeout = Annotated[
    float,
    typer.Option(help="llm: seconds to wait for one answer before retrying it.", min=0.001),
]
MaxCost = Annotated[
    float | None,
    _unset(
        help="llm: stop starting papers before this run's estimated spend would pass this many "
        "USD (a budget per run: a rerun has its own; prices: built-in table or "
        "$PAPERTAG_PRICES).",
        min=0,
    ),
]
Papers = Annotated[
    list[str] | None,
    _unset(
        "--paper",
        help="Only this paper (a paper id, arXiv id or title words; repeat for several), "
        "annotated again even if it already has an annotation for this key.",
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Print how many papers would be sent and their estimated tokens and cost "
        "(cascade: the share it would send); send nothing.",
    ),
]
EngineOption = Annotated[
    Engine,
    typer.Option(
        help="llm: where the model is called from: `local` (threads of this process) or "
        "`ray` (actors of a Ray cluster, or of a Ray runtime on this machine; results come "
        "back as Parquet shards and are loaded here; pip install 'papertag[ray]').",
        rich_help_panel=SCALING,
    ),
]
RayAddress = Annotated[
    str | None,
    _unset(
        help="The Ray cluster to join, as its head's host:port (default $RAY_ADDRESS, "
        "else a Ray runtime started on this machine for the run).",
        rich_help_panel=SCALING,
    ),
]
RayActors = Annotated[
    int,
    typer.Option(
        help="Actors, each an LLM client with its share of --concurrency, --rpm and --tpm.",
        min=1,
        rich_help_panel=SCALING,
    ),
]
ShardSize = Annotated[
    int,
    typer.Option(
        help="Papers per shard: the unit of an actor's work and of the files kept beside "
        "the database; a killed run asks again only the shards it had in flight.",
        min=1,
        rich_help_panel=SCALING,
    ),
]
VllmModel = Annotated[
    str | None,
    _unset(
        help="Run this model (a directory, or a name vLLM loads) with vLLM in the Ray "
        "workers' GPUs instead of calling a server; --model names it in the annotation "
        "key (default: the directory's name). pip install 'papertag[vllm]'.",
        rich_help_panel=SCALING,
    ),
]
VllmConfig = Annotated[
    Path | None,
    _unset(
        help="YAML of ray.data.llm.vLLMEngineProcessorConfig settings for --vllm-model "
        "(replicas, batch size, engine arguments): see examples/ray-vllm.yaml.",
        rich_help_panel=SCALING,
    ),
]
Batch = Annotated[
    bool,
    typer.Option(
        "--batch",
        help="llm, cascade: send the papers through the server's Batch API (OpenAI's, or "
        "any server with /v1/files and /v1/batches) at half the price, answered within "
        "24 hours. Exits once the batch is created; run the same command again (or add "
        "--wait) to collect the answers. `papertag batches` lists batches.",
    ),
]
Wait = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="llm, cascade: wait for this annotator's open batches to end, polling every "
        "--poll-every seconds, and collect them.",
    ),
]
PollEvery = Annotated[
    float, typer.Option(help="With --wait: seconds between two polls of a batch.", min=0)
]
LearnedModel = Annotated[
    str | None,
    _unset(help="cascade: the learned annotator's model (as --model is for --annotator learned)."),
]

#: The options the llm annotator takes, under the library's names (cascade passes them on).
LLM_OPTIONS = (
    *("model", "base_url", "api_key_env", "mode", "max_reasks", "concurrency"),
    *("papers_per_call", "rpm", "tpm", "timeout"),
)
#: The run's own options: how many papers, and which of them are asked again.
RUN_OPTIONS = ("limit", "force", "retry_failed", "max_cost")


def annotate_kwargs(annotator: AnnotatorName, params: Mapping[str, Any]) -> dict[str, Any]:
    """The library's annotate call's keyword arguments from annotate's parsed options (by
    parameter name), those of another annotator refused with a usage error."""
    return {**_annotator_options(annotator, params), **{k: params[k] for k in RUN_OPTIONS}}


def _annotator_options(annotator: AnnotatorName, params: Mapping[str, Any]) -> dict[str, Any]:
    if annotator in CALLS_LLM:
        options = {k: params[k] for k in LLM_OPTIONS}
        if annotator is AnnotatorName.cascade and params["learned_model"]:
            options["learned_model"] = params["learned_model"]
        return options
    p = params
    llm_only = (p["base_url"], p["mode"], p["rpm"], p["tpm"])
    if any(llm_only) or p["max_cost"] is not None or p["papers_per_call"] != 1:
        raise fail(
            "--base-url, --mode, --rpm, --tpm, --max-cost and --papers-per-call apply to "
            "--annotator llm only",
            2,
        )
    if annotator is AnnotatorName.learned:
        return {"model": p["model"]}
    if p["model"]:
        raise fail("--model applies to --annotator llm and learned only", 2)
    return {}


def annotate_params(ctx: typer.Context) -> dict[str, Any]:
    """The annotate options among a command's extra arguments, parsed and checked by
    annotate's own command: the same options, defaults and errors."""
    root = ctx.find_root()
    group = root.command
    command = group.get_command(root, "annotate") if isinstance(group, TyperGroup) else None
    if command is None:  # pragma: no cover - annotate is a command of this app
        raise fail("no annotate command", 2)
    with command.make_context("run", list(ctx.args), parent=root) as sub:
        return dict(sub.params)
