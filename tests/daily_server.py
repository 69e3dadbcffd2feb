"""The Hugging Face daily-papers API on 127.0.0.1, for tests: real answers, by date.

``GET /api/daily_papers?date=YYYY-MM-DD`` answers the shared file of that day, byte for
byte (a file is the day in its name: ``../shared/samples/`` and
``../shared/external/hf_api/``, the Python-repr file among them), and ``[]``, the API's
answer for a day without papers, for any other day. No answer here is written by hand.

Faults are injected per day, in order, before the day's file is served: a status with
headers and a body (``Reply`` of :mod:`tests.fault_server`: bytes of a real file, or a
truncated copy of them), a reset connection (``drop``), a body cut short of its
Content-Length (``truncate``), a delay. One asyncio loop in a thread serves HTTP/1.1
with keep-alive (:mod:`tests.local_server`, as for :mod:`tests.fault_server`).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from .local_server import HttpRequest, LocalServer, Reply

SHARED = Path(__file__).resolve().parents[2] / "shared"
#: Every real answer of the API in ../shared, by the day in its file name.
DAY_FILES: dict[date, Path] = {
    date.fromisoformat(m.group(1)): path
    for path in sorted(
        [*(SHARED / "samples").glob("*.json"), *(SHARED / "external" / "hf_api").glob("*.json")]
    )
    if (m := re.search(r"(\d{4}-\d{2}-\d{2})", path.name))
}
#: A real error object of the API (committed by mistake to a newsletter's repository).
ERROR_BODY = SHARED / "external" / "hf_api" / "hf_api_error_body_deep-diver_papers.json"
#: The answer for a day without papers, as the API gives it.
NO_PAPERS = b"[]"
_PATH = "/api/daily_papers"


class DailyServer(LocalServer):
    content_type = "application/json; charset=utf-8"
    # The API's own phrases: papertag's error messages quote them.
    phrases: ClassVar[Mapping[int, str]] = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }

    def __init__(
        self,
        files: dict[date, Path] | None = None,
        faults: dict[date, list[Reply]] | None = None,
    ) -> None:
        super().__init__()
        self.files = dict(DAY_FILES if files is None else files)
        self.faults = {d: list(r) for d, r in (faults or {}).items()}
        #: Requests per day asked (days as ISO strings), retries included.
        self.requests: Counter[str] = Counter()

    def body(self, day: date) -> bytes:
        path = self.files.get(day)
        return path.read_bytes() if path else NO_PAPERS

    def _answer(self, target: str) -> Reply:
        split = urlsplit(target)
        day_text = (parse_qs(split.query).get("date") or [""])[0]
        if split.path != _PATH:
            return Reply(status=404, body=ERROR_BODY.read_bytes())
        try:
            day = date.fromisoformat(day_text)
        except ValueError:
            return Reply(status=400, body=b"")
        self.requests[day.isoformat()] += 1
        queued = self.faults.get(day)
        if queued:
            return queued.pop(0)
        return Reply(body=self.body(day))

    async def _exchange(self, writer: asyncio.StreamWriter, http: HttpRequest) -> bool:
        reply = self._answer(http.target)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return await self._send(writer, reply, {})

    def _encode(self, body: Any) -> bytes:
        # The API's answers are its files as they are; a fault's status comes with no body.
        return body if isinstance(body, bytes) else b""


@contextmanager
def daily_server(
    files: dict[date, Path] | None = None, faults: dict[date, list[Reply]] | None = None
) -> Iterator[DailyServer]:
    with DailyServer(files, faults).start() as srv:
        yield srv


def main() -> None:
    """Serve the shared days until killed: ``python -m tests.daily_server [--port N]``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = DailyServer()
    srv.serve_until_interrupted(args.port, *sorted(d.isoformat() for d in srv.files))


if __name__ == "__main__":
    main()
