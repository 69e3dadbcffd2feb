"""What a new user of ``--annotator llm`` meets first (issue 17, item 11): a dry run needs no
key (it sends nothing), and a server that cannot be reached is named with where its
address came from and what to do. Nothing here touches the network: the default
endpoint is tried through a proxy on 127.0.0.1 where nothing listens."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from papertag.annotate import annotate_papers
from papertag.cli import app
from papertag.errors import ProviderError
from papertag.ingest import ingest_digests

from .conftest import FakeTime

ABSTRACT = "We propose a 4-bit post-training quantization method that reduces memory by 3x."


@pytest.fixture
def papers(tmp_path: Path, db_path: Path) -> Path:
    src = tmp_path / "p.jsonl"
    src.write_text(
        "".join(json.dumps({"title": f"Paper {i}", "abstract": ABSTRACT}) + "\n" for i in range(3))
    )
    assert ingest_digests([src], db_path).ok
    return db_path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


def test_dry_run_needs_no_key(papers: Path) -> None:
    res = CliRunner().invoke(app, ["annotate", "-a", "llm", "--model", "gpt-4o-mini", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run, nothing sent: 3 papers would be annotated by llm/gpt-4o-mini" in res.output
    # A real run still asks for the key, before sending anything.
    res = CliRunner().invoke(app, ["annotate", "-a", "llm", "--model", "gpt-4o-mini"])
    assert res.exit_code == 1 and "no API key" in res.output


def test_the_default_endpoint_unreachable_is_named_with_what_to_do(
    papers: Path, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    # Offline as a user without network is: the only way out is a proxy that is not there.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ProviderError) as caught:
        annotate_papers(
            papers,
            "llm",
            model="gpt-4o-mini",
            concurrency=1,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
        )
    message = str(caught.value)
    assert "cannot reach api.openai.com" in message
    assert "the default" in message and "--base-url" in message
    assert "network" in message and "HTTPS_PROXY" in message
    assert "sk-test" not in message


def test_a_base_url_unreachable_is_named_as_given(papers: Path, fake_time: FakeTime) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(ProviderError) as caught:
        annotate_papers(
            papers,
            "llm",
            model="m",
            base_url=url,
            concurrency=1,
            clock=fake_time.clock,
            sleep=fake_time.sleep,
        )
    message = str(caught.value)
    assert f"cannot reach {url} (from --base-url)" in message
    assert "the server is running" in message and "api.openai.com" not in message


def test_a_base_url_from_the_environment_is_named_so(
    papers: Path, monkeypatch: pytest.MonkeyPatch, fake_time: FakeTime
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(ProviderError) as caught:
        annotate_papers(
            papers, "llm", model="m", concurrency=1, clock=fake_time.clock, sleep=fake_time.sleep
        )
    assert f"cannot reach {url} (from $OPENAI_BASE_URL)" in str(caught.value)
