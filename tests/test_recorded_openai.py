"""Replay real recordings of the hosted OpenAI API (and compatible hosts) through a run.

The cassettes live in ../shared/external/openai_cassettes (recorded by other
projects against the real servers); Ruby VCR files are converted to vcrpy's
format at test time. They were recorded for other prompts, so they are matched
on method and path only: what they test is how papertag handles each answer. Each
replays through ``papertag.annotate.annotate``, the engine ``papertag annotate`` runs
(its thread pool, the client, the transport, the writer), into a database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml

from papertag.annotate import AnnotateReport, annotate_papers
from papertag.db import Store
from papertag.errors import ProviderError
from papertag.ingest import ingest_digests

from .conftest import SHARED, FakeTime

CASSETTES = SHARED / "external" / "openai_cassettes"
PAPER = {
    "title": "Tiny Quant",
    "abstract": "We propose a 4-bit quantization method that reduces memory by 3x.",
}


def replay(path: Path, match_on: tuple[str, ...] = ("method", "path")) -> Any:
    return vcr.VCR(record_mode="none", match_on=list(match_on)).use_cassette(
        str(path), allow_playback_repeats=True
    )


def from_ruby_vcr(path: Path, tmp_path: Path) -> Path:
    """Ruby VCR 6 (http_interactions, body.string) to vcrpy's YAML."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    interactions = []
    for it in data["http_interactions"]:
        req, resp = it["request"], it["response"]
        interactions.append(
            {
                "request": {
                    "method": req["method"].upper(),
                    "uri": req["uri"],
                    "body": (req.get("body") or {}).get("string"),
                    "headers": {},
                },
                "response": {
                    "status": resp["status"],
                    "headers": {
                        k: v
                        for k, v in (resp.get("headers") or {}).items()
                        if k.lower() != "transfer-encoding"
                    },
                    "body": {"string": (resp.get("body") or {}).get("string", "")},
                },
            }
        )
    out = tmp_path / (path.stem + ".vcrpy.yaml")
    out.write_text(yaml.safe_dump({"version": 1, "interactions": interactions}), encoding="utf-8")
    return out


@pytest.fixture(autouse=True)
def dummy_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")


@pytest.fixture
def paper(tmp_path: Path, db_path: Path) -> Path:
    src = tmp_path / "paper.jsonl"
    src.write_text(json.dumps(PAPER) + "\n", encoding="utf-8")
    assert ingest_digests([src], db_path).ok
    return db_path


def run(db: Path, cassette: Path, fake_time: FakeTime, **kw: Any) -> AnnotateReport:
    """One ``annotate`` run of the paper against the recording, waiting on fake time."""
    match_on = kw.pop("match_on", ("method", "path"))
    with replay(cassette, match_on):
        return annotate_papers(
            db,
            "llm",
            model=kw.pop("model", "gpt-4o-2024-08-06"),
            backoff=0.0,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
            **kw,
        )


def calls(db: Path) -> list[dict[str, Any]]:
    with Store(db) as s:
        cur = s.con.execute("SELECT * FROM llm_calls ORDER BY call_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def failure(db: Path) -> tuple[str, bool]:
    with Store(db) as s:
        row = s.con.execute("SELECT reason, retryable FROM annotation_failures").fetchone()
    assert row is not None
    return str(row[0]), bool(row[1])


def test_refusal_is_a_reasoned_failure(paper: Path, fake_time: FakeTime) -> None:
    cassette = CASSETTES / "openllmetry__refusal_json_schema_gpt-4o.yaml"
    report = run(paper, cassette, fake_time, mode="json_schema", max_reasks=0)
    assert report.failed == 1
    reason, _ = failure(paper)
    assert "refused" in reason and "sorry" in reason.lower()
    (call,) = calls(paper)
    assert call["status"] == 200 and call["refusal"] and call["prompt_tokens"]
    assert call["cost_usd"] is not None and call["cost_usd"] > 0  # gpt-4o is in the price table


def test_finish_reason_length_is_a_reasoned_failure(paper: Path, fake_time: FakeTime) -> None:
    cassette = CASSETTES / "crewai__finish_reason_length_max_tokens.yaml"
    report = run(paper, cassette, fake_time, model="gpt-4o-mini", mode="json_schema", max_reasks=0)
    assert report.failed == 1 and "finish_reason=length" in failure(paper)[0]
    assert [c["finish_reason"] for c in calls(paper)] == ["length"]


def test_real_azure_429_honours_retry_after(
    tmp_path: Path, paper: Path, fake_time: FakeTime
) -> None:
    cassette = from_ruby_vcr(
        CASSETTES / "rubyllm__azure_chat_completions_429_retry-after_RUBYVCR.yml", tmp_path
    )
    base_url = "https://rubyllm.services.ai.azure.com/models"
    report = run(paper, cassette, fake_time, base_url=base_url, max_attempts=3)
    assert report.failed == 1 and report.throttled == 3
    reason, retryable = failure(paper)
    assert "HTTP 429" in reason and "exceeded rate limit" in reason and retryable
    log = calls(paper)
    assert [c["attempt"] for c in log] == [1, 2, 3] and all(c["status"] == 429 for c in log)
    # Retry-After-Ms is 0, so the Retry-After of 1 s decides the wait.
    assert fake_time.slept == [1.0, 1.0]


def test_openrouter_429_without_headers_backs_off_and_fails(
    tmp_path: Path, paper: Path, fake_time: FakeTime
) -> None:
    raw = yaml.safe_load((CASSETTES / "pydanticai__openrouter_429_x3_PARSEDBODY.yaml").read_text())
    interactions = [
        {
            "request": {"method": "POST", "uri": it["request"]["uri"], "body": None, "headers": {}},
            "response": {
                "status": it["response"]["status"],
                "headers": {"content-type": ["application/json"]},
                "body": {"string": json.dumps(it["response"]["parsed_body"])},
            },
        }
        for it in raw["interactions"]
    ]
    cassette = tmp_path / "openrouter.yaml"
    cassette.write_text(yaml.safe_dump({"version": 1, "interactions": interactions}))
    report = run(
        paper, cassette, fake_time, base_url="https://openrouter.ai/api/v1", max_attempts=3
    )
    assert report.failed == 1 and "HTTP 429" in failure(paper)[0]
    assert len(calls(paper)) == 3
    # A 429 that says nothing pauses every request a second (the backoff's own wait is 0 here).
    assert sum(fake_time.slept) == pytest.approx(2.0)


def test_real_400_stops_without_retry(paper: Path, fake_time: FakeTime) -> None:
    cassette = CASSETTES / "mirascope__400_unsupported_param_then_200.yaml"
    with pytest.raises(ProviderError) as exc:
        run(paper, cassette, fake_time, model="gpt-5-mini", max_attempts=5)
    assert "(400)" in str(exc.value) and "stop" in str(exc.value)
    assert len(calls(paper)) == 1 and fake_time.slept == []


def test_500_with_empty_body_is_retried_then_a_failure(
    tmp_path: Path, paper: Path, fake_time: FakeTime
) -> None:
    cassette = from_ruby_vcr(
        CASSETTES / "rubyopenai__500_minimal_probably_handmade_RUBYVCR.yml", tmp_path
    )
    report = run(paper, cassette, fake_time, max_attempts=2)
    assert report.failed == 1 and "HTTP 500" in failure(paper)[0]
    assert [c["status"] for c in calls(paper)] == [500, 500]


def test_strict_tool_call_answer_reaches_validation(paper: Path, fake_time: FakeTime) -> None:
    """A real tools-mode answer (for another schema) is parsed and fails our validation, re-asked, bounded."""
    cassette = CASSETTES / "mirascope__strict_tool_call_gpt-4o.yaml"
    report = run(paper, cassette, fake_time, mode="tools", max_reasks=1)
    assert report.failed == 1 and "after 2 attempts" in failure(paper)[0]
    log = calls(paper)
    assert len(log) == 2
    # The re-ask answers the recorded tool call with the validation errors.
    reask = json.loads(log[1]["request_body"])["messages"]
    assert (
        reask[-1]["role"] == "tool"
        and reask[-1]["tool_call_id"] == reask[-2]["tool_calls"][0]["id"]
    )


def test_real_context_length_400_fails_the_paper_not_the_run(
    tmp_path: Path, paper: Path, fake_time: FakeTime
) -> None:
    """OpenAI's context_length_exceeded (recorded on /v1/responses) is about one paper: a failure row."""
    cassette = from_ruby_vcr(
        CASSETTES / "rubyllm__openai_400_context_length_exceeded_RUBYVCR.yml", tmp_path
    )
    report = run(paper, cassette, fake_time, model="gpt-5-nano", match_on=("method", "host"))
    assert report.failed == 1
    reason, retryable = failure(paper)
    assert "too long for the model's context window" in reason and not retryable
    assert len(calls(paper)) == 1
