"""The command line as a user meets it: piped output, several statements, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from papertag.annotate import estimate
from papertag.cli import app
from papertag.db import Store

from .fault_server import fault_server

LONG = "x" * 150
ABSTRACT = (
    "We propose a 4-bit post-training quantization method for large language models that "
    "reduces memory and keeps accuracy."
)


def test_output_piped_to_another_program_is_not_wrapped(db_path: Path) -> None:
    Store(db_path).close()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("papertag")), "--db", str(db_path), "sql",
         f"SELECT '{LONG}' AS long_value, 42 AS answer"],
        capture_output=True, text=True, check=False, env={"COLUMNS": "80", "PATH": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if LONG in line]
    assert len(rows) == 1 and "42" in rows[0]  # the whole row on one line


def test_several_statements_print_each_result(db_path: Path) -> None:
    Store(db_path).close()
    runner = CliRunner()
    result = runner.invoke(app, ["sql", "SELECT 1 AS first_one; SELECT 2 AS second_one"])
    assert result.exit_code == 0, result.stderr
    assert "first_one" in result.stdout and "second_one" in result.stdout
    result = runner.invoke(app, ["sql", "--format", "csv", "SELECT 1 AS a; SELECT 2 AS b"])
    assert result.exit_code == 2
    assert "2 statements return rows; --format csv prints one result" in result.stderr
    # A statement without rows before a query is fine in any format.
    result = runner.invoke(app, ["sql", "--format", "csv", "SET threads = 1; SELECT 7 AS n"])
    assert result.exit_code == 0 and result.stdout.splitlines() == ["n", "7"]


def test_help_is_reflowed_and_shows_no_bool_metavars() -> None:
    runner = CliRunner()
    for command in (["review", "export"], ["review", "import"], ["export"], ["train"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0
        assert "<bool>" not in result.stdout
        lines = [line.strip() for line in result.stdout.splitlines()]
        # A paragraph of the docstring is one flowing text: no line ends mid-sentence
        # just because the source line did.
        assert "decided)" not in lines and "new_label)" not in lines, result.stdout


def test_show_explains_a_papers_labels(demo_db: Path) -> None:
    runner = CliRunner()
    with Store(demo_db) as s:
        pid, title = s.con.execute(
            "SELECT paper_id, title FROM papers WHERE title ILIKE 'Binarized Neural Architecture%'"
        ).fetchone()
        labels = s.con.execute(
            "SELECT label, evidence FROM labels WHERE current AND paper_id = ?", [pid]
        ).fetchall()
    assert labels
    for query in (pid, "binarized NEURAL architecture search"):
        result = runner.invoke(app, ["show", query])
        assert result.exit_code == 0, result.stderr
        assert title in result.stdout
        for label, evidence in labels:
            assert label in result.stdout and evidence in result.stdout
    data = json.loads(runner.invoke(app, ["show", pid, "--json"]).stdout)
    assert data["paper_id"] == pid and data["annotations"][0]["current"] is True
    assert {lab["label"] for lab in data["annotations"][0]["labels"]} >= {x for x, _ in labels}
    result = runner.invoke(app, ["show", "neural"])
    assert result.exit_code == 1 and "matches several papers" in result.stderr
    result = runner.invoke(app, ["show", "no such words anywhere"])
    assert result.exit_code == 1 and "no paper matches" in result.stderr


def test_annotate_paper_runs_the_chosen_papers_again(demo_db: Path) -> None:
    runner = CliRunner()
    with Store(demo_db) as s:
        before = s.scalar("SELECT count(*) FROM annotations")
        pid = s.scalar("SELECT paper_id FROM papers ORDER BY paper_id LIMIT 1")
    assert runner.invoke(app, ["annotate", "-a", "rules"]).exit_code == 0
    result = runner.invoke(app, ["annotate", "-a", "rules", "--paper", pid])
    assert result.exit_code == 0, result.stderr
    assert "annotated 1, skipped 0" in result.stdout
    with Store(demo_db) as s:
        runs = s.con.execute(
            "SELECT done FROM annotation_runs WHERE annotator = 'rules' ORDER BY started_at"
        ).fetchall()
        assert s.scalar("SELECT count(*) FROM annotations") > before
    assert runs[-1] == (1,)


def test_a_max_cost_stop_says_a_rerun_is_a_new_budget(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop message and the behaviour agree: a rerun spends its own budget again, and
    the message says so instead of inviting it as a free resume."""
    papers = tmp_path / "papers.jsonl"
    papers.write_text(
        "".join(
            json.dumps({"title": f"Paper {i}: tiny quant", "abstract": ABSTRACT + f" Variant {i}."})
            + "\n"
            for i in range(30)
        ),
        encoding="utf-8",
    )
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(papers)]).exit_code == 0
    monkeypatch.setenv("PAPERTAG_PRICES", json.dumps({"fake-model": [10.0, 20.0]}))
    with fault_server() as srv:
        # A paper starts while the spend so far plus what it may cost (its estimate with
        # room for re-asks) fits; the server then bills $0.002 a paper: a budget that
        # stops the run part way.
        est = estimate(db_path, "llm", model="fake-model", base_url=srv.url)
        assert est.cost_usd is not None
        budget = round(est.cost_usd / 30 * 2 + 0.01, 4)
        args = ["annotate", "-a", "llm", "--model", "fake-model", "--base-url", srv.url,
                "--concurrency", "1", "--max-cost", str(budget)]  # fmt: skip
        first = runner.invoke(app, args)
        assert first.exit_code == 0, first.stderr
        assert f"stopped at --max-cost {budget:g}" in first.stderr
        assert (
            "a budget for one run" in first.stderr and "spends up to that much more" in first.stderr
        )
        assert "Run the same command again to resume" not in first.stderr
        second = runner.invoke(app, args)
    with Store(db_path) as s:
        runs = s.con.execute(
            "SELECT run_id, sum(cost_usd) FROM llm_calls GROUP BY run_id ORDER BY min(call_id)"
        ).fetchall()
    # Each run spent within its own budget, as the message says: the second one spent again.
    assert second.exit_code == 0
    assert len(runs) == 2 and all(0 < cost <= budget for _, cost in runs)


def test_engine_ray_without_ray_says_how_to_install_it(db_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ray is installed here (make test-ray); the default install has none")
    Store(db_path).close()
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("papertag")), "--db", str(db_path), "annotate",
         "-a", "llm", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--engine", "ray"],
        capture_output=True, text=True, check=False, env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "Error: --engine ray needs Ray: pip install 'papertag[ray]'"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "ray"], "--engine ray runs --annotator llm only"),
        (["-a", "llm", "--model", "m", "--ray-address", "x:1"], "need --engine ray"),
    ],
)
def test_engine_options_that_do_not_go_together(
    db_path: Path, args: list[str], message: str
) -> None:
    Store(db_path).close()
    result = CliRunner().invoke(app, ["--db", str(db_path), "annotate", *args])
    assert result.exit_code == 2 and message in result.output
