"""papertag report: one self-contained HTML file, checked in headless Chromium as a person would."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext
from typer.testing import CliRunner

from papertag.cli import app
from papertag.db import Store
from papertag.query.report import write_report
from papertag.schema import ACCEPT_THRESHOLD, DROP_THRESHOLD

from .browser import CHROMIUM, chromium, open_page
from .conftest import SHARED

GOLD = SHARED / "gold" / "dev.jsonl"
CHARTS = [
    "label-counts",
    "cooccurrence",
    "techniques-over-digests",
    "confidence",
    "review-progress",
]
GOLD_CHARTS = ["per-label-f1", "reliability"]
runner = CliRunner()


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with chromium() as ctx:
        yield ctx


def test_report_renders_in_chromium(
    example_db: Path, tmp_path: Path, browser: BrowserContext
) -> None:
    result = runner.invoke(app, ["report", "--out", "report.html", "--gold", str(GOLD)])
    assert result.exit_code == 0, result.output
    assert "7 charts" in result.stdout
    shot = tmp_path / "report.png"
    page = open_page(browser, Path("report.html"), shot)
    assert page.console == []
    # Nothing but the file itself is loaded: no CDN, no font, no tracker.
    assert page.requests == [Path("report.html").resolve().as_uri()]
    assert list(page.charts) == CHARTS + GOLD_CHARTS
    for name, stats in page.charts.items():
        assert stats["svgs"] >= 1 and stats["traces"] >= 1 and stats["marks"] >= 1, (name, stats)
    # Charts with one mark per label/bin drew them all, not a placeholder.
    assert page.charts["label-counts"]["marks"] >= 30
    assert page.charts["per-label-f1"]["marks"] >= 30
    with Store(example_db, read_only=True) as s:
        papers = s.scalar("SELECT count(*) FROM papers")
    assert page.title.startswith("papertag report")
    assert f"{papers:,} papers" in page.header
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 100_000


def test_empty_database_report_says_so(
    db_path: Path, tmp_path: Path, browser: BrowserContext
) -> None:
    Store(db_path).close()
    res = write_report(db_path, tmp_path / "empty.html")
    assert res.charts == CHARTS and res.summary["papers"] == 0
    page = open_page(browser, res.path)
    assert page.console == []
    assert list(page.charts) == CHARTS
    assert "No labels yet" in page.charts["label-counts"]["text"]
    # Review progress still draws its (empty) bars.
    assert page.charts["review-progress"]["traces"] == 2


def test_report_is_self_contained(demo_db: Path) -> None:
    res = write_report(demo_db, "r.html")
    html = Path("r.html").read_text(encoding="utf-8")
    assert res.bytes == len(html.encode("utf-8"))
    assert not re.search(r"<(script|img|iframe)[^>]+src=|<link[^>]+href=", html)
    assert "Plotly.newPlot" in html and html.count('data-chart="') == len(CHARTS)


def test_review_progress_counts_the_queue(demo_db: Path) -> None:
    with Store(demo_db, read_only=True) as s:
        queue = s.scalar(
            "SELECT count(*) FROM (SELECT confidence FROM labels WHERE current UNION ALL "
            "SELECT confidence FROM candidates WHERE current) WHERE confidence >= ? AND confidence < ?",
            [DROP_THRESHOLD, ACCEPT_THRESHOLD],
        )
        accepted = s.scalar("SELECT count(*) FROM final_labels")
    res = write_report(demo_db, "r.html")
    assert res.summary["review_queue"] == queue > 0
    assert res.summary["reviewed"] == 0  # no person has decided anything here
    assert res.summary["final_labels"] == accepted
    html = Path("r.html").read_text(encoding="utf-8")
    assert f"Reviewed 0 of {queue:,} (0%)" in html


def test_bad_gold_file_is_one_line(demo_db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "gold.jsonl"
    bad.write_text('{"title": "x"}\n')
    result = runner.invoke(app, ["report", "--out", "r.html", "--gold", str(bad)])
    assert result.exit_code == 1
    assert "gold.jsonl: line 1" in result.stderr and "Traceback" not in result.output
    assert not Path("r.html").exists()


def test_techniques_per_digest_keeps_same_named_digests_apart(tmp_path: Path) -> None:
    """Two undated files both called papers.txt are two digests, so two bars, not one."""
    from papertag.annotate import annotate_papers
    from papertag.ingest import ingest_digests
    from papertag.query.report import techniques_over_digests

    abstract = "We quantize a language model to 4 bits. Memory falls by 3x, accuracy holds."
    files = []
    for name, title in (("d1", "Tiny Quant"), ("d2", "Small Quant")):
        (tmp_path / name).mkdir()
        files.append(tmp_path / name / "papers.txt")
        files[-1].write_text(f"{title}\n{abstract}\n", encoding="utf-8")
    db = tmp_path / "two.duckdb"
    assert ingest_digests(files, db).ok
    annotate_papers(db, "rules")
    with Store(db, read_only=True) as s:
        chart = techniques_over_digests(s)
        ids = sorted(r[0] for r in s.con.execute("SELECT digest_id FROM digests").fetchall())
    axis = {x for trace in chart.figure.data for x in trace.x}
    assert axis == {f"papers.txt ({d[:8]})" for d in ids} and len(ids) == 2
