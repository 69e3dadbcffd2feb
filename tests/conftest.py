"""Shared fixtures. Every test gets its own database file and a clean environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from papertag.db import Store
from papertag.ingest import ingest_digests

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DIGESTS = sorted((SHARED / "digests").glob("*.txt"))
PAPERTAG = str(Path(sys.executable).with_name("papertag"))
#: A paper the fault server's valid answers can quote (quantization, text, memory).
ABSTRACT = (
    "We propose a 4-bit post-training quantization method for large language models that "
    "reduces memory by 3x while keeping perplexity close to the full-precision model."
)
#: The contract of the final_labels view: its columns stay these across migrations.
FINAL_LABELS_COLUMNS = [
    ("paper_id", "VARCHAR"),
    ("field", "VARCHAR"),
    ("label", "VARCHAR"),
    ("confidence", "DOUBLE"),
    ("evidence", "VARCHAR"),
    ("decided_by", "VARCHAR"),
    ("reviewer", "VARCHAR"),
    ("decided_at", "TIMESTAMP"),
    ("annotator", "VARCHAR"),
    ("model", "VARCHAR"),
    ("annotation_id", "VARCHAR"),
    ("note", "VARCHAR"),
]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Own working directory and database; no keys or papertag settings leak in."""
    import os

    for name in list(os.environ):
        if name.startswith(("OPENAI_", "PAPERTAG_", "AZURE_OPENAI", "OPENROUTER_")) or (
            name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        ):
            monkeypatch.delenv(name)
    db = tmp_path / "test.duckdb"
    monkeypatch.setenv("PAPERTAG_DB", str(db))
    monkeypatch.chdir(tmp_path)
    yield db


class FakeTime:
    """A clock and a sleep for the LLM annotator's throttle and retries: a sleep records
    what was asked and moves the clock on at once, so nothing waits for real."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


_FAULT_TABLE: list[tuple[str, str, str]] = []


@pytest.fixture
def fault_table() -> list[tuple[str, str, str]]:
    """Rows (case, outcome, detail) printed as a table at the end of the run."""
    return _FAULT_TABLE


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FAULT_TABLE:
        return
    terminalreporter.section("fault table: each case and how it ended")
    width = max(len(case) for case, _, _ in _FAULT_TABLE)
    for case, outcome, detail in _FAULT_TABLE:
        short = detail if len(detail) <= 90 else detail[:89] + "…"
        terminalreporter.write_line(f"{case:<{width}}  {outcome:<9}  {short}")


@pytest.fixture
def db_path(isolated: Path) -> Path:
    return isolated


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def snapshot(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the data tables, to prove a failed command changed nothing."""
    with Store(db) as s:
        return {
            t: s.con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            for t in (
                "papers",
                "paper_versions",
                "digests",
                "digest_papers",
                "annotations",
                "annotation_labels",
            )
        }


def content(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """The papers, their texts and the listings of each digest's date: what two ways of
    storing the same digests must agree on (times of writing and digest ids left out)."""
    with Store(db, read_only=True) as s:
        return {
            name: s.con.execute(sql + " ORDER BY ALL").fetchall()
            for name, sql in {
                "papers": "SELECT * EXCLUDE (first_seen, updated_at) FROM papers",
                "paper_versions": "SELECT * EXCLUDE (seen_at) FROM paper_versions",
                "digests": "SELECT format, digest_date, sha256, entries FROM digests",
                "listings": "SELECT d.digest_date, l.position, l.paper_id, l.listed_on "
                "FROM digest_papers l JOIN digests d USING (digest_id)",
            }.items()
        }


# --- cassettes (pytest-recording / vcrpy) -----------------------------------
# Recorded HTTP lives in the top-level cassettes/ folder, one subfolder per test
# module. CI replays with --record-mode=none and --block-network (pyproject);
# `make record` re-records against a local llama.cpp server.
_REQUEST_HEADERS = [
    "authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "openai-organization",
    "openai-project",
]
_RESPONSE_HEADERS = {"set-cookie", "openai-organization", "openai-project"}


def _scrub_response(response: dict[str, object]) -> dict[str, object]:
    headers = response.get("headers")
    if isinstance(headers, dict):
        for name in list(headers):
            if name.lower() in _RESPONSE_HEADERS:
                del headers[name]
    return response


_TITLE = re.compile(r"<title>(.*?)</title>", re.DOTALL)


def paper_turn(request: Any) -> tuple[str, int]:
    """Which paper a chat request is about, and how far into its conversation (the number
    of messages: 2 for a first ask, 4 for the first re-ask, ...)."""
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return "", 0
    messages = body.get("messages", []) if isinstance(body, dict) else []
    user = next((m.get("content") for m in messages if m.get("role") == "user"), "")
    title = _TITLE.search(user) if isinstance(user, str) else None
    return (title.group(1) if title else ""), len(messages)


def _same_paper_turn(r1: Any, r2: Any) -> None:
    # vcrpy's matcher protocol: an AssertionError means "no match".
    assert paper_turn(r1) == paper_turn(r2)


def pytest_recording_configure(config: pytest.Config, vcr: Any) -> None:
    vcr.register_matcher("paper_turn", _same_paper_turn)


#: Recordings of a model server are matched by paper and turn, not by order: a run's
#: threads ask for several papers at once, in whatever order they get to it.
LLM_MATCH_ON = ["method", "path", "paper_turn"]


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, object]:
    return {
        "filter_headers": _REQUEST_HEADERS,
        "before_record_response": _scrub_response,
        "decode_compressed_response": True,
        "match_on": LLM_MATCH_ON,
    }


@pytest.fixture(scope="module")
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    return str(ROOT / "cassettes" / request.module.__name__.rsplit(".", 1)[-1])


# --- demo-like databases, built once per session through the real library ---------------
# `demo`: what `make demo` gives (the five digests, rules annotator: 623 papers).
# `example`: the demo plus dated Hugging Face API files (so by-month questions have months)
# and three LLM calls replayed from the llama.cpp cassettes (so llm_calls has rows).
HF_API_FILES = [
    *sorted((SHARED / "external" / "hf_api").glob("hf_daily_papers_*.json")),
    SHARED / "samples" / "hf_daily_papers_api_2026-08-21.json",
]
LLAMA_CASSETTE = (
    ROOT / "cassettes" / "test_llamacpp" / "test_llamacpp_second_run_makes_no_call.yaml"
)
DEMO_PAPERS = 623


def _build_demo(path: Path) -> None:
    from papertag.annotate import annotate_papers
    from papertag.ingest import ingest_digests

    report = ingest_digests(DIGESTS, path)
    assert report.ok, [f.error for f in report.files if f.error]
    annotate_papers(path)


def _build_example(path: Path) -> None:
    import vcr

    from papertag.annotate import annotate_papers
    from papertag.ingest import ingest_digests, parse_file, title_key

    report = ingest_digests(HF_API_FILES, path)
    assert report.ok, [f.error for f in report.files if f.error]
    annotate_papers(path)
    titles = [title_key(e.title) for e in parse_file(DIGESTS[2]).entries[:3]]
    with Store(path) as s:
        ids = [s.scalar("SELECT paper_id FROM papers WHERE title_key = ?", [t]) for t in titles]
    recorder = vcr.VCR(record_mode="none", match_on=LLM_MATCH_ON)
    recorder.register_matcher("paper_turn", _same_paper_turn)
    with pytest.MonkeyPatch.context() as mp, recorder.use_cassette(str(LLAMA_CASSETTE)):
        # A local model has no list price: give it one so cost figures are not all NULL.
        mp.setenv("PAPERTAG_PRICES", '{"smollm2": [0.1, 0.2]}')
        mp.delenv("OPENAI_API_KEY", raising=False)
        annotate_papers(
            path,
            "llm",
            model="smollm2",
            base_url="http://127.0.0.1:8765/v1",
            max_reasks=0,
            backoff=0.01,
            max_tokens=600,
            paper_ids=ids,
        )
    # A few review decisions through the review API, so the README's review example has rows.
    from papertag.review import decide, review_queue

    with Store(path) as s:
        queue = review_queue(s, limit=4)
        for item, action in zip(queue, ("accept", "reject", "accept", "reject"), strict=True):
            decide(s, item, action, reviewer="tester")


@pytest.fixture(scope="session")
def built_dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    demo, example = root / "demo.duckdb", root / "example.duckdb"
    _build_demo(demo)
    shutil.copyfile(demo, example)
    _build_example(example)
    return {"demo": demo, "example": example}


@pytest.fixture
def demo_db(built_dbs: dict[str, Path], db_path: Path) -> Path:
    """A private copy of the `make demo` database at the test's PAPERTAG_DB."""
    shutil.copyfile(built_dbs["demo"], db_path)
    return db_path


@pytest.fixture
def example_db(built_dbs: dict[str, Path], db_path: Path) -> Path:
    """A private copy of the example database (demo + dated files + LLM calls)."""
    shutil.copyfile(built_dbs["example"], db_path)
    return db_path


def write_papers(path: Path, papers: list[tuple[str, str]]) -> Path:
    """A JSONL digest of (title, abstract) pairs."""
    path.write_text(
        "".join(json.dumps({"title": t, "abstract": a}) + "\n" for t, a in papers),
        encoding="utf-8",
    )
    return path


def ingest_variants(db: Path, tmp_path: Path, n: int) -> list[str]:
    """``n`` papers "Paper i: tiny quant" of ABSTRACT and a last sentence of their own (each
    distinct to the store), ingested; their ids in order."""
    papers = [(f"Paper {i}: tiny quant", ABSTRACT + f" Variant {i}.") for i in range(n)]
    assert ingest_digests([write_papers(tmp_path / "papers.jsonl", papers)], db).ok
    with Store(db) as s:
        return [r[0] for r in s.con.execute("SELECT paper_id FROM papers ORDER BY ALL").fetchall()]


def spawn_annotate(
    db: Path, url: str, *extra: str, columns: int | None = None
) -> subprocess.Popen[str]:
    """`papertag annotate -a llm` against ``url`` in its own process group, as a shell job
    (Ctrl-C goes to the group); ``columns``: the width its output is laid out to (a pipe's
    is 80)."""
    cmd = [PAPERTAG, "--db", str(db), "annotate", "-a", "llm", "--model", "fake-model"]
    return subprocess.Popen(
        [*cmd, "--base-url", url, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": str(columns)} if columns else None,
        process_group=0,
    )


@contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc``, killed and waited for if the block leaves it running (an assertion failed):
    no process outlives its test."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
