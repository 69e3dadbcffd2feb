"""``--annotator cascade``: the learned annotator labels every paper, the LLM the doubtful ones.

Runs on copies of the demo database (the five digests, 623 papers labelled by the
learned annotator) against the local test server, through the real openai client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from papertag.annotate import AnnotateReport, Estimate, annotate_papers, estimate
from papertag.annotate.cascade import needs_llm
from papertag.db import Store
from papertag.review import QueueItem, decide

from .batch_server import batch_server
from .conftest import FakeTime, snapshot
from .fault_server import fault_server

LIMIT = 80
#: Nothing listens here: an estimate sends nothing.
NOWHERE = "http://127.0.0.1:9/v1"


def cascade(
    db: Path, url: str, fake_time: FakeTime, limit: int = LIMIT, **options: Any
) -> AnnotateReport:
    """A cascade run on gpt-4o-mini, its retries paced by the fake clock."""
    return annotate_papers(
        db,
        "cascade",
        model="gpt-4o-mini",
        base_url=url,
        limit=limit,
        backoff=0.0,
        sleep=fake_time.sleep,
        **options,
    )


def estimate_cascade(db: Path, **options: Any) -> Estimate:
    return estimate(db, "cascade", model="gpt-4o-mini", base_url=NOWHERE, limit=LIMIT, **options)


def test_needs_llm() -> None:
    sure = [("technique", 0.9), ("modality", 0.95), ("target_metric", 0.85)]
    assert not needs_llm(sure)
    assert needs_llm([*sure, ("technique", 0.5)])  # a label a person would review
    assert not needs_llm([*sure, ("technique", 0.1)])  # below the band: dropped, not doubtful
    assert needs_llm(sure[:2])  # a field without a confident label
    assert needs_llm([])


def llm_papers(db: Path) -> set[str]:
    with Store(db) as s:
        rows = s.con.execute("SELECT paper_id FROM annotations WHERE annotator = 'llm'").fetchall()
    return {r[0] for r in rows}


def test_dry_run_shows_the_share_and_the_run_sends_exactly_it(
    demo_db: Path, fake_time: FakeTime
) -> None:
    before = snapshot(demo_db)
    est = estimate_cascade(demo_db)
    assert snapshot(demo_db) == before  # nothing written, nothing sent
    share = est.cascade
    assert share.papers == LIMIT and 0 < share.sent < LIMIT and est.papers == share.sent
    assert share.saved_usd is not None and share.saved_usd > 0
    with fault_server() as srv:
        report = cascade(demo_db, srv.url, fake_time)
    assert report.cascade.sent == share.sent and report.cascade.papers == LIMIT
    assert srv.count == share.sent and report.done == share.sent
    assert report.cascade.saved_usd == pytest.approx(share.saved_usd)
    assert report.learned.done == 0  # the demo's learned labels are current: not redone
    sent = llm_papers(demo_db)
    assert len(sent) == share.sent
    with Store(demo_db) as s:
        # Both annotations kept for a sent paper; final_labels takes the LLM's only.
        both = s.scalar(
            "SELECT count(DISTINCT annotator) FROM annotations WHERE paper_id = ?", [min(sent)]
        )
        finals = s.con.execute(
            "SELECT paper_id, annotator FROM final_labels WHERE paper_id IN "
            "(SELECT unnest(?::VARCHAR[]))",
            [sorted(sent)],
        ).fetchall()
        kept = s.con.execute(
            "SELECT DISTINCT annotator FROM final_labels WHERE paper_id NOT IN "
            "(SELECT unnest(?::VARCHAR[]))",
            [sorted(sent)],
        ).fetchall()
    assert both == 2 and {a for _, a in finals} == {"llm"}
    assert kept == [("learned",)]
    # Run again: nothing is sent twice.
    with fault_server() as srv:
        again = cascade(demo_db, srv.url, fake_time)
    assert srv.count == 0 and again.done == 0 and again.cascade.sent == share.sent


def test_a_person_decision_wins_over_both(demo_db: Path, fake_time: FakeTime) -> None:
    with fault_server() as srv:
        cascade(demo_db, srv.url, fake_time, limit=20)
    paper = min(llm_papers(demo_db))
    with Store(demo_db) as s:
        row = s.con.execute(
            "SELECT field, label, confidence, evidence, note, annotation_id, annotator, model "
            "FROM labels WHERE paper_id = ? AND annotator = 'llm' AND current LIMIT 1",
            [paper],
        ).fetchone()
        assert row is not None
        field, label, confidence, evidence, note, aid, annotator, model = row
        item = QueueItem(
            paper, field, label, "label", confidence, evidence, note, aid, annotator, model
        )
        decide(s, item, "reject", reviewer="tester")
        finals: list[Any] = s.con.execute(
            "SELECT label, decided_by FROM final_labels WHERE paper_id = ? AND field = ?",
            [paper, field],
        ).fetchall()
    assert (label, "model") not in finals and all(d == "model" for _, d in finals)


def test_cascade_with_batch_sends_only_the_doubtful(demo_db: Path, fake_time: FakeTime) -> None:
    est = estimate_cascade(demo_db, batch=True)
    live = estimate_cascade(demo_db)
    assert est.cost_usd == pytest.approx(live.cost_usd / 2)
    with batch_server(auto=True) as srv:
        report = cascade(
            demo_db,
            srv.url,
            fake_time,
            batch=True,
            wait=True,
            poll_every=30,
            clock=fake_time.clock,
        )
        (bid,) = srv.batches
        assert len(srv.lines(bid)) == est.cascade.sent
    assert srv.count == 0 and report.done == est.cascade.sent
    assert len(llm_papers(demo_db)) == est.cascade.sent


def test_cli_cascade_dry_run_prints_the_share(demo_db: Path) -> None:
    from typer.testing import CliRunner

    from papertag.cli import app

    before = snapshot(demo_db)
    result = CliRunner().invoke(
        app,
        ["annotate", "-a", "cascade", "--model", "gpt-4o-mini", "--base-url",
         NOWHERE, "--limit", str(LIMIT), "--dry-run", "--batch"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    est = estimate_cascade(demo_db)
    assert f"cascade would send {est.cascade.sent} of {LIMIT} papers" in result.stdout
    assert "at the Batch API price" in result.stdout and snapshot(demo_db) == before
