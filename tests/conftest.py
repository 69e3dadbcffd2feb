"""Shared fixtures. Every test gets its own database file and a clean environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from papertag.store import Store

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DIGESTS = sorted((SHARED / "digests").glob("*.txt"))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Own working directory and database; no keys or papertag settings leak in."""
    import os

    for name in list(os.environ):
        if name.startswith(("OPENAI_", "PAPERTAG_", "AZURE_OPENAI", "OPENROUTER_")):
            monkeypatch.delenv(name)
    db = tmp_path / "test.duckdb"
    monkeypatch.setenv("PAPERTAG_DB", str(db))
    monkeypatch.chdir(tmp_path)
    yield db


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


@pytest.fixture(scope="module")
def vcr_config() -> dict[str, object]:
    return {
        "filter_headers": _REQUEST_HEADERS,
        "before_record_response": _scrub_response,
        "decode_compressed_response": True,
    }


@pytest.fixture(scope="module")
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    return str(ROOT / "cassettes" / request.module.__name__.rsplit(".", 1)[-1])
