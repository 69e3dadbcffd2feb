"""The stable SQL views: the README documents them, the database has them, SQL reaches them.

The README's `## SQL views` blocks and `## Example queries` blocks are read from the
README itself, so a view or an example that drifts from the database fails here.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from papertag.annotate import annotate_papers
from papertag.cli import app
from papertag.db import Store
from papertag.ingest import ingest_digests
from papertag.schema import ACCEPT_THRESHOLD

from .conftest import DEMO_PAPERS, FINAL_LABELS_COLUMNS, ROOT
from .fault_server import Reply, completion, fault_server

README = ROOT / "README.md"
runner = CliRunner()


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def documented_views() -> dict[str, list[tuple[str, str]]]:
    """{view: [(column, type), ...]} from every ### `name` block of `## SQL views`."""
    section = readme_section("SQL views")
    views: dict[str, list[tuple[str, str]]] = {}
    for block in re.split(r"^(?=### )", section, flags=re.M):
        head = re.match(r"### `(\w+)`\n", block)
        if not head:
            continue
        rows = re.findall(r"^\| *([a-z_]+) *\| *([A-Z][A-Z0-9_\[\]]*) *\|", block, re.M)
        views[head.group(1)] = rows
    return views


def example_queries() -> list[tuple[str, list[str], str]]:
    """(question, expected columns, sql) for every ```sql block of `## Example queries`."""
    section = readme_section("Example queries")
    out = []
    for sql in re.findall(r"```sql\n(.*?)```", section, re.S):
        lines = sql.splitlines()
        assert lines[0].startswith("-- ") and lines[1].startswith("-- columns: "), lines[:2]
        columns = [c.strip() for c in lines[1].removeprefix("-- columns: ").split(",")]
        out.append((lines[0].removeprefix("-- "), columns, sql))
    return out


def test_readme_documents_the_stable_views() -> None:
    views = documented_views()
    assert {"papers", "labels", "final_labels", "paper_labels", "llm_calls"} <= set(views)
    assert all(len(cols) >= 5 for cols in views.values())


@pytest.mark.parametrize("view", sorted(documented_views()))
def test_readme_view_columns_match_the_database(view: str, store: Store) -> None:
    described = [(r[0], r[1]) for r in store.con.execute(f"DESCRIBE {view}").fetchall()]
    assert described == documented_views()[view]


def test_final_labels_has_the_contract_columns(store: Store) -> None:
    described = [(r[0], r[1]) for r in store.con.execute("DESCRIBE final_labels").fetchall()]
    assert described == FINAL_LABELS_COLUMNS


def test_readme_has_six_example_queries() -> None:
    questions = [q for q, _, _ in example_queries()]
    assert len(questions) >= 6 and len(set(questions)) == len(questions)


@pytest.mark.parametrize("question", [q for q, _, _ in example_queries()])
def test_readme_example_query_runs(question: str, example_db: Path, tmp_path: Path) -> None:
    _, columns, sql = next(e for e in example_queries() if e[0] == question)
    query = tmp_path / "query.sql"
    query.write_text(sql, encoding="utf-8")
    result = runner.invoke(app, ["sql", "--file", str(query), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == columns
    assert len(rows) >= 2, f"no rows for: {question}"


def test_demo_views_one_row_per_paper(demo_db: Path) -> None:
    with Store(demo_db, read_only=True) as s:
        q = s.scalar
        assert q("SELECT count(*) FROM paper_labels") == DEMO_PAPERS
        assert q("SELECT count(DISTINCT paper_id) FROM paper_labels") == DEMO_PAPERS
        # Lists hold exactly the annotation's labels, in rank order.
        mismatched = q(
            """
            SELECT count(*) FROM paper_labels pl
            WHERE pl.technique <> (SELECT list(label ORDER BY rank) FROM labels l
                                   WHERE l.annotation_id = pl.annotation_id
                                     AND l.field = 'technique')
               OR len(pl.modality) = 0 OR len(pl.target_metric) = 0
               OR pl.min_confidence <> (SELECT min(confidence) FROM labels l
                                        WHERE l.annotation_id = pl.annotation_id)
            """
        )
        assert mismatched == 0
        accepted = q("SELECT count(*) FROM labels WHERE current AND confidence >= ?", [0.8])
        assert q("SELECT count(*) FROM final_labels") == accepted > 0
        assert q(
            "SELECT count(*) FROM final_labels WHERE decided_by = 'model' AND reviewer IS NULL "
            "AND confidence >= ?",
            [ACCEPT_THRESHOLD],
        ) == q("SELECT count(*) FROM final_labels")


def test_stale_annotations_leave_paper_labels_and_final_labels(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    title = "Tiny Quant"
    first.write_text(
        json.dumps(
            {
                "title": title,
                "abstract": "We propose 4-bit post-training quantization of large language "
                "models that reduces memory by 3x with little loss in perplexity.",
            }
        )
        + "\n"
    )
    second.write_text(
        json.dumps(
            {
                "title": title,
                "abstract": "We prune half of the attention heads of a vision transformer and "
                "cut image classification latency by 40% on a phone.",
            }
        )
        + "\n"
    )
    assert ingest_digests([first], db).ok
    annotate_papers(db, "rules")
    assert ingest_digests([second], db).ok
    annotate_papers(db, "rules")
    with Store(db, read_only=True) as s:
        assert s.scalar("SELECT count(*) FROM annotations") == 2
        assert s.scalar("SELECT count(*) FROM labels WHERE NOT current") > 0
        rows = s.con.execute("SELECT annotation_id, modality FROM paper_labels").fetchall()
        current = s.scalar("SELECT annotation_id FROM annotation_status WHERE current")
        assert [r[0] for r in rows] == [current]
        assert "image" in rows[0][1]
        stale = s.scalar(
            "SELECT count(*) FROM final_labels f JOIN annotation_status a USING (annotation_id) "
            "WHERE NOT a.current"
        )
        assert stale == 0


GOOD = {
    "technique": [
        {"id": "quantization", "confidence": 0.95, "evidence": "4-bit post-training quantization"}
    ],
    "modality": [{"id": "text", "confidence": 0.9, "evidence": "large language models"}],
    "target_metric": [{"id": "memory", "confidence": 0.6, "evidence": "reduces memory by 3x"}],
}


def test_two_annotators_give_two_paper_label_rows(tmp_path: Path) -> None:
    db = tmp_path / "two.duckdb"
    src = tmp_path / "p.jsonl"
    src.write_text(
        json.dumps(
            {
                "title": "Tiny Quant",
                "abstract": "We propose a 4-bit post-training quantization method for large "
                "language models that reduces memory by 3x while keeping perplexity close.",
            }
        )
        + "\n"
    )
    assert ingest_digests([src], db).ok
    annotate_papers(db, "rules")
    with fault_server([Reply(body=completion(json.dumps(GOOD)))]) as srv:
        report = annotate_papers(db, "llm", model="fake-model", base_url=srv.url, backoff=0.01)
    assert report.done == 1
    with Store(db, read_only=True) as s:
        rows = s.con.execute(
            "SELECT annotator, model, technique, modality, target_metric FROM paper_labels "
            "ORDER BY annotator"
        ).fetchall()
        final = s.con.execute(
            "SELECT field, label FROM final_labels WHERE annotator = 'llm' ORDER BY field"
        ).fetchall()
    assert [r[:2] for r in rows] == [("llm", "fake-model"), ("rules", "rules")]
    assert rows[0][2:] == (["quantization"], ["text"], ["memory"])
    # memory at 0.6 waits for review: only the two confident LLM labels are final.
    assert final == [("modality", "text"), ("technique", "quantization")]


# --------------------------------------------------------------- SQL from outside
def test_sql_file_and_string_give_the_same_answer(demo_db: Path, tmp_path: Path) -> None:
    sql = "SELECT count(*) AS n FROM paper_labels"
    (tmp_path / "q.sql").write_text(sql + ";\n")
    by_file = runner.invoke(app, ["sql", "--file", str(tmp_path / "q.sql"), "--format", "json"])
    by_arg = runner.invoke(app, ["sql", sql, "--format", "json"])
    assert by_file.exit_code == by_arg.exit_code == 0
    assert json.loads(by_file.stdout) == json.loads(by_arg.stdout) == [{"n": DEMO_PAPERS}]


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELEC * FROM papers", "syntax error"),
        ("SELECT nope FROM paper_labels", "nope"),
        ("SELECT * FROM no_such_view", "no_such_view"),
    ],
)
def test_bad_sql_is_one_readable_line(demo_db: Path, tmp_path: Path, sql: str, words: str) -> None:
    (tmp_path / "bad.sql").write_text(sql)
    for args in (["sql", sql], ["sql", "--file", str(tmp_path / "bad.sql")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "Traceback" not in result.output and result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0]


def test_missing_sql_file_is_reported(demo_db: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sql", "--file", str(tmp_path / "none.sql")])
    assert result.exit_code == 1 and "none.sql" in result.stderr and "cannot read" in result.stderr


def duckdb_cli() -> str:
    # Installed into the venv by duckdb-cli (a dev dependency), beside this Python.
    return str(Path(sys.executable).with_name("duckdb"))


def test_duckdb_cli_then_python_read_only(demo_db: Path) -> None:
    done = subprocess.run(
        [duckdb_cli(), "-readonly", "-csv", str(demo_db), "-c",
         "SELECT count(*) AS n FROM paper_labels; SELECT count(*) AS n FROM final_labels"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    counts = [int(line) for line in done.stdout.split() if line.isdigit()]
    assert counts[0] == DEMO_PAPERS and counts[1] > 0
    con = duckdb.connect(str(demo_db), read_only=True)
    try:
        assert con.sql("SELECT count(*) FROM paper_labels").fetchall() == [(DEMO_PAPERS,)]
        assert con.sql("SELECT count(*) FROM final_labels").fetchall() == [(counts[1],)]
    finally:
        con.close()


def test_busy_database_is_one_line(demo_db: Path) -> None:
    with Store(demo_db):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("papertag")), "sql", "SELECT 1"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "in use by another process" in done.stderr and "Traceback" not in done.stderr
