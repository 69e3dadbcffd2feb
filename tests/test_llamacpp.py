"""The LLM annotator against a real llama.cpp server (SmolLM2-135M), replayed from cassettes.

Recorded by `make record` (llama-cpp-python's server on 127.0.0.1:8765, temperature
0, seed 0); CI replays them with --record-mode=none. The tiny model labels badly:
these tests check the protocol (schema-constrained output, re-asks after failed
validation, usage, failure rows after the bound, one llm_calls row per HTTP
call, no call on a second run), not label quality. The runs are the command's own
engine at its default concurrency: recordings are matched by paper and turn
(``conftest.LLM_MATCH_ON``), not by the order the threads ask in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from papertag.annotate import AnnotateReport, annotate_papers
from papertag.db import Store
from papertag.ingest import Entry, FileReport, parse_file, write_entries

from .conftest import DIGESTS

LLAMA_URL = os.environ.get("PAPERTAG_RECORD_URL", "http://127.0.0.1:8765/v1")


def three_papers(db: Path) -> None:
    entries = parse_file(DIGESTS[2]).entries[:3]
    with Store(db) as s:
        write_entries(
            s,
            [Entry(i + 1, None, e.title, e.abstract) for i, e in enumerate(entries)],
            digest=None,
            report=FileReport(path="x"),
        )


def run_llm(db: Path, max_reasks: int) -> AnnotateReport:
    return annotate_papers(
        db,
        "llm",
        model="smollm2",
        base_url=LLAMA_URL,
        max_reasks=max_reasks,
        backoff=0.01,
        max_tokens=600,
    )


@pytest.mark.vcr
def test_llamacpp_annotations_or_reasoned_failures(db_path: Path) -> None:
    three_papers(db_path)
    report = run_llm(db_path, 1)
    assert report.done + report.failed == 3
    with Store(db_path) as s:
        calls = s.con.execute(
            "SELECT paper_id, annotation_id, status, finish_reason, prompt_tokens, completion_tokens, "
            "request_body, response_body FROM llm_calls ORDER BY call_id"
        ).fetchall()
        failures = s.con.execute(
            "SELECT reason, last_completion, attempts FROM annotation_failures"
        ).fetchall()
        stored = s.scalar("SELECT count(DISTINCT annotation_id) FROM labels")
        annotation_ids = {
            r[0] for r in s.con.execute("SELECT annotation_id FROM annotations").fetchall()
        }
    assert stored == report.done and len(failures) == report.failed
    # One llm_calls row per HTTP exchange; each carries usage from the server.
    assert 3 <= len(calls) <= 6
    for _pid, _aid, status, finish, tok_in, tok_out, request, response in calls:
        assert status == 200 and finish in {"stop", "length"} and tok_in > 0 and tok_out > 0
        assert '"schema"' in request and "smollm2" in request and response
    for reason, last, attempts in failures:
        assert reason and attempts >= 1 and last
    # A re-ask carries the validation error back to the model.
    reasks = [
        c
        for c in calls
        if "Correct your JSON" in c[6] or "errors" in c[6].split('"role": "user"')[-1]
    ]
    assert len(calls) == 3 or reasks
    # Successful annotations point at the calls that made them.
    assert {c[1] for c in calls if c[1]} == annotation_ids


@pytest.mark.vcr
def test_llamacpp_second_run_makes_no_call(db_path: Path) -> None:
    three_papers(db_path)
    first = run_llm(db_path, 0)
    assert first.done + first.failed == 3
    with Store(db_path) as s:
        n_calls = s.scalar("SELECT count(*) FROM llm_calls")
    assert n_calls == 3  # max_reasks=0: one call per paper
    second = run_llm(db_path, 0)
    # Annotated papers are done and invalid answers are settled: nothing is sent again.
    assert (second.total, second.skipped) == (0, 3)
    with Store(db_path) as s:
        assert s.scalar("SELECT count(*) FROM llm_calls") == n_calls
