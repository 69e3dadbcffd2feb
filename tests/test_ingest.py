"""Ingest, the store and the CLI around them, on the real digests and on bad input.

Every test runs against its own database (conftest's autouse fixture). The shared
material is read in place from ``../shared``; small inputs are written to tmp_path.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import Result
from typer.testing import CliRunner

from papertag.cli import app
from papertag.db import Store, migrations
from papertag.errors import InputError, StoreError
from papertag.ingest import ingest_digests, ingest_file, parse_file
from papertag.ingest import write as ingest_write

from .conftest import DIGESTS, SHARED, snapshot

HF_API = SHARED / "external" / "hf_api"
API_FILES = [
    SHARED / "samples" / "hf_daily_papers_api_2026-08-21.json",
    *sorted(HF_API.glob("hf_daily_papers_*.json")),
]
ERROR_BODY = HF_API / "hf_api_error_body_deep-diver_papers.json"
REPR_FILE = HF_API / "NOT_API_repo_bug_python_repr_strings_2025-01-02.json"
GOLD = SHARED / "gold" / "dev.jsonl"

FIREFLOW = "FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing"
ABSTRACT = (
    "We propose a 4-bit post-training quantization method for large language models. "
    "It reduces memory by 3x while keeping perplexity close to the full-precision model."
)
OTHER_ABSTRACT = (
    "We distill a video diffusion model into a four-step sampler. Latency drops by 10x "
    "with no loss in human preference scores."
)
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x03\x00\x08\xfc\x02\xfe\xa7\x9a"
    b"\xa0\xa0\x00\x00\x00\x00IEND\xaeB`\x82"
)

runner = CliRunner()


# --------------------------------------------------------------------------- helpers
def write_jsonl(path: Path, rows: list[dict[str, Any]], *, ensure_ascii: bool = True) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def page_text(path: Path, pairs: list[tuple[str, str]], *, blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(f"{t}{sep}{a}" for t, a in pairs) + "\n", encoding="utf-8")
    return path


def good_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "good.jsonl",
        [
            {"title": "Tiny Quant", "abstract": ABSTRACT},
            {"title": "Fast Video Diffusion", "abstract": OTHER_ABSTRACT},
        ],
    )


def cli(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_clean_failure(result: Result) -> None:
    """Exit 1 through typer.Exit, not an exception escaping the command."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Store(db) as s:
        return s.con.execute(sql, params or []).fetchall()


def count(db: Path, table: str) -> int:
    return int(rows(db, f"SELECT count(*) FROM {table}")[0][0])


def titles(db: Path) -> set[str]:
    return {t for (t,) in rows(db, "SELECT title FROM papers")}


# ------------------------------------------------------------- the five real digests
def test_real_digests_give_623_papers_and_692_links(db_path: Path) -> None:
    report = ingest_digests(DIGESTS, db_path)
    assert report.ok, [f.error for f in report.failed]
    assert [f.format for f in report.files] == ["page-text"] * 5
    assert [f.entries for f in report.files] == [211, 219, 80, 116, 66]
    assert report.total("new_papers") == 623
    assert report.total("new_links") == 692
    assert report.total("unchanged") == 0
    assert report.total("updated_papers") == 0
    assert count(db_path, "papers") == 623
    assert count(db_path, "digest_papers") == 692
    assert count(db_path, "digests") == 5
    # One version row per paper, positions 1..n in each digest.
    assert count(db_path, "paper_versions") == 623
    per_digest = rows(
        db_path,
        "SELECT source, count(*), min(position), max(position) FROM digest_papers "
        "JOIN digests USING (digest_id) GROUP BY ALL ORDER BY source",
    )
    assert [(n, lo, hi) for _, n, lo, hi in per_digest] == [
        (n, 1, n) for n in (211, 219, 80, 116, 66)
    ]
    assert [d for d, *_ in per_digest] == [p.name for p in DIGESTS]


def test_second_ingest_of_the_digests_adds_nothing(db_path: Path) -> None:
    assert ingest_digests(DIGESTS, db_path).ok
    before = snapshot(db_path)
    again = ingest_digests(DIGESTS, db_path)
    assert again.ok
    assert again.total("new_papers") == 0
    assert again.total("new_links") == 0
    assert again.total("updated_papers") == 0
    assert again.total("unchanged") == 692
    assert [f.unchanged for f in again.files] == [211, 219, 80, 116, 66]
    assert snapshot(db_path) == before


def test_page_chrome_is_removed(db_path: Path) -> None:
    assert ingest_digests(DIGESTS, db_path).ok
    papers = rows(db_path, "SELECT title, abstract FROM papers")
    assert len(papers) == 623
    for title, abstract in papers:
        assert not title.startswith("Subscribe"), title
        for junk in ("{this URL}", "Get trending papers", "byAK and the research community"):
            assert junk not in title and junk not in abstract, (junk, title)
        assert title.lower() not in ("new", "subscribe", "daily papers")
        assert title == title.strip() and "  " not in title and "\n" not in title
        assert "  " not in abstract and "\n" not in abstract
    assert FIREFLOW in {t for t, _ in papers}
    (fireflow_abstract,) = [a for t, a in papers if t == FIREFLOW]
    assert fireflow_abstract.endswith("https://github.com/HolmesShuan/FireFlow.")


def test_titles_and_abstracts_match_the_gold_file(db_path: Path) -> None:
    gold = [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines() if line]
    assert len(gold) == 100
    assert ingest_digests(DIGESTS, db_path).ok
    stored = dict(rows(db_path, "SELECT title, abstract FROM papers"))
    missing = [g["title"] for g in gold if g["title"] not in stored]
    assert missing == []
    # The gold file kept one page artefact that ingest removes.
    assert sum("{this URL}" in g["abstract"] for g in gold) == 1
    for g in gold:
        assert stored[g["title"]] == g["abstract"].replace("{this URL}", ""), g["title"]
    # Every gold paper is listed in the digest the gold file names.
    listed = set(
        rows(
            db_path,
            "SELECT p.title, d.source FROM papers p JOIN digest_papers USING (paper_id) "
            "JOIN digests d USING (digest_id)",
        )
    )
    assert all((g["title"], g["digest"]) in listed for g in gold)


def test_both_page_layouts_parse_to_the_same_entries(tmp_path: Path) -> None:
    pairs = [("Tiny Quant", ABSTRACT), ("Fast Video Diffusion", OTHER_ABSTRACT)]
    dense = parse_file(page_text(tmp_path / "dense.txt", pairs))
    airy = parse_file(page_text(tmp_path / "airy.txt", pairs, blank_lines=True))
    assert [(e.title, e.abstract) for e in dense.entries] == pairs
    assert [(e.title, e.abstract) for e in airy.entries] == pairs
    # Line numbers point at the title lines of each layout.
    assert [e.where for e in dense.entries] == [1, 3]
    assert [e.where for e in airy.entries] == [1, 5]


# ------------------------------------------------------------------- HF API JSON
def _date_in_name(path: Path) -> date:
    m = re.search(r"(\d{4}-\d{2}-\d{2})", path.name)
    assert m
    return date.fromisoformat(m.group(1))


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_hf_api_json_keeps_id_upvotes_keywords_and_listing_date(path: Path, db_path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    parsed = parse_file(path)
    assert parsed.format == "hf-api-json"
    assert len(parsed.entries) == len(raw)
    for e, item in zip(parsed.entries, raw, strict=True):
        paper = item["paper"]
        assert e.arxiv_id == paper["id"]
        assert e.upvotes == paper["upvotes"]
        assert e.keywords == paper.get("ai_keywords")
        # The file is the daily list of the date in its name: that is when each paper was listed.
        assert e.listed_on == _date_in_name(path)
        assert e.published_at == date.fromisoformat(paper["publishedAt"][:10])
        assert "\n" not in e.title and "  " not in e.title and e.title == e.title.strip()
        assert " ".join(paper["title"].split()) == e.title
        assert " ".join(paper["summary"].split()) == e.abstract

    report = ingest_digests([path], db_path)
    assert report.ok and report.files[0].new_papers == len(raw)
    stored = {
        r[0]: r[1:]
        for r in rows(
            db_path,
            "SELECT arxiv_id, upvotes, keywords, url, listed_on FROM papers "
            "JOIN digest_papers USING (paper_id)",
        )
    }
    for item in raw:
        paper = item["paper"]
        upvotes, keywords, url, listed_on = stored[paper["id"]]
        assert upvotes == paper["upvotes"]
        assert keywords == paper.get("ai_keywords")
        assert url == f"https://arxiv.org/abs/{paper['id']}"
        assert listed_on == _date_in_name(path)
    assert rows(db_path, "SELECT digest_date FROM digests") == [(_date_in_name(path),)]
    before = snapshot(db_path)
    again = ingest_digests([path], db_path)
    assert again.total("new_papers") == again.total("new_links") == 0
    assert again.total("unchanged") == len(raw)
    assert snapshot(db_path) == before


def test_all_api_generations_together(db_path: Path) -> None:
    report = ingest_digests(API_FILES, db_path)
    assert report.ok
    n = sum(len(json.loads(p.read_text(encoding="utf-8"))) for p in API_FILES)
    assert count(db_path, "papers") == n == count(db_path, "digest_papers")
    assert rows(db_path, "SELECT count(*) FROM papers WHERE arxiv_id IS NULL") == [(0,)]


# ------------------------------------------------------------------- JSONL and CSV
def test_jsonl_with_summary_and_mixed_case_keys(tmp_path: Path, db_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "Title": "Tiny  Quant\n",
                "SUMMARY": ABSTRACT,
                "Id": "arXiv:2401.12345v2",
                "date": "2024-01-22",
            },
            {
                "title": "Fast Video Diffusion",
                "Abstract": OTHER_ABSTRACT,
                "URL": "https://arxiv.org/abs/2402.00001v1",
            },
            {"title": "No Id Paper", "abstract": "A plain abstract. Nothing else is known."},
        ],
    )
    parsed = parse_file(src)
    assert parsed.format == "jsonl"
    got = [(e.title, e.abstract, e.arxiv_id, e.url, e.listed_on) for e in parsed.entries]
    assert got == [
        ("Tiny Quant", ABSTRACT, "2401.12345", None, date(2024, 1, 22)),
        (
            "Fast Video Diffusion",
            OTHER_ABSTRACT,
            "2402.00001",
            "https://arxiv.org/abs/2402.00001v1",
            None,
        ),
        ("No Id Paper", "A plain abstract. Nothing else is known.", None, None, None),
    ]
    assert ingest_digests([src], db_path).ok
    assert count(db_path, "papers") == 3
    assert rows(db_path, "SELECT listed_on FROM digest_papers ORDER BY position") == [
        (date(2024, 1, 22),),
        (None,),
        (None,),
    ]


def test_jsonl_with_unicode_line_separators_inside_strings(tmp_path: Path) -> None:
    """JSON may carry U+2028/U+0085 raw inside strings; they are not line breaks of JSONL."""
    abstract = "First sentence.\u2028Second sentence\x85 with a NEL. Third\x0cpart."
    src = write_jsonl(
        tmp_path / "u.jsonl",
        [
            {"title": "Separators", "abstract": abstract},
            {"title": "Other", "abstract": OTHER_ABSTRACT},
        ],
        ensure_ascii=False,
    )
    parsed = parse_file(src)
    assert [e.title for e in parsed.entries] == ["Separators", "Other"]
    assert parsed.entries[0].abstract == " ".join(abstract.split())


def test_csv_with_summary_column_and_optional_columns(tmp_path: Path, db_path: Path) -> None:
    src = write_csv(
        tmp_path / "d.csv",
        ["TITLE", "Summary", "arXiv_ID", "Url", "DATE"],
        [
            ["Tiny Quant", ABSTRACT, "2401.12345", "", "2024-01-22"],
            ["Commas, and\nnewlines", "An abstract, with commas.\nAnd a second line.", "", "", ""],
        ],
    )
    parsed = parse_file(src)
    assert parsed.format == "csv"
    assert [(e.title, e.abstract, e.arxiv_id, e.listed_on) for e in parsed.entries] == [
        ("Tiny Quant", ABSTRACT, "2401.12345", date(2024, 1, 22)),
        ("Commas, and newlines", "An abstract, with commas. And a second line.", None, None),
    ]
    # Rows are named by the line they start on (the header is row 1).
    assert [e.where for e in parsed.entries] == [2, 3]
    assert ingest_digests([src], db_path).ok
    assert count(db_path, "papers") == 2


def test_tsv_is_read(tmp_path: Path) -> None:
    src = write_csv(
        tmp_path / "d.tsv", ["title", "abstract", "id"], [["A", ABSTRACT, "2401.1"]], "\t"
    )
    parsed = parse_file(src)
    assert parsed.format == "csv"
    assert [(e.title, e.abstract, e.arxiv_id) for e in parsed.entries] == [("A", ABSTRACT, None)]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("digest.txt", "jsonl"),
        ("digest.dat", "csv"),
        ("digest.csv", "page-text"),
        ("x.txt", "json"),
    ],
)
def test_format_is_detected_from_content_not_extension(
    tmp_path: Path, db_path: Path, name: str, fmt: str
) -> None:
    pairs = [("Tiny Quant", ABSTRACT), ("Fast Video Diffusion", OTHER_ABSTRACT)]
    path = tmp_path / name
    if fmt == "jsonl":
        write_jsonl(path, [{"title": t, "abstract": a} for t, a in pairs])
    elif fmt == "csv":
        write_csv(path, ["title", "abstract"], [list(p) for p in pairs])
    elif fmt == "json":
        path.write_text(
            json.dumps([{"title": t, "summary": a} for t, a in pairs], indent=2), encoding="utf-8"
        )
    else:
        page_text(path, pairs, blank_lines=True)
    parsed = parse_file(path)
    assert parsed.format == fmt
    assert [(e.title, e.abstract) for e in parsed.entries] == pairs
    report = ingest_digests([path], db_path)
    assert report.ok and report.files[0].format == fmt
    assert titles(db_path) == {"Tiny Quant", "Fast Video Diffusion"}


def test_json_object_documents_and_broken_jsonl_are_told_apart(tmp_path: Path) -> None:
    records = [{"title": "Tiny Quant", "abstract": ABSTRACT}]
    pretty = tmp_path / "pretty.txt"
    pretty.write_text(json.dumps({"papers": records}, indent=2), encoding="utf-8")
    assert parse_file(pretty).format == "json"
    one_line = tmp_path / "one.jsonl"
    one_line.write_text(json.dumps({"papers": records}) + "\n\n", encoding="utf-8")
    assert [e.title for e in parse_file(one_line).entries] == ["Tiny Quant"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"title": "x",\n' + json.dumps(records[0]) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.jsonl: line 1: invalid JSON"):
        parse_file(broken)


def test_csv_after_blank_lines_names_rows_by_their_line(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    src.write_text(f"\n\ntitle,abstract\nTiny Quant,{ABSTRACT}\n\nOrphan,\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        parse_file(src)
    assert (info.value.line, info.value.kind) == (6, "row")
    assert "'Orphan' has no abstract" in info.value.reason


def test_spreadsheet_csv_with_semicolons_bom_and_a_link_column(
    tmp_path: Path, db_path: Path
) -> None:
    """What a spreadsheet exports in much of Europe: BOM, ';', CRLF, "Paper Title"."""
    src = tmp_path / "export.csv"
    src.write_bytes(
        "\ufeffPaper Title;Abstract;Link;Authors\r\n"
        f'"Tiny Quant; 4 bits";"{ABSTRACT}";https://arxiv.org/abs/2401.12345v2;"Ada, Alan"\r\n'
        f"Fast Video Diffusion;{OTHER_ABSTRACT};https://example.org/fvd;Bob\r\n".encode()
    )
    parsed = parse_file(src)
    assert parsed.format == "csv"
    assert [(e.title, e.abstract, e.arxiv_id, e.url, e.where) for e in parsed.entries] == [
        ("Tiny Quant; 4 bits", ABSTRACT, "2401.12345", "https://arxiv.org/abs/2401.12345v2", 2),
        ("Fast Video Diffusion", OTHER_ABSTRACT, None, "https://example.org/fvd", 3),
    ]
    assert ingest_digests([src], db_path).ok
    assert rows(db_path, "SELECT arxiv_id FROM papers ORDER BY title") == [(None,), ("2401.12345",)]
    # A record's "Link" is read the same way in JSONL.
    jsonl = write_jsonl(
        tmp_path / "l.jsonl",
        [
            {
                "Title": "Tiny Quant",
                "Abstract": ABSTRACT,
                "Link": "https://arxiv.org/abs/2401.77777v1",
            }
        ],
    )
    assert [e.arxiv_id for e in parse_file(jsonl).entries] == ["2401.77777"]


ARXIV_ATOM = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <link href="http://arxiv.org/api/query?search_query%3Dall%3Aquantization%26id_list%3D%26start%3D0%26max_results%3D2" rel="self" type="application/atom+xml"/>
  <title type="html">ArXiv Query: search_query=all:quantization&amp;id_list=&amp;start=0&amp;max_results=2</title>
  <id>http://arxiv.org/api/cHxbiOdZaP56ODnBPIenZhzg5f8</id>
  <updated>2024-01-05T00:00:00-05:00</updated>
  <opensearch:totalResults xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">1520</opensearch:totalResults>
  <opensearch:startIndex xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">0</opensearch:startIndex>
  <opensearch:itemsPerPage xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">2</opensearch:itemsPerPage>
  <entry>
    <id>http://arxiv.org/abs/2401.01234v2</id>
    <updated>2024-01-04T18:59:59Z</updated>
    <published>2024-01-02T10:00:00Z</published>
    <title>Tiny Quant: 4-bit Post-Training
  Quantization for Large Language Models</title>
    <summary>  We propose a 4-bit post-training quantization method for large language
models. Memory falls by 3x &amp; perplexity holds when bits &lt; 8.
</summary>
    <author>
      <name>Ada Lovelace</name>
    </author>
    <arxiv:comment xmlns:arxiv="http://arxiv.org/schemas/atom">12 pages, 3 figures</arxiv:comment>
    <link href="http://arxiv.org/abs/2401.01234v2" rel="alternate" type="text/html"/>
    <link title="pdf" href="http://arxiv.org/pdf/2401.01234v2" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="cs.LG" scheme="http://arxiv.org/schemas/atom"/>
    <category term="cs.LG" scheme="http://arxiv.org/schemas/atom"/>
  </entry>
  <entry>
    <id>http://arxiv.org/abs/cs/0112017v1</id>
    <updated>2001-12-14T12:00:00Z</updated>
    <published>2001-12-12T09:30:00Z</published>
    <title>Pruning Old Networks</title>
    <summary>We prune networks from an older century. Half the weights go.</summary>
    <author>
      <name>Alan Turing</name>
    </author>
    <link href="http://arxiv.org/abs/cs/0112017v1" rel="alternate" type="text/html"/>
    <link title="pdf" href="http://arxiv.org/pdf/cs/0112017v1" rel="related" type="application/pdf"/>
    <arxiv:primary_category xmlns:arxiv="http://arxiv.org/schemas/atom" term="cs.NE" scheme="http://arxiv.org/schemas/atom"/>
  </entry>
</feed>
"""

ARXIV_RSS = """<?xml version='1.0' encoding='UTF-8'?>
<rss xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom" xmlns:content="http://purl.org/rss/1.0/modules/content/" version="2.0">
  <channel>
    <title>cs.LG updates on arXiv.org</title>
    <link>http://rss.arxiv.org/rss/cs.LG</link>
    <description>cs.LG updates on the arXiv.org e-print archive.</description>
    <atom:link href="https://rss.arxiv.org/rss/cs.LG" rel="self" type="application/rss+xml"/>
    <language>en-us</language>
    <lastBuildDate>Mon, 08 Jan 2024 00:00:00 -0500</lastBuildDate>
    <pubDate>Mon, 08 Jan 2024 00:00:00 -0500</pubDate>
    <item>
      <title>Tiny Quant: 4-bit LLMs</title>
      <link>https://arxiv.org/abs/2401.01234</link>
      <description>arXiv:2401.01234v1 Announce Type: new
Abstract: We propose a 4-bit method. Memory falls by 3x.</description>
      <guid isPermaLink="false">oai:arXiv.org:2401.01234v1</guid>
      <category>cs.LG</category>
      <pubDate>Mon, 08 Jan 2024 00:00:00 -0500</pubDate>
      <arxiv:announce_type>new</arxiv:announce_type>
      <dc:rights>http://creativecommons.org/licenses/by/4.0/</dc:rights>
      <dc:creator>Ada Lovelace, Alan Turing</dc:creator>
    </item>
    <item>
      <title>Distilled Video Diffusion</title>
      <link>https://arxiv.org/abs/2312.09999</link>
      <description>arXiv:2312.09999v3 Announce Type: replace-cross
Abstract: We distill a video model into &lt;i&gt;four&lt;/i&gt; steps.&lt;br/&gt;Latency drops by 10&lt;sup&gt;1&lt;/sup&gt;x.</description>
      <guid isPermaLink="false">oai:arXiv.org:2312.09999v3</guid>
      <pubDate>Mon, 08 Jan 2024 00:00:00 -0500</pubDate>
      <arxiv:announce_type>replace-cross</arxiv:announce_type>
    </item>
  </channel>
</rss>
"""


def test_arxiv_api_atom_feed_is_a_digest(tmp_path: Path, db_path: Path) -> None:
    src = tmp_path / "query.xml"
    src.write_text(ARXIV_ATOM, encoding="utf-8")
    parsed = parse_file(src)
    assert parsed.format == "atom"
    got = [(e.title, e.arxiv_id, e.url, e.published_at, e.listed_on) for e in parsed.entries]
    assert got == [
        (
            "Tiny Quant: 4-bit Post-Training Quantization for Large Language Models",
            "2401.01234",
            "http://arxiv.org/abs/2401.01234v2",
            date(2024, 1, 2),
            None,
        ),
        (
            "Pruning Old Networks",
            "cs/0112017",
            "http://arxiv.org/abs/cs/0112017v1",
            date(2001, 12, 12),
            None,
        ),
    ]
    assert parsed.entries[0].abstract == (
        "We propose a 4-bit post-training quantization method for large language models. "
        "Memory falls by 3x & perplexity holds when bits < 8."
    )
    result = cli("ingest", "-v", src)
    assert result.exit_code == 0, result.output
    assert "(atom): 2 entries, 2 new papers" in result.stdout
    assert sorted(rows(db_path, "SELECT arxiv_id, published_at FROM papers")) == [
        ("2401.01234", date(2024, 1, 2)),
        ("cs/0112017", date(2001, 12, 12)),
    ]
    assert not any(t.startswith("<") for t in titles(db_path))
    assert ingest_digests([src], db_path).total("unchanged") == 2


def test_arxiv_rss_feed_is_a_dated_digest(tmp_path: Path, db_path: Path) -> None:
    src = tmp_path / "cs.LG"
    src.write_text(ARXIV_RSS, encoding="utf-8")
    parsed = parse_file(src)
    assert parsed.format == "rss"
    got = [(e.title, e.abstract, e.arxiv_id, e.url, e.listed_on) for e in parsed.entries]
    assert got == [
        (
            "Tiny Quant: 4-bit LLMs",
            "We propose a 4-bit method. Memory falls by 3x.",
            "2401.01234",
            "https://arxiv.org/abs/2401.01234",
            date(2024, 1, 8),
        ),
        (
            "Distilled Video Diffusion",
            "We distill a video model into four steps. Latency drops by 101x.",
            "2312.09999",
            "https://arxiv.org/abs/2312.09999",
            date(2024, 1, 8),
        ),
    ]
    assert ingest_digests([src], db_path).ok
    assert rows(db_path, "SELECT format, digest_date, entries FROM digests") == [
        ("rss", date(2024, 1, 8), 2)
    ]
    # RSS 1.0 (RDF) carries the same fields under other names.
    rdf = tmp_path / "rdf.xml"
    rdf.write_text(
        '<?xml version="1.0"?>\n<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        ' xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
        '<channel rdf:about="http://arxiv.org/"><title>cs.LG</title></channel>\n'
        '<item rdf:about="http://arxiv.org/abs/2401.05555"><title>Lean Bees</title>'
        f"<description>{ABSTRACT}</description><dc:date>2024-01-09</dc:date></item>\n"
        "</rdf:RDF>\n",
        encoding="utf-8",
    )
    assert [(e.title, e.arxiv_id, e.listed_on) for e in parse_file(rdf).entries] == [
        ("Lean Bees", "2401.05555", date(2024, 1, 9))
    ]


def test_a_title_may_open_with_a_tag_and_a_title_row_may_name_columns(tmp_path: Path) -> None:
    """A real arXiv title starts "<think>"; one like "Name, Date, and Source: ..." has
    column-ish words and commas. Both are page text, not markup or a CSV header."""
    think = "<think> So let's replace this phrase with insult... </think> Lessons learned"
    src = page_text(
        tmp_path / "d.txt",
        [(think, ABSTRACT), ("Name, Date, and Source: Attributing Text", OTHER_ABSTRACT)],
    )
    parsed = parse_file(src)
    assert parsed.format == "page-text"
    assert [e.title for e in parsed.entries] == [
        think,
        "Name, Date, and Source: Attributing Text",
    ]
    first_swapped = page_text(
        tmp_path / "e.txt", [("Name, Date, and Source: Attributing Text", ABSTRACT)]
    )
    assert parse_file(first_swapped).format == "page-text"


def test_ingest_help_lists_the_formats() -> None:
    result = cli("ingest", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for fmt in ("page text", "HF API JSON", "JSONL", "CSV", "Atom", "RSS"):
        assert fmt in text, fmt


def test_lone_surrogate_escape_is_replaced_not_a_crash(tmp_path: Path, db_path: Path) -> None:
    """A JSON "\\ud83d" escape cut from its pair cannot be stored as UTF-8."""
    src = write_jsonl(
        tmp_path / "cut.jsonl", [{"title": "Emoji \ud83d Paper", "abstract": ABSTRACT}]
    )
    assert "\\ud83d" in src.read_text(encoding="utf-8")
    result = cli("ingest", src)
    assert result.exit_code == 0, result.output
    assert rows(db_path, "SELECT title FROM papers") == [("Emoji \ufffd Paper",)]


# ------------------------------------------------------------------------- identity
def test_same_arxiv_id_with_different_title_formatting_is_one_paper(
    tmp_path: Path, db_path: Path
) -> None:
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [{"title": "Tiny Quant: 4-bit LLMs", "abstract": ABSTRACT, "id": "2401.12345"}],
    )
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [
            {
                "title": "TINY QUANT -- 4 bit\n  LLMs",
                "abstract": ABSTRACT,
                "url": "https://arxiv.org/abs/2401.12345v3",
            }
        ],
    )
    c = write_jsonl(
        tmp_path / "c.jsonl",
        [{"title": "Tiny Quant (renamed in v2)", "abstract": ABSTRACT, "arxiv_id": "2401.12345"}],
    )
    report = ingest_digests([a, b, c], db_path)
    assert report.ok
    assert [f.new_papers for f in report.files] == [1, 0, 0]
    assert [f.new_links for f in report.files] == [1, 1, 1]
    assert count(db_path, "papers") == 1
    assert rows(db_path, "SELECT arxiv_id, title FROM papers") == [
        ("2401.12345", "Tiny Quant (renamed in v2)")
    ]


def test_different_arxiv_ids_with_the_same_title_are_two_papers(
    tmp_path: Path, db_path: Path
) -> None:
    src = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"title": "A Survey", "abstract": ABSTRACT, "id": "2401.00001"},
            {"title": "A Survey", "abstract": OTHER_ABSTRACT, "id": "2402.00002"},
        ],
    )
    assert ingest_digests([src], db_path).ok
    assert sorted(rows(db_path, "SELECT arxiv_id FROM papers")) == [
        ("2401.00001",),
        ("2402.00002",),
    ]


def test_paper_seen_without_then_with_arxiv_id_is_one_paper(tmp_path: Path, db_path: Path) -> None:
    # First seen on a real digest page (no arXiv id there) ...
    assert ingest_digests(DIGESTS[:1], db_path).ok
    (fireflow_abstract,) = [
        a for (a,) in rows(db_path, "SELECT abstract FROM papers WHERE title = ?", [FIREFLOW])
    ]
    before = count(db_path, "papers")
    # ... then in a JSON record with its arXiv id and a differently formatted title.
    record = tmp_path / "later.json"
    record.write_text(
        json.dumps(
            [
                {
                    "title": FIREFLOW.upper().replace(":", " -"),
                    "abstract": fireflow_abstract,
                    "id": "2412.07517",
                }
            ]
        ),
        encoding="utf-8",
    )
    report = ingest_digests([record], db_path)
    assert report.ok
    fr = report.files[0]
    assert (fr.new_papers, fr.new_links) == (0, 1)
    assert count(db_path, "papers") == before
    (row,) = rows(
        db_path,
        "SELECT arxiv_id, count(*) OVER () FROM papers WHERE title_key = "
        "(SELECT title_key FROM papers WHERE arxiv_id = '2412.07517')",
    )
    assert row == ("2412.07517", 1)
    # And it is still the one paper when the page is ingested again, in any order.
    assert ingest_digests(DIGESTS[:1], db_path).total("new_papers") == 0
    assert count(db_path, "papers") == before


def test_arxiv_id_learned_within_one_file_is_kept(tmp_path: Path, db_path: Path) -> None:
    """A title listed first without and then with its arXiv id in the same file."""
    src = tmp_path / "d.json"
    src.write_text(
        json.dumps(
            [
                {"title": "Tiny Quant", "abstract": ABSTRACT},
                {"title": "tiny quant", "abstract": ABSTRACT, "id": "2401.12345"},
            ]
        ),
        encoding="utf-8",
    )
    report = ingest_digests([src], db_path)
    assert report.ok and report.files[0].new_papers == 1
    assert rows(db_path, "SELECT arxiv_id FROM papers") == [("2401.12345",)]


def test_arxiv_id_learned_by_title_then_seen_under_a_new_title(
    tmp_path: Path, db_path: Path
) -> None:
    """Known by title only; a file then gives its arXiv id twice, under two titles: one paper."""
    assert ingest_digests(
        [page_text(tmp_path / "page.txt", [("Tiny Quant", ABSTRACT)])], db_path
    ).ok
    src = write_jsonl(
        tmp_path / "later.jsonl",
        [
            {"title": "Tiny Quant", "abstract": ABSTRACT, "id": "2401.12345"},
            {"title": "Tiny Quant v2: Even Tinier", "abstract": ABSTRACT, "id": "2401.12345"},
        ],
    )
    report = ingest_digests([src], db_path)
    assert report.ok
    assert report.files[0].new_papers == 0
    assert rows(db_path, "SELECT arxiv_id, title FROM papers") == [
        ("2401.12345", "Tiny Quant v2: Even Tinier")
    ]


def test_changed_abstract_updates_text_and_hash_and_keeps_old_version(
    tmp_path: Path, db_path: Path
) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [{"title": "Tiny Quant", "abstract": ABSTRACT}])
    assert ingest_digests([first], db_path).ok
    ((pid, old_hash),) = rows(db_path, "SELECT paper_id, content_hash FROM papers")
    edited = ABSTRACT + " Code is released."
    second = write_jsonl(tmp_path / "b.jsonl", [{"title": "Tiny  Quant", "abstract": edited}])
    report = ingest_digests([second], db_path)
    assert report.ok
    fr = report.files[0]
    assert (fr.new_papers, fr.updated_papers, fr.new_links) == (0, 1, 1)
    ((pid2, abstract, new_hash),) = rows(
        db_path, "SELECT paper_id, abstract, content_hash FROM papers"
    )
    assert (pid2, abstract) == (pid, edited)
    assert new_hash != old_hash
    versions = rows(
        db_path, "SELECT content_hash, abstract FROM paper_versions ORDER BY seen_at, abstract"
    )
    assert versions == [(old_hash, ABSTRACT), (new_hash, edited)]
    # The same file again changes nothing; the old text again counts as an update back.
    assert ingest_digests([second], db_path).total("updated_papers") == 0
    assert ingest_digests([first], db_path).total("updated_papers") == 1
    assert rows(db_path, "SELECT abstract FROM papers") == [(ABSTRACT,)]


# ----------------------------------------------------------------- digest identity
def _day_list(path: Path, day: str, papers: list[tuple[str, str]]) -> Path:
    """A dated list of papers as JSON records: (arXiv id, title) each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            [
                {
                    "title": title,
                    "abstract": f"{title} is studied. {ABSTRACT}",
                    "id": aid,
                    "date": day,
                }
                for aid, title in papers
            ]
        ),
        encoding="utf-8",
    )
    return path


def _two_papers_json(tmp_path: Path) -> tuple[Path, Path]:
    """Two different files of one name: d1/papers.json and d2/papers.json (one paper shared)."""
    d1 = _day_list(
        tmp_path / "d1" / "papers.json",
        "2024-01-22",
        [("2401.00001", "Tiny Quant"), ("2401.00002", "Sparse Cats"), ("2401.00003", "Fast Dogs")],
    )
    d2 = _day_list(
        tmp_path / "d2" / "papers.json",
        "2024-01-23",
        [("2401.00004", "Slow Owls"), ("2401.00001", "Tiny Quant"), ("2401.00005", "Lean Bees")],
    )
    return d1, d2


def _listings(db: Path) -> set[tuple[Any, ...]]:
    return set(
        rows(
            db,
            "SELECT d.source, d.digest_date, dp.position, p.arxiv_id, dp.listed_on "
            "FROM digest_papers dp JOIN digests d USING (digest_id) JOIN papers p USING (paper_id)",
        )
    )


def _expected_listings(*files: tuple[str, date, list[str]]) -> set[tuple[Any, ...]]:
    return {
        (name, day, pos, aid, day)
        for name, day, ids in files
        for pos, aid in enumerate(ids, start=1)
    }


D1_IDS = ["2401.00001", "2401.00002", "2401.00003"]
D2_IDS = ["2401.00004", "2401.00001", "2401.00005"]


def test_two_files_of_one_name_are_two_digests(tmp_path: Path, db_path: Path) -> None:
    d1, d2 = _two_papers_json(tmp_path)
    first = cli("ingest", d1)
    assert first.exit_code == 0, first.output
    second = cli("ingest", "-v", d2)
    assert second.exit_code == 0, second.output
    assert "3 entries, 2 new papers, 0 updated, 3 new links, 0 unchanged" in second.stdout
    assert count(db_path, "papers") == 5
    assert sorted(rows(db_path, "SELECT source, digest_date, entries, path FROM digests")) == [
        ("papers.json", date(2024, 1, 22), 3, str(d1.absolute())),
        ("papers.json", date(2024, 1, 23), 3, str(d2.absolute())),
    ]
    assert _listings(db_path) == _expected_listings(
        ("papers.json", date(2024, 1, 22), D1_IDS), ("papers.json", date(2024, 1, 23), D2_IDS)
    )
    # The paper both list is one paper with two listings.
    assert rows(
        db_path,
        "SELECT count(DISTINCT digest_id) FROM digest_papers JOIN papers USING (paper_id) "
        "WHERE arxiv_id = '2401.00001'",
    ) == [(2,)]


def test_the_same_file_from_another_path_is_the_same_digest(tmp_path: Path, db_path: Path) -> None:
    d1, _ = _two_papers_json(tmp_path)
    assert ingest_digests([d1], db_path).ok
    before = snapshot(db_path)
    copy = tmp_path / "elsewhere" / "renamed.json"
    copy.parent.mkdir()
    copy.write_bytes(d1.read_bytes())
    # The same listing written another way (JSONL, CRLF line ends) is the same digest too.
    jsonl = tmp_path / "as.jsonl"
    jsonl.write_bytes(
        b"".join(json.dumps(r).encode() + b"\r\n" for r in json.loads(d1.read_text("utf-8")))
    )
    report = ingest_digests([copy, jsonl], db_path)
    assert report.ok
    assert [(f.new_papers, f.new_links, f.unchanged) for f in report.files] == [(0, 0, 3)] * 2
    assert snapshot(db_path) == before
    assert rows(db_path, "SELECT source, path FROM digests") == [
        ("papers.json", str(d1.absolute()))
    ]
    # A file of the same papers with other text is another digest.
    edited = tmp_path / "edited.json"
    edited.write_text(d1.read_text("utf-8").replace("is studied", "is examined"), "utf-8")
    again = ingest_digests([edited], db_path)
    assert again.ok and (again.files[0].updated_papers, again.files[0].new_links) == (3, 3)
    assert count(db_path, "digests") == 2


# ------------------------------------------------------------------------ bad input
BadMaker = Callable[[Path], Path]


def _bin_no_nul(p: Path) -> Path:
    p.write_bytes(bytes(range(0x80, 0x100)) * 8 + b"\x01\x02\x03")
    return p


def _write(name: str, data: bytes | str) -> BadMaker:
    def make(tmp: Path) -> Path:
        p = tmp / name
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data, encoding="utf-8")
        return p

    return make


def _shared(path: Path) -> BadMaker:
    return lambda _tmp: path


def _huge_page(tmp: Path) -> Path:
    p = tmp / "huge.txt"
    p.write_text(f"Tiny Quant\n{ABSTRACT}\nHuge Paper\n{'word. ' * 600_000}\n", encoding="utf-8")
    return p


def _huge_jsonl(tmp: Path) -> Path:
    return write_jsonl(
        tmp / "huge.jsonl",
        [
            {"title": "Tiny Quant", "abstract": ABSTRACT},
            {"title": "Huge Paper", "abstract": "word. " * 600_000},
        ],
    )


def _huge_csv(tmp: Path) -> Path:
    return write_csv(
        tmp / "huge.csv", ["title", "abstract"], [["Tiny Quant", ABSTRACT], ["Huge", "w " * 10**6]]
    )


BAD_INPUTS: list[tuple[str, BadMaker, str | None, str]] = [
    # (case id, maker, where, reason fragment)
    ("png", _write("image.png", PNG), None, "not a text file"),
    ("binary-no-nul", lambda t: _bin_no_nul(t / "blob.txt"), None, "not a text file"),
    ("empty", _write("empty.txt", b""), None, "empty file"),
    ("blank", _write("blank.txt", b" \n\r\n\t\n"), None, "empty file"),
    ("error-body", _shared(ERROR_BODY), None, "error response, not a digest"),
    ("python-repr", _shared(REPR_FILE), "item 1", "Python repr() strings"),
    (
        "csv-no-abstract",
        _write("nocol.csv", "title,body,url\nTiny Quant,some text. here.,\n"),
        "row 1",
        "no abstract column",
    ),
    ("huge-page", _huge_page, "line 3", "characters (limit 1,000,000)"),
    ("huge-jsonl", _huge_jsonl, "line 2", "characters (limit 1,000,000)"),
    ("huge-csv", _huge_csv, "row 3", "characters; not an abstract"),
    (
        "nul",
        _write("nul.txt", f"Tiny Quant\n{ABSTRACT}\nBad\x00Title\n{OTHER_ABSTRACT}\n".encode()),
        None,
        "NUL byte at offset",
    ),
    (
        "no-abstract-page",
        _write("noabs.txt", f"Tiny Quant\n{ABSTRACT}\nOrphan Title\n"),
        "line 3",
        "'Orphan Title' has no abstract",
    ),
    (
        "no-abstract-page-middle",
        _write("noabs2.txt", f"Orphan Title\nTiny Quant\n{ABSTRACT}\n"),
        "line 1",
        "'Orphan Title' has no abstract",
    ),
    (
        "no-abstract-jsonl-empty",
        _write(
            "noabs.jsonl",
            json.dumps({"title": "Tiny Quant", "abstract": ABSTRACT})
            + "\n"
            + json.dumps({"title": "Orphan", "abstract": " "})
            + "\n",
        ),
        "line 2",
        "'Orphan' has no abstract",
    ),
    (
        "no-abstract-jsonl-missing",
        _write(
            "noabs2.jsonl",
            json.dumps({"title": "Tiny Quant", "abstract": ABSTRACT})
            + "\n\n"
            + json.dumps({"title": "Orphan"})
            + "\n",
        ),
        "line 3",
        "no 'abstract' or 'summary' key",
    ),
    (
        "broken-jsonl",
        _write(
            "broken.jsonl",
            json.dumps({"title": "Tiny Quant", "abstract": ABSTRACT}) + '\n{"title": "x", \n',
        ),
        "line 2",
        "invalid JSON",
    ),
    (
        "csv-extra-cells",
        _write("extra.csv", f"title,abstract\nTiny Quant,{ABSTRACT.replace(',', '')},oops\n"),
        "row 2",
        "more cells than header",
    ),
    ("json-not-digest", _write("cfg.json", '{"name": "x", "version": 2}'), None, "not a digest"),
    (
        "csv-no-title-no-abstract",
        _write("links.csv", "name,url\nTiny Quant,https://arxiv.org/abs/2401.12345\n"),
        "row 1",
        "CSV has no title and no abstract column (need 'title' and 'abstract' or 'summary'); "
        "columns: name, url",
    ),
    (
        "xml-entity-expansion",
        _write(
            "lolz.xml",
            '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
            '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n'
            '<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>&lol2;</title>'
            f"<summary>{ABSTRACT}</summary></entry></feed>\n",
        ),
        None,
        "XML with a DOCTYPE (entity declarations) is refused",
    ),
    (
        "html-page",
        _write(
            "daily.html",
            "<!DOCTYPE html>\n<html><head><title>Daily Papers</title></head>\n"
            f"<body><h3>Tiny Quant</h3><p>{ABSTRACT}</p></body></html>\n",
        ),
        None,
        "not a digest: looks like HTML",
    ),
    (
        "other-xml",
        _write("config.xml", '<?xml version="1.0"?>\n<config><papers>2</papers></config>\n'),
        None,
        "not a digest: looks like XML with root <config>, not an Atom or RSS feed",
    ),
    (
        "arxiv-api-error",
        _write(
            "error.xml",
            '<?xml version="1.0" encoding="UTF-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">\n'
            "<entry><id>http://arxiv.org/api/errors#incorrect_id_format_for_1234.1</id>"
            "<title>Error</title><summary>incorrect id format for 1234.1</summary></entry>\n"
            "</feed>\n",
        ),
        None,
        "arXiv API error response, not a digest: 'incorrect id format for 1234.1'",
    ),
    (
        "atom-no-summary",
        _write(
            "nosum.xml",
            '<feed xmlns="http://www.w3.org/2005/Atom">\n'
            f"<entry><title>Tiny Quant</title><summary>{ABSTRACT}</summary></entry>\n"
            "<entry><title>Orphan</title></entry>\n</feed>\n",
        ),
        "entry 2",
        "'Orphan' has no abstract",
    ),
    (
        "atom-empty",
        _write("none.xml", '<feed xmlns="http://www.w3.org/2005/Atom"><title>q</title></feed>'),
        None,
        "Atom feed has no entries",
    ),
    (
        "broken-xml",
        _write(
            "broken.xml",
            '\n<?xml version="1.0"?>\n<feed xmlns="http://www.w3.org/2005/Atom">\n'
            "<entry><title>x</entry>\n</feed>\n",
        ),
        "line 4",
        "invalid XML: mismatched tag",
    ),
    (
        "markup-title",
        _write("mixed.txt", f"Tiny Quant\n{ABSTRACT}\n<html><body>\n{OTHER_ABSTRACT}\n"),
        "line 3",
        "'<html><body>' is markup",
    ),
    ("missing", lambda t: t / "does-not-exist.txt", None, "cannot read"),
    ("directory", lambda t: t, None, "is a directory"),
]


@pytest.mark.parametrize(
    ("maker", "where", "reason"),
    [pytest.param(m, w, r, id=i) for i, m, w, r in BAD_INPUTS],
)
def test_bad_input_one_line_nothing_written_good_file_lands(
    tmp_path: Path, db_path: Path, maker: BadMaker, where: str | None, reason: str
) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = maker(bad_dir)
    # A database that already holds something, so "unchanged" means something.
    assert ingest_digests(
        [page_text(tmp_path / "seed.txt", [("Seed Paper", ABSTRACT)])], db_path
    ).ok
    before = snapshot(db_path)

    # Library: the error names the file (and line/row/item) and nothing is written.
    report = ingest_digests([bad], db_path)
    assert not report.ok
    (failed,) = report.failed
    assert failed.error is not None
    assert failed.error.startswith(f"{bad}: ")
    if where is not None:
        assert failed.error.startswith(f"{bad}: {where}: "), failed.error
    assert reason in failed.error
    assert "\n" not in failed.error and len(failed.error) < 400
    assert snapshot(db_path) == before

    # CLI, alone: exit 1, one line on stderr, database unchanged.
    alone = cli("ingest", bad)
    assert_clean_failure(alone)
    (err_line,) = lines(alone.stderr)
    assert str(bad) in err_line and reason in err_line
    if where is not None:
        assert f"{where}:" in err_line
    assert snapshot(db_path) == before

    # CLI, beside a good file: the good one lands, the bad one is still refused.
    good = good_file(tmp_path)
    both = cli("ingest", bad, good)
    assert_clean_failure(both)
    (err_line,) = lines(both.stderr)
    assert str(bad) in err_line and reason in err_line
    assert "1 failed" in both.stdout
    assert titles(db_path) == {"Seed Paper", "Tiny Quant", "Fast Video Diffusion"}
    assert {d for (d,) in rows(db_path, "SELECT source FROM digests")} == {
        "seed.txt",
        "good.jsonl",
    }


def test_bad_line_after_several_batches_rolls_back_the_whole_file(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_write, "BATCH_SIZE", 3)
    records = [{"title": f"Paper {i}", "abstract": f"Abstract {i}. It is fine."} for i in range(10)]
    src = write_jsonl(tmp_path / "late.jsonl", records)
    with src.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"title": "Orphan"}) + "\n")
    assert ingest_digests([good_file(tmp_path)], db_path).ok
    before = snapshot(db_path)
    report = ingest_digests([src], db_path)
    assert not report.ok
    assert report.failed[0].error == f"{src}: line 11: no 'abstract' or 'summary' key"
    assert snapshot(db_path) == before
    # The same file without the bad line lands in several batches.
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    ok = ingest_digests([src], db_path)
    assert ok.ok and ok.files[0].new_papers == 10 and ok.files[0].new_links == 10


def test_duplicate_rows_in_one_file_are_one_paper(tmp_path: Path, db_path: Path) -> None:
    row = {"title": "Tiny Quant", "abstract": ABSTRACT}
    src = write_jsonl(tmp_path / "dup.jsonl", [row, row, {**row, "title": " Tiny  Quant"}, row])
    csv_src = write_csv(tmp_path / "dup.csv", ["title", "abstract"], [["Tiny Quant", ABSTRACT]] * 3)
    result = cli("ingest", src, csv_src)
    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == []
    assert count(db_path, "papers") == 1
    assert count(db_path, "paper_versions") == 1
    # Every listing is still recorded.
    assert count(db_path, "digest_papers") == 7
    assert "1 new papers, 0 updated, 7 new links" in result.stdout


def test_latin1_text_is_decoded_with_a_note(tmp_path: Path, db_path: Path) -> None:
    src = tmp_path / "latin1.txt"
    src.write_bytes(
        "Café Networks for Retrieval\nWe study café-style retrieval. It works “well”.\n".encode(
            "cp1252"
        )
    )
    parsed = parse_file(src)
    assert parsed.note is not None and "not UTF-8" in parsed.note
    result = cli("ingest", src)
    assert result.exit_code == 0, result.output
    assert "not UTF-8" in result.stdout
    assert rows(db_path, "SELECT title, abstract FROM papers") == [
        ("Café Networks for Retrieval", "We study café-style retrieval. It works “well”.")
    ]
    # Pure Latin-1 (bytes cp1252 leaves undefined) decodes too.
    src2 = tmp_path / "latin1b.txt"
    src2.write_bytes("Réseaux\nUne étude. Fin\x81.\n".encode("latin-1"))
    assert [(e.title, e.abstract) for e in parse_file(src2).entries] == [
        ("Réseaux", "Une étude. Fin\x81.")
    ]


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    src = tmp_path / "bom.txt"
    src.write_bytes(f"\ufeffTiny Quant\r\n{ABSTRACT}\r\n".encode())
    parsed = parse_file(src)
    assert parsed.note is None
    assert [(e.title, e.abstract) for e in parsed.entries] == [("Tiny Quant", ABSTRACT)]


def test_error_messages_with_brackets_are_printed_verbatim(tmp_path: Path, db_path: Path) -> None:
    """File names and titles are user text, not rich markup."""
    bad = tmp_path / "draft[old].txt"
    bad.write_text(f"Tiny Quant\n{ABSTRACT}\nA [/b] title\n", encoding="utf-8")
    good = write_jsonl(
        tmp_path / "papers[v2].jsonl", [{"title": "[mask] Tokens", "abstract": ABSTRACT}]
    )
    result = cli("ingest", "-v", bad, good)
    assert_clean_failure(result)
    (err_line,) = lines(result.stderr)
    assert f"{bad}: line 3: title 'A [/b] title' has no abstract" in err_line
    assert str(good) in result.stdout
    table = cli("sql", "SELECT title FROM papers")
    assert table.exit_code == 0, table.output
    assert "[mask] Tokens" in table.stdout


def test_library_ingest_into_an_open_store_leaves_its_settings_alone(
    tmp_path: Path, db_path: Path
) -> None:
    settings = ("force_compression", "write_buffer_row_group_count", "memory_limit")
    with Store(db_path) as s:
        # DuckDB's default memory limit is lowered while ingest writes, then reset.
        before = [s.scalar("SELECT current_setting(?)", [n]) for n in settings]
        during: list[object] = []
        fr = ingest_file(
            s,
            good_file(tmp_path),
            on_batch=lambda _: during.append(s.scalar("SELECT current_setting('memory_limit')")),
        )
        assert fr.new_papers == 2
        assert during == ["512.0 MiB"]
        assert [s.scalar("SELECT current_setting(?)", [n]) for n in settings] == before
        # Settings of the user's own are left as they were.
        s.con.execute("SET force_compression = 'uncompressed'")
        s.con.execute("SET memory_limit = '2GB'")
        before = [s.scalar("SELECT current_setting(?)", [n]) for n in settings]
        for _ in range(3):
            assert ingest_digests([DIGESTS[4]], s).ok
        assert [s.scalar("SELECT current_setting(?)", [n]) for n in settings] == before
        # The store is still open and usable: ingest did not close it.
        assert s.scalar("SELECT count(*) FROM papers") == 68


# ---------------------------------------------------------------------------- store
def test_migrations_are_recorded_and_not_reapplied(db_path: Path) -> None:
    names = [name for name, _ in migrations.MIGRATIONS]
    with Store(db_path) as s:
        recorded = [r[0] for r in s.con.execute("SELECT name FROM _migrations").fetchall()]
        assert sorted(recorded) == sorted(names)
        assert s.migrate() == []
    with Store(db_path) as s:
        assert s.migrate() == []
        assert s.scalar("SELECT count(*) FROM _migrations") == len(names)
        tables = {r[0] for r in s.con.execute("SHOW TABLES").fetchall()}
    assert {"papers", "digest_papers", "digests", "paper_versions", "_migrations"} <= tables


def test_a_new_database_opens_again_when_its_process_died_at_once(db_path: Path) -> None:
    """DuckDB cannot replay some migrations from its log; they must reach the file itself."""
    subprocess.run(
        [sys.executable, "-c", "import os, sys; from papertag.db import Store; "
         "s = Store(sys.argv[1]); os._exit(0)", str(db_path)],
        check=True, timeout=60,
    )  # fmt: skip
    with Store(db_path) as s:
        assert s.scalar("SELECT count(*) FROM _migrations") == len(migrations.MIGRATIONS)


def _old_database(path: Path) -> None:
    """A file as the first papertag release left it: only the first migration, with data."""
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
    )
    name, fn = migrations.MIGRATIONS[0]
    fn(con)
    con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [name])
    con.execute(
        "INSERT INTO papers (paper_id, title, abstract, title_key, content_hash, first_seen, "
        "updated_at) VALUES ('p1', 'Old Paper', 'Old abstract. Kept.', 'old paper', 'h', "
        "now()::TIMESTAMP, now()::TIMESTAMP)"
    )
    con.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_database_from_an_older_papertag_opens_and_upgrades(db_path: Path, read_only: bool) -> None:
    assert len(migrations.MIGRATIONS) > 1
    _old_database(db_path)
    with Store(db_path, read_only=read_only) as s:
        recorded = {r[0] for r in s.con.execute("SELECT name FROM _migrations").fetchall()}
        assert recorded == {name for name, _ in migrations.MIGRATIONS}
        assert s.scalar("SELECT title FROM papers") == "Old Paper"
        assert s.scalar("SELECT count(*) FROM annotations") == 0
    with Store(db_path) as s:
        assert s.migrate() == []


def _migrated_before(db_path: Path, stop: str) -> duckdb.DuckDBPyConnection:
    """A database as a papertag whose last migration came just before ``stop`` left it."""
    con = duckdb.connect(str(db_path))
    con.execute(
        "CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
    )
    for name, fn in migrations.MIGRATIONS:
        if name.startswith(stop):
            break
        fn(con)
        con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [name])
    return con


def test_llm_calls_logged_before_request_templates_survive_the_upgrade(db_path: Path) -> None:
    con = _migrated_before(db_path, "m008")
    body = '{"model":"m","messages":[{"role":"user","content":"a paper"}]}'
    con.execute(
        "INSERT INTO llm_calls (run_id, annotator, model, host, prompt_version, taxonomy_version, "
        "request_hash, request_body, status, attempt, started_at) "
        "VALUES ('r1', 'llm', 'm', 'h', 'p', 't', 'x', ?, 200, 1, now()::TIMESTAMP)",
        [body],
    )
    con.close()
    with Store(db_path) as s:
        assert s.con.execute("SELECT call_id, request_body FROM llm_calls").fetchall() == [
            (1, body)
        ]
        # New calls take the next id after the old ones.
        s.con.execute(
            "INSERT INTO llm_call_rows (run_id, annotator, model, host, prompt_version, "
            "taxonomy_version, request_hash, attempt, started_at) "
            "VALUES ('r2', 'llm', 'm', 'h', 'p', 't', 'y', 1, now()::TIMESTAMP)"
        )
        assert s.scalar("SELECT max(call_id) FROM llm_calls") == 2


def test_call_log_keeps_its_rows_ids_and_constraints_when_its_index_goes(db_path: Path) -> None:
    """m009 rebuilds llm_call_rows without its primary key's index (checkpoints of a growing
    log cost in proportion to it): every row comes through as it was, call ids go on from
    the sequence, and the NOT NULLs still hold."""
    con = _migrated_before(db_path, "m009")
    con.execute("INSERT INTO llm_request_templates VALUES ('t1', '{\"head\":\"', '\"}')")
    for template, body, replay in [("t1", "middle", None), (None, '{"whole": 1}', 1)]:
        con.execute(
            "INSERT INTO llm_call_rows (run_id, annotator, model, host, prompt_version, "
            "taxonomy_version, request_hash, request_body, status, attempt, started_at, "
            "call_uid, replay_of, request_template, options) VALUES ('r1', 'llm', 'm', 'h', "
            "'p', 't', 'x', ?, 200, 1, now()::TIMESTAMP, 'u', ?, ?, '{\"a\": 1}')",
            [body, replay, template],
        )
    before = con.execute("SELECT * FROM llm_calls ORDER BY call_id").fetchall()
    assert con.execute(
        "SELECT index_count FROM duckdb_tables() WHERE table_name = 'llm_call_rows'"
    ).fetchone() == (1,)
    con.close()
    with Store(db_path) as s:
        # (Later migrations add columns at the end.)
        after = s.con.execute("SELECT * FROM llm_calls ORDER BY call_id").fetchall()
        assert [r[: len(before[0])] for r in after] == before
        assert [r[12] for r in before] == ['{"head":"middle"}', '{"whole": 1}']
        assert (
            s.scalar("SELECT index_count FROM duckdb_tables() WHERE table_name = 'llm_call_rows'")
            == 0
        )
        s.con.execute(
            "INSERT INTO llm_call_rows (run_id, annotator, model, host, prompt_version, "
            "taxonomy_version, request_hash, attempt, started_at) "
            "VALUES ('r2', 'llm', 'm', 'h', 'p', 't', 'y', 1, now()::TIMESTAMP)"
        )
        assert s.scalar("SELECT max(call_id) FROM llm_calls") == 3
        with pytest.raises(duckdb.ConstraintException):
            s.con.execute(
                "INSERT INTO llm_call_rows (annotator, model, host, prompt_version, "
                "taxonomy_version, request_hash, attempt, started_at) "
                "VALUES ('llm', 'm', 'h', 'p', 't', 'y', 1, now()::TIMESTAMP)"
            )


def test_calls_and_annotations_from_before_calls_of_several_papers_upgrade(db_path: Path) -> None:
    """m015: a call logged before carried one paper (the view says so), its cached tokens
    are unknown, and an annotation from before names no call; new rows keep all three."""
    con = _migrated_before(db_path, "m015")
    con.execute(
        "INSERT INTO llm_call_rows (run_id, paper_id, annotation_id, annotator, model, host, "
        "prompt_version, taxonomy_version, request_hash, status, attempt, started_at, call_uid) "
        "VALUES ('r1', 'p1', 'a1', 'llm', 'm', 'h', 'p', 't', 'x', 200, 1, now()::TIMESTAMP, 'u1')"
    )
    con.execute(
        "INSERT INTO annotations VALUES ('a1', 'p1', 'h', 'llm', 'm', 'p', 't', 'r1', "
        "now()::TIMESTAMP, 1.0)"
    )
    con.close()
    with Store(db_path) as s:
        old = "SELECT paper_id, cached_tokens, papers, paper_ids FROM llm_calls WHERE call_uid = ?"
        assert s.con.execute(old, ["u1"]).fetchall() == [("p1", None, 1, ["p1"])]
        assert s.scalar("SELECT call_uid FROM annotations WHERE annotation_id = 'a1'") is None
        s.con.execute(
            "INSERT INTO llm_call_rows (run_id, annotator, model, host, prompt_version, "
            "taxonomy_version, request_hash, status, attempt, started_at, call_uid, "
            "cached_tokens, paper_ids) VALUES ('r2', 'llm', 'm', 'h', 'p', 't', 'y', 200, 1, "
            "now()::TIMESTAMP, 'u2', 1024, ['p2', 'p3'])"
        )
        assert s.con.execute(old, ["u2"]).fetchall() == [(None, 1024, 2, ["p2", "p3"])]


def test_review_decisions_made_before_notes_upgrade_with_none(db_path: Path) -> None:
    """m010 adds review_decisions.note: earlier decisions keep every value, with no note, and
    still count in the verdicts; new ones record theirs."""
    con = _migrated_before(db_path, "m010")
    con.execute(
        "INSERT INTO review_decisions (paper_id, field, label, action, previous_value, "
        "new_value, reviewer, decided_at, source) VALUES ('p1', 'technique', 'pruning', "
        "'change', 'pruning', 'other', 'ann', now()::TIMESTAMP, 'app')"
    )
    before = con.execute("SELECT * FROM review_decisions").fetchall()
    con.close()
    with Store(db_path) as s:
        rows = s.con.execute("SELECT * FROM review_decisions").fetchall()
        assert [r[:-1] for r in rows] == before and rows[0][-1] is None
        assert s.con.execute(
            "SELECT label, included FROM review_verdicts ORDER BY label"
        ).fetchall() == [
            ("other", True),
            ("pruning", False),
        ]
        s.con.execute(
            "INSERT INTO review_decisions (paper_id, field, label, action, reviewer, decided_at, "
            "source, note) VALUES ('p1', 'technique', 'other', 'add', 'ann', now()::TIMESTAMP, "
            "'app', 'spiking chips')"
        )
        assert s.scalar("SELECT note FROM review_decisions WHERE action = 'add'") == "spiking chips"


def test_digests_keyed_on_file_names_before_m013_still_work_and_are_recognised(
    tmp_path: Path, db_path: Path
) -> None:
    """Before m013 a digest's id was its file name. Those rows keep their ids (and their
    links), the same file ingested again is still that digest, and a different file of the
    same name becomes a digest of its own instead of vanishing into the old one."""
    d1, d2 = _two_papers_json(tmp_path)
    # What the older papertag wrote for d1: the same rows as now, but keyed "papers.json".
    scratch = tmp_path / "scratch.duckdb"
    assert ingest_digests([d1], scratch).ok
    con = _migrated_before(db_path, "m013")
    con.execute(f"ATTACH '{scratch}' AS s (READ_ONLY)")
    con.execute("INSERT INTO papers SELECT * FROM s.papers")
    con.execute("INSERT INTO paper_versions SELECT * FROM s.paper_versions")
    con.execute(
        "INSERT INTO digests SELECT 'papers.json', source, format, digest_date, sha256, entries, "
        "ingested_at FROM s.digests"
    )
    con.execute(
        "INSERT INTO digest_papers SELECT 'papers.json', position, paper_id, listed_on "
        "FROM s.digest_papers"
    )
    con.close()

    assert rows(db_path, "SELECT digest_id, source, digest_date, path FROM digests") == [
        ("papers.json", "papers.json", date(2024, 1, 22), None)
    ]
    assert count(db_path, "digest_papers WHERE digest_id = 'papers.json'") == 3
    before = snapshot(db_path)
    same = cli("ingest", d1)
    assert same.exit_code == 0, same.output
    assert "0 new links, 3 unchanged" in same.stdout
    assert snapshot(db_path) == before
    other = cli("ingest", d2)
    assert other.exit_code == 0, other.output
    assert "3 new links, 0 unchanged" in other.stdout
    assert _listings(db_path) == _expected_listings(
        ("papers.json", date(2024, 1, 22), D1_IDS), ("papers.json", date(2024, 1, 23), D2_IDS)
    )
    assert {d for (d,) in rows(db_path, "SELECT digest_id FROM digests")} >= {"papers.json"}


def test_old_database_upgrades_through_the_cli_and_takes_new_papers(
    tmp_path: Path, db_path: Path
) -> None:
    _old_database(db_path)
    stats = cli("stats", "--json")
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["papers"] == 1
    assert cli("ingest", good_file(tmp_path)).exit_code == 0
    assert count(db_path, "papers") == 3


def test_read_only_open_of_a_missing_database_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database"):
        Store(tmp_path / "nope.duckdb", read_only=True)
    result = cli("--db", tmp_path / "nope.duckdb", "stats")
    assert_clean_failure(result)
    (line,) = lines(result.stderr)
    assert "nope.duckdb" in line and "no such database" in line


def test_missing_db_directory_is_one_line(tmp_path: Path) -> None:
    result = cli("--db", tmp_path / "no" / "such" / "dir.duckdb", "ingest", good_file(tmp_path))
    assert_clean_failure(result)
    (line,) = lines(result.stderr)
    assert "does not exist" in line


# ------------------------------------------------------------------------------ CLI
def test_db_option_and_environment_variable_are_honoured(
    tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = good_file(tmp_path)
    # PAPERTAG_DB (set by the autouse fixture).
    assert cli("ingest", good).exit_code == 0
    assert db_path.exists() and count(db_path, "papers") == 2
    # --db wins over PAPERTAG_DB.
    other = tmp_path / "other.duckdb"
    assert cli("--db", other, "ingest", DIGESTS[4]).exit_code == 0
    assert count(other, "digest_papers") == 66
    assert count(db_path, "papers") == 2
    # Neither: papertag.duckdb in the working directory.
    monkeypatch.delenv("PAPERTAG_DB")
    assert cli("ingest", good).exit_code == 0
    assert count(tmp_path / "papertag.duckdb", "papers") == 2
    # The library follows the same rule.
    monkeypatch.setenv("PAPERTAG_DB", str(tmp_path / "env.duckdb"))
    assert ingest_digests([good]).ok
    assert count(tmp_path / "env.duckdb", "papers") == 2


def test_cli_ingest_reports_what_it_did(db_path: Path) -> None:
    first = cli("ingest", *DIGESTS)
    assert first.exit_code == 0, first.output
    assert lines(first.stderr) == []
    assert "5 files read: 623 new papers, 0 updated, 692 new links, 0 unchanged, 0 failed" in (
        first.stdout
    )
    again = cli("ingest", *DIGESTS)
    assert again.exit_code == 0
    assert "5 files read: 0 new papers, 0 updated, 0 new links, 692 unchanged, 0 failed" in (
        again.stdout
    )


def test_sql_formats_parse(db_path: Path) -> None:
    assert cli("ingest", *DIGESTS).exit_code == 0
    as_csv = cli("sql", "select count(*) from papers", "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    parsed = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert parsed == [["count_star()"], ["623"]]
    as_json = cli("sql", "select count(*) AS n, 'x,y' AS s from papers", "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == [{"n": 623, "s": "x,y"}]
    table = cli("sql", "select count(*) AS n from digest_papers")
    assert table.exit_code == 0 and "692" in table.stdout
    # Dates and lists come out as JSON too.
    dated = cli(
        "sql",
        "select digest_id, digest_date, [1, 2] AS l from digests order by 1 limit 1",
        "--format",
        "json",
    )
    assert dated.exit_code == 0, dated.output
    assert json.loads(dated.stdout)[0]["l"] == [1, 2]


def test_a_table_shows_floats_and_times_to_a_person_and_csv_keeps_them(db_path: Path) -> None:
    Store(db_path).close()
    query = (
        "SELECT 0.028034999999999942::DOUBLE AS cost, 4.5e-05::DOUBLE AS small, "
        "1e-9::DOUBLE AS tiny, TIMESTAMP '2026-11-24 01:02:03.123456' AS at"
    )
    table = cli("sql", query)
    assert table.exit_code == 0, table.output
    row = table.stdout.splitlines()[3]
    assert [c.strip() for c in row.strip("│").split("│")] == [
        "0.028035",
        "0.000045",
        "1e-09",
        "2026-11-24 01:02:03",
    ]
    as_csv = cli("sql", query, "--format", "csv")
    cost, small = list(csv.reader(io.StringIO(as_csv.stdout)))[1][:2]
    assert cost != "0.028035" and float(cost) == pytest.approx(0.028035) and small == "4.5e-05"


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("select * from nope", "Catalog Error"),
        ("selec 1", "Parser Error"),
        ("select [/x] from papers", "Error"),
    ],
)
def test_bad_sql_is_one_line_with_duckdbs_message(
    tmp_path: Path, db_path: Path, query: str, fragment: str
) -> None:
    assert cli("ingest", good_file(tmp_path)).exit_code == 0
    result = cli("sql", query)
    assert_clean_failure(result)
    (line,) = lines(result.stderr)
    assert fragment in line


def test_sql_is_read_only_unless_write(tmp_path: Path, db_path: Path) -> None:
    assert cli("ingest", good_file(tmp_path)).exit_code == 0
    before = snapshot(db_path)
    result = cli("sql", "DELETE FROM papers")
    assert_clean_failure(result)
    assert snapshot(db_path) == before


def test_stats(db_path: Path) -> None:
    assert cli("ingest", *DIGESTS).exit_code == 0
    result = cli("stats", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["papers"], data["digests"], data["links"]) == (623, 5, 692)
    plain = cli("stats")
    assert plain.exit_code == 0
    assert re.search(r"papers\s+623", plain.stdout)
    assert re.search(r"links\s+692", plain.stdout)


def test_every_command_has_help() -> None:
    for cmd in ("ingest", "sql", "stats"):
        result = cli(cmd, "--help")
        assert result.exit_code == 0
        assert "Usage" in result.stdout


def test_input_error_carries_path_line_and_kind(tmp_path: Path) -> None:
    src = _huge_jsonl(tmp_path)
    with pytest.raises(InputError) as info:
        parse_file(src)
    assert (info.value.path, info.value.line, info.value.kind) == (str(src), 2, "line")
