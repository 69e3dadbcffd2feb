"""Ingest of many files in one command: read first, written a few transactions at a time.

The database must end as it would after ingesting the files one by one, each file's
report must say what that file added, and each file stays all-or-nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from papertag.cli import app
from papertag.db import Store
from papertag.ingest import FileReport, ingest_digests
from papertag.ingest import write as ingest_write

from .conftest import DIGESTS, HF_API_FILES, content

runner = CliRunner()

ABSTRACT = (
    "We propose a 4-bit post-training quantization method for large language models. "
    "It reduces memory by 3x while keeping perplexity close to the full-precision model."
)


def _jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _digests(db: Path) -> list[tuple[Any, ...]]:
    """Every digest and listing as stored, ids included."""
    with Store(db, read_only=True) as s:
        return s.con.execute(
            "SELECT * EXCLUDE (ingested_at) FROM digests JOIN digest_papers USING (digest_id) "
            "ORDER BY ALL"
        ).fetchall()


def _counts(files: list[FileReport]) -> list[tuple[Any, ...]]:
    return [
        (f.path, f.entries, f.new_papers, f.updated_papers, f.new_links, f.unchanged, f.error)
        for f in files
    ]


def _mixed_inputs(tmp_path: Path) -> list[Path]:
    """Real digests and API days, and small files that touch each other's papers: a text
    changed by a later file (and changed back), the same file twice, a bad file between."""
    first = _jsonl(tmp_path / "first.jsonl", [{"title": "Tiny Quant", "abstract": ABSTRACT}])
    edited = _jsonl(
        tmp_path / "edited.jsonl",
        [
            {"title": "Tiny  Quant", "abstract": ABSTRACT + " Code is released."},
            {"title": "Tiny Quant", "abstract": ABSTRACT + " Code is released."},
        ],
    )
    back = _jsonl(tmp_path / "back.jsonl", [{"title": "tiny quant", "abstract": ABSTRACT}])
    bad = _jsonl(
        tmp_path / "bad.jsonl",
        [{"title": "Sparse Cats", "abstract": ABSTRACT}, {"title": "Orphan"}],
    )
    copy = tmp_path / "copy" / HF_API_FILES[0].name
    copy.parent.mkdir()
    copy.write_bytes(HF_API_FILES[0].read_bytes())
    return [*HF_API_FILES, first, edited, DIGESTS[4], bad, back, copy, HF_API_FILES[0], *DIGESTS]


@pytest.mark.parametrize("batch", [20_000, 7], ids=["one-transaction", "batches-of-7"])
def test_many_files_end_as_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    paths = _mixed_inputs(tmp_path)
    one_by_one = tmp_path / "one.duckdb"
    expected = [fr for p in paths for fr in ingest_digests([p], one_by_one).files]
    # With a small batch, files spill into several transactions and the digests (more
    # entries than a batch) are streamed alone between them.
    monkeypatch.setattr(ingest_write, "BATCH_SIZE", batch)
    together = tmp_path / "together.duckdb"
    read: list[str] = []
    final: list[str] = []
    report = ingest_digests(
        paths,
        together,
        on_read=lambda f: read.append(f.path),
        on_file=lambda f: final.append(f.path),
    )
    assert _counts(report.files) == _counts(expected)
    assert read == final == [str(p) for p in paths]
    assert content(together) == content(one_by_one)
    assert _digests(together) == _digests(one_by_one)
    # The edit and the edit back are both kept, as one by one.
    fr = {f.path: f for f in report.files}
    assert fr[str(tmp_path / "edited.jsonl")].updated_papers == 1
    assert fr[str(tmp_path / "back.jsonl")].updated_papers == 1
    assert [f.error for f in report.failed] == [
        f"{tmp_path / 'bad.jsonl'}: line 2: no 'abstract' or 'summary' key"
    ]
    # Again: nothing new, and the same reports and rows as again one by one.
    again = ingest_digests(paths, together)
    assert again.total("new_papers") == again.total("new_links") == 0
    assert _counts(again.files) == _counts(
        [fr for p in paths for fr in ingest_digests([p], one_by_one).files]
    )
    assert content(together) == content(one_by_one)


def test_a_file_that_fails_half_way_adds_nothing_beside_good_ones(
    tmp_path: Path, db_path: Path
) -> None:
    good = _jsonl(tmp_path / "good.jsonl", [{"title": "Tiny Quant", "abstract": ABSTRACT}])
    half = _jsonl(
        tmp_path / "half.jsonl",
        [{"title": "Sparse Cats", "abstract": ABSTRACT}, {"title": "Orphan"}],
    )
    report = ingest_digests([good, half, DIGESTS[4]], db_path)
    assert [f.error is None for f in report.files] == [True, False, True]
    with Store(db_path) as s:
        titles = {t for (t,) in s.con.execute("SELECT title FROM papers").fetchall()}
        sources = {d for (d,) in s.con.execute("SELECT source FROM digests").fetchall()}
    assert "Tiny Quant" in titles and "Sparse Cats" not in titles
    assert sources == {"good.jsonl", DIGESTS[4].name}


def test_cli_prints_a_summary_failures_and_every_file_with_v(tmp_path: Path) -> None:
    bad = _jsonl(
        tmp_path / "bad.jsonl",
        [{"title": "Sparse Cats", "abstract": ABSTRACT}, {"title": "Orphan"}],
    )
    result = runner.invoke(app, ["ingest", *map(str, HF_API_FILES), str(bad)])
    assert result.exit_code == 1
    n = len(HF_API_FILES) + 1
    assert result.stdout.splitlines() == [
        f"{n} files read: 29 new papers, 0 updated, 29 new links, 0 unchanged, 1 failed"
    ]
    assert result.stderr.splitlines() == [f"✗ {bad}: line 2: no 'abstract' or 'summary' key"]
    verbose = runner.invoke(app, ["ingest", "-v", *map(str, HF_API_FILES)])
    assert verbose.exit_code == 0
    listed = verbose.stdout.splitlines()
    assert len(listed) == len(HF_API_FILES) + 1
    for path, line in zip(HF_API_FILES, listed, strict=False):
        assert line.startswith(f"✓ {path} (hf-api-json): ") and "0 new papers" in line
