"""``--engine ray --vllm-model PATH``: vLLM engines in the Ray workers instead of a server.

Built on ``ray.data.llm`` (``vLLMEngineProcessorConfig``, ``build_processor``):

* preprocess turns a paper into the LLM annotator's own messages (so the prompt and its
  version, and with them the annotation key, are the HTTP path's), with the answer's JSON
  schema, each field's ids as an enum, as vLLM's structured-output constraint;
* vLLM engine replicas generate, as many as the config's ``concurrency`` (GPUs);
* :func:`shard_rows` validates each answer with the same pydantic schema and evidence
  check and builds the shard's rows with :class:`Rows`, so the driver loads them as it
  loads the HTTP path's. Each generation is an ``llm_calls`` row: host ``vllm``, path the
  model, the prompt and completion token counts vLLM reports, status 200 for an answer.

One ask per paper: decoding constrained by the schema cannot break it, and an answer whose
evidence is not in the text becomes a failure row (``--retry-failed`` asks again).

Written against ``ray.data.llm`` of Ray 2.60. Machines without a GPU run everything here
but the engine itself (the tests check requests, validation and rows).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from ..annotators import PaperInput
from ..annotators.llm.config import LLMConfig
from ..annotators.llm.prices import estimate_cost
from ..annotators.llm.records import CallRecord
from ..db import utc_now
from ..errors import AnnotationError, ConfigError
from .pending import Pending
from .shards import OUTPUT_SCHEMA, output_row, settle
from .work import Outcome, Work
from .writer import Rows

INSTALL_HINT = "--vllm-model needs Ray's LLM extra and vLLM: pip install 'papertag[vllm]'"
#: ``vLLMEngineProcessorConfig`` arguments unless the config file says otherwise: a bad
#: row becomes a failure row instead of stopping the run.
DEFAULTS: dict[str, Any] = {"concurrency": 1, "batch_size": 64, "should_continue_on_error": True}
#: Where vLLM's engine writes a row's error (``should_continue_on_error``).
ERROR_COLUMN = "__inference_error__"


def load_config(source: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """The processor config: a dict, or a YAML file of one (see examples/ray-vllm.yaml)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the vLLM config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the vLLM config must be a mapping of settings")
    if "model_source" in data:
        raise ConfigError(f"{path}: the model is --vllm-model's, not the config's model_source")
    return data


@dataclass
class VLLMSettings:
    model_source: str
    config: LLMConfig
    processor: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls, model_source: str, source: str | Path | dict[str, Any] | None, options: dict[str, Any]
    ) -> VLLMSettings:
        """The annotator's settings for vLLM: ``--model`` names the model in the annotation
        key (the model directory's name if not given); the answer is constrained by the
        schema (``json_schema`` mode: no schema in the prompt); no key, nothing is sent."""
        settings = dict(options)
        settings.setdefault("model", Path(model_source.rstrip("/")).name or model_source)
        settings.setdefault("mode", "json_schema")
        settings.setdefault("api_key", "")
        return cls(
            model_source, LLMConfig.from_options(settings), {**DEFAULTS, **load_config(source)}
        )

    # -- the stages --------------------------------------------------------------------
    def sampling_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "structured_outputs": {"json": self.config.output_schema},
        }
        if self.config.seed is not None:
            params["seed"] = self.config.seed
        return params

    def preprocess(self, row: dict[str, Any]) -> dict[str, Any]:
        """A paper's request, the paper's columns carried along for the last stage."""
        paper = PaperInput(row["paper_id"], row["title"], row["abstract"])
        return {
            **row,
            "messages": self.config.messages([paper]),
            "sampling_params": self.sampling_params(),
            "started_at": utc_now(),
        }

    def pipeline(self, ray: Any, ds: Any, run_id: str) -> Any:
        """``ds`` (the shards' papers) through vLLM, then into the driver's output rows."""
        try:
            from ray.data.llm import build_processor, vLLMEngineProcessorConfig
        except ImportError:
            raise ConfigError(INSTALL_HINT) from None
        processor = build_processor(
            vLLMEngineProcessorConfig(model_source=self.model_source, **self.processor),
            preprocess=self.preprocess,
        )
        return processor(ds).map_batches(
            shard_rows,
            fn_kwargs={"settings": self, "run_id": run_id},
            batch_size=None,
            batch_format="pyarrow",
        )


def call_record(settings: VLLMSettings, row: dict[str, Any]) -> CallRecord:
    """One generation as an ``llm_calls`` row."""
    request = json.dumps(
        {"messages": row.get("messages"), "sampling_params": settings.sampling_params()},
        ensure_ascii=False,
        sort_keys=True,
        default=str,
    )
    seconds = row.get("time_taken_llm")
    error = row.get(ERROR_COLUMN) or None
    prompt, completion = row.get("num_input_tokens"), row.get("num_generated_tokens")
    return CallRecord(
        started_at=row.get("started_at") or utc_now(),
        host="vllm",
        path=settings.model_source,
        request_hash=hashlib.sha256(request.encode()).hexdigest()[:16],
        request_body=request,
        attempt=1,
        duration_ms=float(seconds) * 1000 if seconds is not None and seconds >= 0 else 0.0,
        status=None if error else 200,
        response_body=row.get("generated_text"),
        prompt_tokens=prompt if not error else None,
        completion_tokens=completion if not error else None,
        error=error,
        paper_ids=[row["paper_id"]],
        cost_usd=estimate_cost(settings.config.model, prompt, completion) if not error else None,
    )


def outcome(settings: VLLMSettings, row: dict[str, Any], record: CallRecord) -> Outcome:
    """A generation validated as the HTTP path validates an answer (``parse_answers``: the
    same schema, evidence check and cut-off rule)."""
    config = settings.config
    out = Outcome(record.started_at, record.duration_ms)
    paper = PaperInput(row["paper_id"], row["title"], row["abstract"])
    if record.error:
        out.error = AnnotationError(
            f"vLLM could not answer: {record.error}", attempts=1, retryable=True
        )
    else:
        cut = (record.completion_tokens or 0) >= config.max_tokens
        body = {
            "id": "vllm",
            "object": "chat.completion",
            "created": 0,
            "model": config.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": record.response_body or ""},
                    "finish_reason": "length" if cut else "stop",
                }
            ],
        }
        (answer,) = config.parse_answers([paper], body)
        out.result, out.error = answer.annotation, answer.error
    if out.error is not None:
        out.error.paper_id, out.error.attempts = paper.paper_id, 1
        out.error.last_completion = record.response_body
    return out


def shard_rows(batch: pa.Table, settings: VLLMSettings, run_id: str) -> pa.Table:
    """vLLM's output rows as the driver's output: each shard's rows for every table."""
    out = []
    for shard, rows in _by_shard(batch):
        built = Rows(settings.config, run_id)
        for row in rows:
            paper = Pending(row["paper_id"], row["title"], row["abstract"], row["content_hash"])
            record = call_record(settings, row)
            settle(built, [paper], Work([outcome(settings, row, record)], [record]))
        out.append(output_row(shard, len(rows), built))
    return pa.Table.from_pylist(out, schema=OUTPUT_SCHEMA)


def _by_shard(batch: pa.Table) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in batch.to_pylist():
        groups.setdefault(row["shard"], []).append(row)
    yield from groups.items()
