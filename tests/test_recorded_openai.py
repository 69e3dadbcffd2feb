"""Replay real recordings of the hosted OpenAI API (and compatible hosts) through our annotator.

The cassettes live in ../shared/external/openai_cassettes (recorded by other
projects against the real servers); Ruby VCR files are converted to vcrpy's
format at test time. They were recorded for other prompts, so they are matched
on method and path only: what they test is how papertag handles each answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import vcr
import yaml

from papertag.annotators import PaperInput
from papertag.annotators.llm import LLMAnnotator
from papertag.errors import AnnotationError, ProviderError

from .conftest import SHARED

CASSETTES = SHARED / "external" / "openai_cassettes"
PAPER = PaperInput(
    "p1", "Tiny Quant", "We propose a 4-bit quantization method that reduces memory by 3x."
)


def replay(path: Path) -> Any:
    return vcr.VCR(record_mode="none", match_on=["method", "path"]).use_cassette(
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


def annotator(**kw: Any) -> LLMAnnotator:
    slept: list[float] = []
    ann = LLMAnnotator(model=kw.pop("model", "gpt-4o-2024-08-06"), backoff=0.0, **kw)
    ann.transport.sleep = slept.append
    ann.slept = slept  # type: ignore[attr-defined]
    return ann


def test_refusal_is_a_reasoned_failure() -> None:
    ann = annotator(mode="json_schema", max_reasks=0)
    with (
        replay(CASSETTES / "openllmetry__refusal_json_schema_gpt-4o.yaml"),
        pytest.raises(AnnotationError) as exc,
    ):
        ann.annotate(PAPER)
    assert "refused" in exc.value.reason and "sorry" in exc.value.reason.lower()
    calls = ann.drain_calls()
    assert calls[0].status == 200 and calls[0].refusal and calls[0].prompt_tokens
    assert calls[0].cost_usd is not None and calls[0].cost_usd > 0  # gpt-4o is in the price table


def test_finish_reason_length_is_a_reasoned_failure() -> None:
    ann = annotator(model="gpt-4o-mini", mode="json_schema", max_reasks=0)
    with (
        replay(CASSETTES / "crewai__finish_reason_length_max_tokens.yaml"),
        pytest.raises(AnnotationError) as exc,
    ):
        ann.annotate(PAPER)
    assert "finish_reason=length" in exc.value.reason
    assert ann.drain_calls()[0].finish_reason == "length"


def test_real_azure_429_honours_retry_after(tmp_path: Path) -> None:
    cassette = from_ruby_vcr(
        CASSETTES / "rubyllm__azure_chat_completions_429_retry-after_RUBYVCR.yml", tmp_path
    )
    ann = annotator(base_url="https://rubyllm.services.ai.azure.com/models", max_attempts=3)
    with replay(cassette), pytest.raises(AnnotationError) as exc:
        ann.annotate(PAPER)
    assert "HTTP 429" in exc.value.reason and "exceeded rate limit" in exc.value.reason
    calls = ann.drain_calls()
    assert [c.attempt for c in calls] == [1, 2, 3] and all(c.status == 429 for c in calls)
    # Retry-After-Ms is 0, so the Retry-After of 1 s decides the wait.
    assert ann.slept == [1.0, 1.0]  # type: ignore[attr-defined]


def test_openrouter_429_without_headers_backs_off_and_fails(tmp_path: Path) -> None:
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
    ann = annotator(base_url="https://openrouter.ai/api/v1", max_attempts=3)
    with replay(cassette), pytest.raises(AnnotationError) as exc:
        ann.annotate(PAPER)
    assert "HTTP 429" in exc.value.reason
    assert len(ann.drain_calls()) == 3 and len(ann.slept) == 2  # type: ignore[attr-defined]


def test_real_400_stops_without_retry() -> None:
    ann = annotator(model="gpt-5-mini", max_attempts=5)
    with (
        replay(CASSETTES / "mirascope__400_unsupported_param_then_200.yaml"),
        pytest.raises(ProviderError) as exc,
    ):
        ann.annotate(PAPER)
    assert "(400)" in str(exc.value) and "stop" in str(exc.value)
    assert len(ann.drain_calls()) == 1 and ann.slept == []  # type: ignore[attr-defined]


def test_500_with_empty_body_is_retried_then_a_failure(tmp_path: Path) -> None:
    cassette = from_ruby_vcr(
        CASSETTES / "rubyopenai__500_minimal_probably_handmade_RUBYVCR.yml", tmp_path
    )
    ann = annotator(max_attempts=2)
    with replay(cassette), pytest.raises(AnnotationError) as exc:
        ann.annotate(PAPER)
    assert "HTTP 500" in exc.value.reason
    assert [c.status for c in ann.drain_calls()] == [500, 500]


def test_strict_tool_call_answer_reaches_validation() -> None:
    """A real tools-mode answer (for another schema) is parsed and fails our validation, re-asked, bounded."""
    ann = annotator(mode="tools", max_reasks=1)
    with (
        replay(CASSETTES / "mirascope__strict_tool_call_gpt-4o.yaml"),
        pytest.raises(AnnotationError) as exc,
    ):
        ann.annotate(PAPER)
    assert "after 2 attempts" in exc.value.reason
    assert len(ann.drain_calls()) == 2


def test_real_context_length_400_fails_the_paper_not_the_run(tmp_path: Path) -> None:
    """OpenAI's context_length_exceeded (recorded on /v1/responses) is about one paper: a failure row."""
    cassette = from_ruby_vcr(
        CASSETTES / "rubyllm__openai_400_context_length_exceeded_RUBYVCR.yml", tmp_path
    )
    ann = annotator(model="gpt-5-nano")
    recorder = vcr.VCR(record_mode="none", match_on=["method", "host"])
    with recorder.use_cassette(str(cassette)), pytest.raises(AnnotationError) as exc:
        ann.annotate(PAPER)
    assert not isinstance(exc.value, ProviderError)
    assert "too long for the model's context window" in exc.value.reason
    assert not exc.value.retryable and len(ann.drain_calls()) == 1
