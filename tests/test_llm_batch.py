"""``annotate --batch``: the Batch API against the test server (tests/batch_server.py).

Batches move on when a test says so (``advance``, ``finish``), never by wall time; the
kill tests end a real process with SIGKILL at a named step of sending or collecting.
HTTP goes through the real openai client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from papertag.annotate import AnnotateReport, annotate_papers
from papertag.annotate.batch import STEPS, list_batches
from papertag.db import Store
from papertag.ingest import ingest_digests

from .batch_server import BatchServer, batch_server
from .conftest import ABSTRACT, FakeTime, ingest_variants
from .fault_server import Reply, paper_of, papers_of, valid_answer


def run(db: Path, srv: BatchServer, fake_time: FakeTime, **kw: Any) -> AnnotateReport:
    return annotate_papers(
        db,
        "llm",
        model="gpt-4o-mini",
        base_url=srv.url,
        backoff=0.0,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
        **kw,
    )


def annotated(db: Path) -> int:
    with Store(db) as s:
        return int(s.scalar("SELECT count(DISTINCT paper_id) FROM annotations"))


def calls(db: Path, where: str = "TRUE") -> list[dict[str, Any]]:
    with Store(db) as s:
        cur = s.con.execute(f"SELECT * FROM llm_calls WHERE {where} ORDER BY call_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def test_batch_is_sent_then_collected_through_the_live_path(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    ingest_variants(db_path, tmp_path, 5)
    with batch_server() as srv:
        first = run(db_path, srv, fake_time, batch=True)
        # Sent, recorded, and nothing asked live.
        assert srv.count == 0 and len(srv.batches) == 1
        (info,) = first.batch.submitted
        assert info.requests == 5 and info.batch_id in srv.batches and info.open
        assert annotated(db_path) == 0 and first.done == 0
        # The lines are the live requests, byte for byte (their hash is the live hash).
        (bid,) = srv.batches
        lines = srv.lines(bid)
        assert {line["url"] for line in lines} == {"/v1/chat/completions"}
        assert all(line["body"]["model"] == "gpt-4o-mini" for line in lines)

        # Not finished yet: a second run sends nothing again and collects nothing, and a
        # live run leaves the papers of the open batch alone.
        again = run(db_path, srv, fake_time, batch=True)
        assert len(srv.batches) == 1 and again.batch.submitted == [] and srv.count == 0
        live = run(db_path, srv, fake_time)
        assert srv.count == 0 and live.total == 0 and live.batch.waiting

        srv.advance()
        srv.advance()
        done = run(db_path, srv, fake_time, batch=True)
    assert srv.count == 0  # every answer valid: nothing re-asked live
    assert annotated(db_path) == 5 and done.done == 5 and done.replayed == 0
    assert max(srv.batched.values()) == 1
    batch_rows = calls(db_path, "path LIKE '/v1/batches/%'")
    assert len(batch_rows) == 5
    # Half the live price (prompt tokens served from the provider's cache at its price).
    for row in batch_rows:
        cached = row["cached_tokens"] or 0
        fresh = row["prompt_tokens"] - cached
        live = (fresh * 0.15 + cached * 0.075 + row["completion_tokens"] * 0.60) / 1e6
        assert row["cost_usd"] == pytest.approx(live / 2)
    assert done.batch.cost_usd == pytest.approx(sum(r["cost_usd"] for r in batch_rows))
    # Each annotation names the batch answer it was validated from.
    with Store(db_path) as s:
        made_by = {r[0] for r in s.con.execute("SELECT call_uid FROM annotations").fetchall()}
    assert made_by == {r["call_uid"] for r in batch_rows}
    with Store(db_path) as s:
        (b,) = list_batches(s)
    assert b.status == "completed" and not b.open and b.completed == 5


def invalid(request: dict[str, Any]) -> Reply:
    """An answer that fails validation: a label id the taxonomy does not have."""
    body = valid_answer(request)
    message = body["choices"][0]["message"]
    calls = message.get("tool_calls")
    content = json.loads(calls[0]["function"]["arguments"] if calls else message["content"])
    entry = content["papers"][0] if "papers" in content else content
    entry["technique"][0]["id"] = "pwned"
    text = json.dumps(content)
    if calls:
        calls[0]["function"]["arguments"] = text
    else:
        message["content"] = text
    return Reply(body=body)


def route_faults(request: dict[str, Any], n: int) -> Reply | None:
    """Paper 1 is an error line the first time; paper 2's first answer fails validation."""
    title = paper_of(request).get("title", "")
    if title.startswith("Paper 1:") and n == 1:
        return Reply(500, {"error": {"message": "server error on this line"}})
    if title.startswith("Paper 2:") and n == 1:
        return invalid(request)
    return None


def test_error_lines_go_to_a_follow_up_batch_and_invalid_answers_are_reasked_live(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    ingest_variants(db_path, tmp_path, 4)
    with batch_server(route=route_faults) as srv:
        run(db_path, srv, fake_time, batch=True)
        srv.finish()
        second = run(db_path, srv, fake_time, batch=True)
        # Paper 2's answer failed validation: re-asked live once, with the error fed back.
        assert srv.count == 1
        reask = srv.requests[0]["messages"]
        assert len(reask) == 4 and "pwned" in reask[-1]["content"]
        assert annotated(db_path) == 3 and second.batch.unanswered == 1
        # Paper 1's line was in the error file: it goes into a follow-up batch.
        assert len(srv.batches) == 2 and srv.batched["Paper 1: tiny quant"] == 2
        srv.finish()
        run(db_path, srv, fake_time, batch=True)
    assert annotated(db_path) == 4 and srv.count == 1
    assert max(srv.asked.values()) <= 2 and sum(srv.batched.values()) == 5


def test_error_lines_are_asked_live_without_batch(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    ingest_variants(db_path, tmp_path, 4)
    with batch_server(route=route_faults) as srv:
        run(db_path, srv, fake_time, batch=True)
        srv.finish()
        report = run(db_path, srv, fake_time)  # no --batch: what is left goes live
    assert annotated(db_path) == 4 and len(srv.batches) == 1
    assert srv.count == 2 and report.batch.answers == 3


@pytest.mark.parametrize("status", ["expired", "cancelled", "failed"])
def test_ended_batch_keeps_partial_output_and_requeues_the_rest(
    tmp_path: Path, db_path: Path, fake_time: FakeTime, status: str
) -> None:
    ingest_variants(db_path, tmp_path, 5)
    with batch_server() as srv:
        run(db_path, srv, fake_time, batch=True)
        (bid,) = srv.batches
        srv.advance()
        if status == "failed":
            srv.fail(bid)
        else:
            srv.finish(bid, status, done=2)
        report = run(db_path, srv, fake_time, batch=True)
        kept = 0 if status == "failed" else 2
        assert annotated(db_path) == kept and report.batch.answers == kept
        assert len(srv.batches) == 2
        (follow_up,) = [b for b in srv.batches if b != bid]
        assert len(srv.lines(follow_up)) == 5 - kept
        with Store(db_path) as s:
            ended = next(b for b in list_batches(s) if b.batch_id == bid)
        assert ended.status == status and not ended.open
        if status == "failed":
            assert ended.error == "invalid input file"
        srv.finish(follow_up)
        run(db_path, srv, fake_time, batch=True)
    assert annotated(db_path) == 5 and srv.count == 0
    assert max(srv.asked.values()) == 1 and max(srv.batched.values()) <= 2


def test_wait_polls_with_the_injected_sleep_and_shows_progress(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    ingest_variants(db_path, tmp_path, 3)
    seen: list[list[str]] = []
    with batch_server(auto=True) as srv:
        report = run(
            db_path,
            srv,
            fake_time,
            batch=True,
            wait=True,
            poll_every=60,
            on_batches=lambda infos: seen.append([b.status for b in infos]),
        )
    assert annotated(db_path) == 3 and report.done == 3 and srv.count == 0
    assert report.batch.waiting == []
    # Each poll moves the test server's batch one step: created (validating), in
    # progress, completed and collected.
    assert seen == [["validating"], ["in_progress"], []]
    assert fake_time.slept == [60, 60]


KILL = """
import os, signal, sys
from papertag.annotate import annotate_papers

def hook(step):
    if step == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)

annotate_papers(sys.argv[1], "llm", model="gpt-4o-mini", base_url=sys.argv[2], batch=True,
         wait=True, poll_every=0, batch_hook=hook, papers_per_call=int(sys.argv[4]))
"""


@pytest.mark.parametrize(
    ("step", "per_call"), [*((s, 1) for s in STEPS), ("created", 4), ("collect", 4)]
)
def test_kill_at_each_step_loses_nothing_and_pays_nothing_twice(
    tmp_path: Path, db_path: Path, fake_time: FakeTime, step: str, per_call: int
) -> None:
    ingest_variants(db_path, tmp_path, 6)
    with batch_server(auto=True) as srv:
        proc = subprocess.run(
            [sys.executable, "-c", KILL, str(db_path), srv.url, step, str(per_call)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
            timeout=120,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        report = run(
            db_path, srv, fake_time, batch=True, wait=True, poll_every=0, papers_per_call=per_call
        )
    assert annotated(db_path) == 6 and report.stopped is None
    # One batch at the server, each paper in it once, each answered (paid for) once.
    assert len(srv.batches) == 1 and max(srv.batched.values()) == 1
    assert max(srv.asked.values()) == 1 and srv.count == 0
    with Store(db_path) as s:
        assert [b.open for b in list_batches(s)] == [False]
        assert s.scalar("SELECT count(*) FROM llm_calls WHERE path LIKE '/v1/batches/%'") == (
            6 if per_call == 1 else 2
        )


def test_cli_batch_then_wait_then_list_and_cancel(tmp_path: Path, db_path: Path) -> None:
    """As a user types it: --batch exits at once saying how to collect; --wait collects;
    `papertag batches` lists; `batches cancel` cancels an open one."""
    from typer.testing import CliRunner

    from papertag.cli import app

    ingest_variants(db_path, tmp_path, 4)
    runner = CliRunner()
    with batch_server() as srv:
        args = ["annotate", "-a", "llm", "--model", "gpt-4o-mini", "--base-url", srv.url]
        sent = runner.invoke(app, [*args, "--batch"])
        assert sent.exit_code == 0, sent.stderr
        assert "sent batch batch-test" in sent.stdout and "4 papers" in sent.stdout
        assert "run the same command again to collect them (or add --wait)" in sent.stdout
        listed = runner.invoke(app, ["batches"])
        assert "validating" in listed.stdout and "open" in listed.stdout
        srv.auto = True
        waited = runner.invoke(app, [*args, "--batch", "--wait", "--poll-every", "0"])
        assert waited.exit_code == 0, waited.stderr
        assert (
            "annotated 4" in waited.stdout and "collected 1 batch(es): 4 answers" in waited.stdout
        )
        # A new paper in a batch, then cancelled before the server ran it.
        src = tmp_path / "more.jsonl"
        src.write_text(json.dumps({"title": "One more", "abstract": ABSTRACT}) + "\n")
        assert ingest_digests([src], db_path).ok
        srv.auto = False
        assert runner.invoke(app, [*args, "--batch"]).exit_code == 0
        (open_id,) = [b for b, v in srv.batches.items() if v["status"] == "validating"]
        cancelled = runner.invoke(app, ["batches", "cancel", open_id])
        assert cancelled.exit_code == 0, cancelled.stderr
        assert f"batch {open_id}: cancelling" in cancelled.stdout
        assert srv.batches[open_id]["status"] == "cancelling"
        missing = runner.invoke(app, ["batches", "cancel", "batch-nope"])
        assert missing.exit_code == 1 and "no batch 'batch-nope'" in missing.stderr
    assert annotated(db_path) == 4
    bad = runner.invoke(app, ["annotate", "--batch"])
    assert bad.exit_code == 2 and "--annotator llm and cascade only" in bad.stderr


def test_max_cost_limits_what_a_batch_carries(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    from papertag.annotate import estimate

    ingest_variants(db_path, tmp_path, 5)
    with batch_server() as srv:
        est = estimate(db_path, "llm", model="gpt-4o-mini", base_url=srv.url, batch=True)
        assert est.cost_usd is not None
        # Room for two papers at the batch price, with the fifth over their estimate.
        budget = est.cost_usd / 5 * 1.2 * 2.5
        report = run(db_path, srv, fake_time, batch=True, max_cost=budget)
        (bid,) = srv.batches
        assert len(srv.lines(bid)) == 2 and report.batch.held_back == 3


def test_several_papers_a_request_each_validated_on_its_own(
    tmp_path: Path, db_path: Path, fake_time: FakeTime
) -> None:
    """--papers-per-call 4: one line per four papers; a paper whose entry fails is asked
    again alone, live; the others keep their batch answer."""

    def route(request: dict[str, Any], n: int) -> Reply | None:
        titles = [p.get("title", "") for p in papers_of(request)]
        if len(titles) > 1 and titles[0].startswith("Paper 0:"):
            return invalid(request)  # the first entry of the first request fails
        return None

    ingest_variants(db_path, tmp_path, 6)
    with batch_server(route=route) as srv:
        run(db_path, srv, fake_time, batch=True, papers_per_call=4)
        (bid,) = srv.batches
        assert [len(papers_of(line["body"])) for line in srv.lines(bid)] == [4, 2]
        srv.finish()
        report = run(db_path, srv, fake_time, batch=True, papers_per_call=4)
    assert annotated(db_path) == 6 and report.done == 6 and report.batch.answers == 2
    # One live re-ask: paper 0 alone, its entry and the validation error fed back.
    assert srv.count == 1 and len(papers_of(srv.requests[0])) == 1
    assert papers_of(srv.requests[0])[0]["title"].startswith("Paper 0:")
    rows = calls(db_path, "path LIKE '/v1/batches/%'")
    assert sorted(r["papers"] for r in rows) == [2, 4]
    with Store(db_path) as s:
        made_by = dict(s.con.execute("SELECT paper_id, call_uid FROM annotations").fetchall())
    from_batch = {r["call_uid"] for r in rows}
    assert sum(uid in from_batch for uid in made_by.values()) == 5


@pytest.mark.parametrize("per_call", [1, 4])
def test_a_batch_line_is_the_live_request_byte_for_byte(
    tmp_path: Path, fake_time: FakeTime, per_call: int
) -> None:
    batch_db, live_db = tmp_path / "batch.duckdb", tmp_path / "live.duckdb"
    ingest_variants(batch_db, tmp_path, 4)
    ingest_variants(live_db, tmp_path, 4)
    with batch_server() as srv:
        run(batch_db, srv, fake_time, batch=True, papers_per_call=per_call)
        run(live_db, srv, fake_time, papers_per_call=per_call)
        (bid,) = srv.batches
        # The live run's calls go out concurrently, in any order.
        assert sorted(json.dumps(line["body"]) for line in srv.lines(bid)) == sorted(
            json.dumps(r) for r in srv.requests
        )
    with Store(batch_db) as s:
        sent = {
            r[0] for r in s.con.execute("SELECT request_hash FROM llm_batch_requests").fetchall()
        }
    with Store(live_db) as s:
        live = {r[0] for r in s.con.execute("SELECT request_hash FROM llm_calls").fetchall()}
    assert sent == live and len(sent) == 4 // per_call
