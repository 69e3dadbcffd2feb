"""papertag export: Parquet, CSV and JSON Lines through DuckDB's COPY, read back by other tools."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from papertag.cli import app
from papertag.db import Store
from papertag.errors import ConfigError
from papertag.query.export import export, export_sql

from .conftest import DEMO_PAPERS

runner = CliRunner()


def described(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {sql}").fetchall()]


def test_cli_parquet_default_reads_back_in_duckdb_and_pandas(demo_db: Path) -> None:
    result = runner.invoke(app, ["export", "--format", "parquet"])
    assert result.exit_code == 0, result.output
    out = Path("papertag-export.parquet")
    assert f"wrote {DEMO_PAPERS} papers to papertag-export.parquet" in result.stdout
    con = duckdb.connect()
    file_sql = f"SELECT * FROM '{out}'"
    assert con.execute(f"SELECT count(*) FROM ({file_sql})").fetchone() == (DEMO_PAPERS,)
    with Store(demo_db, read_only=True) as s:
        view_types = described(s.con, "SELECT * FROM paper_labels")
        first = s.con.execute(export_sql() + " LIMIT 1").fetchone()
    assert described(con, file_sql) == view_types
    assert con.execute(f"{file_sql} LIMIT 1").fetchone() == first

    df = pd.read_parquet(out)
    assert len(df) == DEMO_PAPERS
    assert list(df.columns) == [name for name, _ in view_types]
    assert df["min_confidence"].dtype == "float64"
    assert str(df["annotated_at"].dtype).startswith("datetime64")
    row = df.iloc[0]
    assert first is not None
    assert list(row["technique"]) == first[10] and list(row["target_metric"]) == first[12]
    assert row["paper_id"] == first[0] and row["title"] == first[2]
    assert all(len(v) >= 1 for v in df["modality"])


def test_long_csv_one_row_per_current_label(demo_db: Path) -> None:
    result = runner.invoke(app, ["export", "--format", "csv", "--long", "--out", "long.csv"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect()
    with Store(demo_db, read_only=True) as s:
        want = s.scalar("SELECT count(*) FROM labels WHERE current")
    got = con.execute("SELECT count(*), count(DISTINCT paper_id) FROM 'long.csv'").fetchone()
    assert got == (want, DEMO_PAPERS)
    header = Path("long.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:6] == ["paper_id", "arxiv_id", "title", "field", "label", "confidence"]


def test_final_jsonl_one_object_per_annotated_paper(demo_db: Path) -> None:
    result = runner.invoke(app, ["export", "--format", "jsonl", "--final", "--out", "f.jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in Path("f.jsonl").read_text().splitlines()]
    assert len(rows) == DEMO_PAPERS
    with Store(demo_db, read_only=True) as s:
        accepted = s.scalar("SELECT count(*) FROM final_labels")
    # Every accepted label, once; fields with none are empty lists, not null.
    assert sum(len(r[f]) for r in rows for f in ("technique", "modality", "target_metric")) == (
        accepted
    )
    assert all(isinstance(r["technique"], list) for r in rows)
    assert any(r["technique"] == [] for r in rows) and not any(r["reviewed"] for r in rows)


def test_final_long_parquet_keeps_contract_types(demo_db: Path) -> None:
    with Store(demo_db, read_only=True) as s:
        res = export(s, "parquet", "fl.parquet", final=True, long=True)
        want = s.scalar("SELECT count(*) FROM final_labels")
    assert res.rows == want
    con = duckdb.connect()
    types = dict(described(con, "SELECT * FROM 'fl.parquet'"))
    assert types["confidence"] == "DOUBLE" and types["decided_at"] == "TIMESTAMP"
    assert con.execute("SELECT DISTINCT decided_by FROM 'fl.parquet'").fetchall() == [("model",)]


def test_existing_file_is_kept_unless_force(demo_db: Path) -> None:
    Path("papertag-export.csv").write_text("mine\n")
    result = runner.invoke(app, ["export", "--format", "csv"])
    assert result.exit_code == 1
    assert "already exists; pass --force" in result.stderr and "Traceback" not in result.output
    assert Path("papertag-export.csv").read_text() == "mine\n"
    forced = runner.invoke(app, ["export", "--format", "csv", "--force"])
    assert forced.exit_code == 0, forced.output
    assert Path("papertag-export.csv").read_text().startswith("paper_id,")
    assert sorted(p.name for p in Path().iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--format", "xlsx"], 2, "xlsx"),
        (["--out", "no/such/dir/x.parquet"], 1, "does not exist"),
        (["--out", "."], 1, "is a directory"),
        (["--out", "labels.txt"], 1, "cannot tell the format from '.txt'"),
        (["--format", "csv", "--out", "x.parquet"], 1, "the extension says parquet"),
    ],
)
def test_bad_export_options(demo_db: Path, args: list[str], code: int, words: str) -> None:
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == code
    assert words in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "starts"), [("labels.csv", b"paper_id,"), ("l.JSONL", b'{"paper_id":'), ("l", b"PAR1")]
)
def test_format_from_the_out_extension(demo_db: Path, name: str, starts: bytes) -> None:
    result = runner.invoke(app, ["export", "--out", name])
    assert result.exit_code == 0, result.output
    assert Path(name).read_bytes().startswith(starts)


def test_unknown_format_from_the_library(demo_db: Path) -> None:
    with Store(demo_db, read_only=True) as s, pytest.raises(ConfigError, match="parquet, csv"):
        export(s, "xml")


def test_export_of_an_empty_database_has_the_columns(db_path: Path) -> None:
    Store(db_path).close()
    result = runner.invoke(app, ["export", "--out", "e.parquet"])
    assert result.exit_code == 0, result.output
    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM 'e.parquet'").fetchone() == (0,)
    assert [c for c, _ in described(con, "SELECT * FROM 'e.parquet'")][-4:] == [
        "technique",
        "modality",
        "target_metric",
        "min_confidence",
    ]


def test_notebook_call_with_a_path(demo_db: Path) -> None:
    import papertag

    res = papertag.export(demo_db, "parquet", "lib.parquet")
    assert (res.rows, res.path, res.long, res.final) == (
        DEMO_PAPERS,
        Path("lib.parquet"),
        False,
        False,
    )
    assert duckdb.connect().execute("SELECT count(*) FROM 'lib.parquet'").fetchone() == (
        DEMO_PAPERS,
    )
