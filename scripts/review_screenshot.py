"""Regenerate docs/review.svg, the README's screenshot of `papertag review`.

Builds a throwaway database from one shared digest (rules annotator, offline), opens the
review app headless at 110x36, accepts one label so the progress line moves, and saves
the screen as SVG. Run: .venv/bin/python scripts/review_screenshot.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from papertag.annotate import annotate_papers
from papertag.db import Store
from papertag.ingest import ingest_digests
from papertag.review import review_queue
from papertag.review.app import ReviewApp

ROOT = Path(__file__).resolve().parents[1]
DIGEST = sorted((ROOT.parent / "shared" / "digests").glob("*.txt"))[-1]
OUT = ROOT / "docs" / "review.svg"


async def shoot(db: Path, out: Path) -> None:
    with Store(db) as store:
        tui = ReviewApp(store, review_queue(store), reviewer="alice")
        async with tui.run_test(size=(110, 36)) as pilot:
            await pilot.pause()
            await pilot.press("a")
            await pilot.pause()
            out.write_text(tui.export_screenshot(title="papertag review"), encoding="utf-8")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "shot.duckdb"
        ingest_digests([DIGEST], db)
        annotate_papers(db, limit=20)
        OUT.parent.mkdir(exist_ok=True)
        asyncio.run(shoot(db, OUT))
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
