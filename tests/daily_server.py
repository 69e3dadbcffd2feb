"""The Hugging Face daily-papers API on 127.0.0.1, for tests: real answers, by date.

``GET /api/daily_papers?date=YYYY-MM-DD`` answers the shared file of that day, byte for
byte (a file is the day in its name: ``../shared/samples/`` and
``../shared/external/hf_api/``, the Python-repr file among them), and ``[]``, the API's
answer for a day without papers, for any other day. No answer here is written by hand.

Faults are injected per day, in order, before the day's file is served: a status with
headers and a body (``Reply`` of :mod:`tests.fault_server`: bytes of a real file, or a
truncated copy of them), a reset connection (``drop``), a body cut short of its
Content-Length (``truncate``), a delay. One asyncio loop in a thread serves HTTP/1.1
with keep-alive, as :mod:`tests.fault_server` does.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .fault_server import Reply

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


class DailyServer:
    def __init__(
        self,
        files: dict[date, Path] | None = None,
        faults: dict[date, list[Reply]] | None = None,
    ) -> None:
        self.files = dict(DAY_FILES if files is None else files)
        self.faults = {d: list(r) for d, r in (faults or {}).items()}
        #: Requests per day asked (days as ISO strings), retries included.
        self.requests: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line = head.decode("latin-1").split("\r\n", 1)[0]
                parts = request_line.split(" ")
                reply = self._answer(parts[1] if len(parts) > 1 else "/")
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.drop:
                    writer.transport.abort()
                    return
                body = reply.body if isinstance(reply.body, bytes) else b""
                lines = [
                    f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, 'X')}",
                    "content-type: application/json; charset=utf-8",
                    f"content-length: {len(body) + (100 if reply.truncate else 0)}",
                    *(f"{k}: {v}" for k, v in reply.headers.items()),
                ]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                await writer.drain()
                if reply.truncate:
                    writer.close()
                    return
        finally:
            if not writer.is_closing():
                writer.close()

    # -- lifecycle -----------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()
        if self._server is not None:
            self._server.close()
        tasks = asyncio.all_tasks(self.loop)
        for t in tasks:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def start(self) -> DailyServer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


_PHRASES = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@contextmanager
def daily_server(
    files: dict[date, Path] | None = None, faults: dict[date, list[Reply]] | None = None
) -> Iterator[DailyServer]:
    srv = DailyServer(files, faults).start()
    try:
        yield srv
    finally:
        srv.stop()


def main() -> None:
    """Serve the shared days until killed: ``python -m tests.daily_server [--port N]``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    srv = DailyServer()
    srv.port = args.port
    srv.start()
    print(srv.url, *sorted(d.isoformat() for d in srv.files), flush=True)
    try:
        threading.Event().wait()  # until Ctrl-C
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
