"""Open an HTML file in headless Chromium (Debian's package) the way a person would.

Playwright for Python drives it over a pipe (no port, no download: never
`playwright install`). Used by the report tests and by `make screenshot`:

    python -m tests.browser report.html docs/report.png
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, ConsoleMessage, Request, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# The machine has no network but package registries: keep Chromium from phoning home.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Per chart container: plotly's SVG layers, drawn traces, and the marks inside them
# (bars and markers are .point, a heatmap is an image in g.hm, a line is path.js-line).
_CHART_STATS = """
() => Object.fromEntries([...document.querySelectorAll('[data-chart]')].map(c => [
  c.dataset.chart,
  {svgs: c.querySelectorAll('svg.main-svg').length,
   traces: c.querySelectorAll('g.trace, g.hm').length,
   marks: c.querySelectorAll('g.trace .point, g.hm image, g.trace path.js-line').length,
   text: c.querySelector('.annotation-text') ? c.querySelector('.annotation-text').textContent : ''}
]))
"""


@dataclass
class Page:
    charts: dict[str, dict[str, Any]]
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    title: str = ""
    header: str = ""


@contextmanager
def chromium() -> Iterator[BrowserContext]:
    """A fresh headless Chromium with its own throwaway profile."""
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()


def open_page(ctx: BrowserContext, html: Path, screenshot: Path | None = None) -> Page:
    """Load ``html``, wait until every chart drew, record console messages and requests."""
    page = ctx.new_page()
    seen = Page(charts={})

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            seen.console.append(f"{msg.type}: {msg.text}")

    def on_request(req: Request) -> None:
        seen.requests.append(req.url)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen.console.append(f"pageerror: {exc}"))
    page.on("request", on_request)
    try:
        page.goto(html.resolve().as_uri(), wait_until="load")
        page.wait_for_function(
            "[...document.querySelectorAll('[data-chart]')]"
            ".every(c => c.querySelector('svg.main-svg'))",
            timeout=30_000,
        )
        seen.charts = page.evaluate(_CHART_STATS)
        seen.title = page.title()
        seen.header = page.inner_text("header")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    return seen


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.browser REPORT.html SCREENSHOT.png", file=sys.stderr)
        return 2
    with chromium() as ctx:
        seen = open_page(ctx, Path(argv[0]), Path(argv[1]))
    if seen.console:
        print("\n".join(seen.console), file=sys.stderr)
        return 1
    print(f"{argv[1]}: {len(seen.charts)} charts")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
