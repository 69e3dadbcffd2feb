"""Replay real recordings of OpenAI's Batch API through ``annotate --batch``.

The cassettes (../shared/external/openai_cassettes, Ruby VCR files recorded by other
projects against api.openai.com, converted to vcrpy's format at test time) are matched
on method and path, in order: a poll gets the recorded answers one after another. They
were recorded for other prompts, so their answers are not annotations: chat requests
(the live re-asks) are let through to the local test server.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import vcr
import yaml

from papertag.annotate import annotate_papers
from papertag.db import Store
from papertag.ingest import ingest_digests

from .conftest import FakeTime
from .fault_server import fault_server
from .test_recorded_openai import CASSETTES, from_ruby_vcr


def papers(db: Path, tmp_path: Path, n: int) -> None:
    src = tmp_path / "papers.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "title": f"Paper {i}",
                    "abstract": f"We propose a 4-bit quantization method that cuts memory {i}x.",
                }
            )
            + "\n"
            for i in range(n)
        ),
        encoding="utf-8",
    )
    assert ingest_digests([src], db).ok


def _live_passes(request: Any) -> Any:
    # A chat request is not in the recording: sent for real, to the local server.
    return None if request.path.endswith("/chat/completions") else request


class Sent(httpx2.BaseTransport):
    """The network transport (which the cassette stands in for), keeping each request
    papertag sends, as it left the client."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.requests: list[httpx2.Request] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests if not r.url.path.endswith("/completions")]


def replay(*paths: Path, tmp_path: Path) -> Any:
    """The recordings, converted and joined into one cassette, played in order."""
    interactions: list[Any] = []
    for path in paths:
        converted = from_ruby_vcr(path, tmp_path)
        interactions += yaml.safe_load(converted.read_text())["interactions"]
    joined = tmp_path / "joined.yaml"
    joined.write_text(yaml.safe_dump({"version": 1, "interactions": interactions}))
    return vcr.VCR(
        record_mode="none", match_on=["method", "path"], before_record_request=_live_passes
    ).use_cassette(str(joined))


PREPARED = datetime(2025, 3, 14, 15, 52, 44)


def batches(db: Path) -> list[dict[str, Any]]:
    with Store(db) as s:
        cur = s.con.execute("SELECT * FROM llm_batches ORDER BY created_at")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def test_real_upload_and_create_are_recorded_before_anything_else(
    tmp_path: Path, db_path: Path, fake_time: FakeTime, monkeypatch: Any
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")
    papers(db_path, tmp_path, 2)
    sent = Sent()
    cassette = replay(
        CASSETTES / "rubyopenai__batch_files_upload_RUBYVCR.yml",
        CASSETTES / "rubyopenai__batches_create_RUBYVCR.yml",
        tmp_path=tmp_path,
    )
    with cassette as played:
        report = annotate_papers(
            db_path, "llm", model="gpt-4o-mini", batch=True, sleep=fake_time.sleep, transport=sent
        )
    assert played.play_count == 2 and played.all_played
    (row,) = batches(db_path)
    assert row["input_file_id"] == "file-SQ38s1FVw83BEb6baok3Av"
    assert row["batch_id"] == "batch_67d450d03c6c8190823ecd6694a8cd79"
    assert row["status"] == "validating" and row["collected_at"] is None
    assert row["requests"] == 2 and row["host"] == "api.openai.com"
    # What was uploaded: a JSONL file of the live requests, purpose=batch.
    upload, create = sent.requests
    assert sent.paths() == ["/v1/files", "/v1/batches"]
    assert b'name="purpose"' in upload.content and b"papertag-pt-" in upload.content
    # The file holds the live requests: one line a paper, the chat body inside.
    assert upload.content.count(b'"url": "/v1/chat/completions"') == 2
    assert json.loads(create.content) == {
        "input_file_id": "file-SQ38s1FVw83BEb6baok3Av",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"papertag_batch": row["batch_uid"]},
    }
    (info,) = report.batch.submitted
    assert info.status == "validating" and report.done == 0


def test_real_full_lifecycle_polls_collects_and_reasks_what_fails_validation(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    """Upload, create, eleven recorded polls (validating -> in_progress -> completed),
    the output file. Its answers (the Responses API's, to other questions) are stored as
    paid calls, replayed through the live path, found to hold no annotation, and asked
    again live."""
    papers(db_path, tmp_path, 2)
    sent = Sent()
    cassette = replay(
        CASSETTES / "rubyllm__openai_batch_full_lifecycle_RUBYVCR.yml", tmp_path=tmp_path
    )
    seen: list[str] = []
    with fault_server() as srv, cassette:
        report = annotate_papers(
            db_path,
            "llm",
            model="gpt-5-nano",
            base_url=srv.url,
            transport=sent,
            batch=True,
            wait=True,
            poll_every=15,
            sleep=fake_time.sleep,
            clock=fake_time.clock,
            on_batches=lambda infos: seen.extend(b.status for b in infos),
        )
    paths = sent.paths()
    assert paths[:2] == ["/v1/files", "/v1/batches"]
    polls = [p for p in paths if p.startswith("/v1/batches/")]
    # The tenth poll is the first to say completed; then the output file is read once.
    assert len(polls) == 10 and paths[-1] == "/v1/files/file-4SnbT9qu8ShH2A1wCvTHNp/content"
    assert seen[0] == "validating" and "in_progress" in seen and fake_time.slept == [15] * 10
    (row,) = batches(db_path)
    assert row["status"] == "completed" and row["completed"] == 2 and row["collected_at"]
    assert report.batch.answers == 2
    with Store(db_path) as s:
        stored = s.con.execute(
            "SELECT response_body FROM llm_calls WHERE path LIKE '/v1/batches/%' ORDER BY paper_id"
        ).fetchall()
        answers = s.con.execute(
            "SELECT count(*) FROM annotations WHERE annotator = 'llm'"
        ).fetchone()
    assert len(stored) == 2 and all('"object": "response"' in b for (b,) in stored)
    # Each recorded answer held no chat choice: the paper was asked again, live, once.
    assert srv.count == 2 and answers == (2,) and report.done == 2 and report.batch.reasks == 2


def test_real_batch_list_finds_the_batch_a_killed_run_created(
    tmp_path: Path, db_path: Path, fake_time: FakeTime, monkeypatch: Any
) -> None:
    """A run killed after creating a batch, before storing its id, left the file's id.
    The next run looks the batch up in the server's list (recorded) and takes it over
    instead of creating a second one."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dummy")
    papers(db_path, tmp_path, 2)
    from papertag.annotators import get_annotator

    ann: Any = get_annotator("llm", model="gpt-4o-mini")
    with Store(db_path) as s:
        s.con.execute(
            "INSERT INTO llm_batches (batch_uid, annotator, model, host, prompt_version, "
            "taxonomy_version, endpoint, requests, papers, status, input_file_id, run_id, "
            "created_at, updated_at) VALUES ('pt-killed', 'llm', 'gpt-4o-mini', "
            "'api.openai.com', ?, ?, '/v1/chat/completions', 2, 2, 'uploaded', "
            "'file-3S6FBiPADASQvE2C5Zm299', 'r', ?, ?)",
            # Prepared when the recorded batch was made (14 March 2025, 15:52:44 UTC).
            [ann.prompt_version, ann.taxonomy.version, PREPARED, PREPARED],
        )
        for i, (pid, content_hash) in enumerate(
            s.con.execute("SELECT paper_id, content_hash FROM papers").fetchall()
        ):
            s.con.execute(
                "INSERT INTO llm_batch_requests VALUES ('pt-killed', ?, 0, ?, ?, 'h', NULL, NULL)",
                [str(i), pid, content_hash],
            )
    ann.close()
    sent = Sent()
    cassette = replay(
        CASSETTES / "rubyopenai__batches_list_completed_RUBYVCR.yml", tmp_path=tmp_path
    )
    with cassette as played:
        report = annotate_papers(
            db_path, "llm", model="gpt-4o-mini", sleep=fake_time.sleep, transport=sent
        )
    # The list read once, no batch created, nothing sent live.
    assert [r.method for r in sent.requests] == ["GET"] and played.play_count == 1
    (row,) = batches(db_path)
    assert row["batch_id"] == "batch_67d450cbeeac8190916d5fa0885ee931"
    assert row["status"] == "validating" and row["collected_at"] is None
    assert report.total == 0 and report.skipped == 2
