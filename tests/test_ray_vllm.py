"""``--engine ray --vllm-model``, as far as a machine without a GPU goes: the worked example
config, the requests vLLM is given, and what its answers become (validated, stored with the
local engine's keys). The engine itself (vLLM in Ray workers) needs a GPU; the rows below
are what ray.data.llm's vLLM stage emits for a paper."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from papertag.annotate.pending import pending_papers
from papertag.annotate.ray_vllm import VLLMSettings, shard_rows
from papertag.annotate.shards import from_ipc
from papertag.annotate.writer import TABLES, annotation_id, write_tables
from papertag.annotators.llm.config import LLMConfig
from papertag.db import Store
from papertag.errors import ConfigError
from papertag.ingest import ingest_digests

from .conftest import ABSTRACT, write_papers
from .fault_server import valid_answer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ray-vllm.yaml"
MODEL = "/models/Qwen2.5-7B-Instruct"


def test_the_example_config_and_the_requests_vllm_is_given() -> None:
    settings = VLLMSettings.build(MODEL, EXAMPLE, {"max_tokens": 800})
    assert settings.processor["concurrency"] == 4 and settings.processor["batch_size"] == 64
    assert settings.processor["engine_kwargs"]["enable_prefix_caching"] is True
    config = settings.config
    # Named by the model's directory; the same prompt (and so key) as the HTTP path's.
    assert config.model == "Qwen2.5-7B-Instruct"
    http = LLMConfig(model=config.model, base_url="http://127.0.0.1:9/v1", mode="json_schema")
    assert (config.prompt_version, config.taxonomy.version) == (
        http.prompt_version,
        http.taxonomy.version,
    )
    row = {"shard": "s", "paper_id": "p1", "title": "T", "abstract": ABSTRACT, "content_hash": "h"}
    request = settings.preprocess(row)
    assert {k: request[k] for k in row} == row
    assert request["messages"] == http.messages([http_paper(row)])
    params = request["sampling_params"]
    assert params["max_tokens"] == 800 and params["temperature"] == 0.0
    # The HTTP path's json_schema, each field's ids an enum, as vLLM's constraint.
    schema = params["structured_outputs"]["json"]
    assert schema == http.output_schema and '"quantization"' in json.dumps(schema)


def http_paper(row: dict[str, Any]) -> Any:
    from papertag.annotators import PaperInput

    return PaperInput(row["paper_id"], row["title"], row["abstract"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("concurrency: [1", "not YAML"),
        ("- a list", "must be a mapping"),
        ("model_source: /elsewhere", "--vllm-model's"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file(
    tmp_path: Path, config: str, message: str
) -> None:
    path = tmp_path / "vllm.yaml"
    path.write_text(config, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        VLLMSettings.build(MODEL, path, {})
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_answers_become_the_local_engines_rows(tmp_path: Path, db_path: Path) -> None:
    titles = ["valid", "evidence not in the text", "engine error", "cut off"]
    src = write_papers(tmp_path / "p.jsonl", [(t, ABSTRACT + f" ({t}).") for t in titles])
    assert ingest_digests([src], db_path).ok
    settings = VLLMSettings.build(MODEL, None, {"max_tokens": 500})
    with Store(db_path) as store:
        todo, _ = pending_papers(store, settings.config)
    rows = []
    for paper in todo:
        row = settings.preprocess(
            {
                "shard": "s0",
                "paper_id": paper.paper_id,
                "title": paper.title,
                "abstract": paper.abstract,
                "content_hash": paper.content_hash,
            }
        )
        answer = json.loads(valid_answer(row)["choices"][0]["message"]["content"])
        if paper.title.startswith("evidence"):
            answer["modality"][0]["evidence"] = "a quote the paper never says"
        out = {
            "generated_text": json.dumps(answer),
            "num_input_tokens": 1200,
            "num_generated_tokens": 500 if paper.title == "cut off" else 90,
            "time_taken_llm": 0.25,
            "__inference_error__": "",
        }
        if paper.title == "engine error":
            out = {"generated_text": "", "num_input_tokens": 0, "num_generated_tokens": 0}
            out |= {"time_taken_llm": -1, "__inference_error__": "CUDA out of memory"}
        rows.append({**row, **out})
    # Two pieces of one shard, as vLLM's batches may cut it.
    pieces = [
        shard_rows(pa.Table.from_pylist(part), settings, "run1") for part in (rows[:1], rows[1:])
    ]
    assert [p["papers"] for piece in pieces for p in piece.to_pylist()] == [1, 3]
    with Store(db_path) as store:
        for piece in pieces:
            for p in piece.to_pylist():
                write_tables(store, {n: from_ipc(p[n]) for n in TABLES if p[n] is not None})
        anns = store.con.execute("SELECT paper_id, annotation_id FROM annotations").fetchall()
        fails = dict(
            store.con.execute(
                "SELECT p.title, f.reason || ' retryable=' || f.retryable FROM annotation_failures f "
                "JOIN papers p USING (paper_id)"
            ).fetchall()
        )
        calls = store.con.execute(
            "SELECT host, path, status, prompt_tokens, completion_tokens, error FROM llm_calls "
            "ORDER BY started_at"
        ).fetchall()
    valid = next(p for p in todo if p.title == "valid")
    # The key the local engine would give the same model's answer.
    assert anns == [
        (valid.paper_id, annotation_id(valid.paper_id, valid.content_hash, settings.config))
    ]
    assert (
        "evidence" in fails["evidence not in the text"]
        and "retryable=false" in fails["evidence not in the text"]
    )
    assert (
        "CUDA out of memory" in fails["engine error"] and "retryable=true" in fails["engine error"]
    )
    assert "cut off" in fails["cut off"]
    assert len(calls) == 4 and all(c[0] == "vllm" and c[1] == MODEL for c in calls)
    assert sorted(str((c[2], c[5])) for c in calls) == [
        "(200, None)",
        "(200, None)",
        "(200, None)",
        "(None, 'CUDA out of memory')",
    ]
