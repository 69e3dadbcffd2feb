"""What the test servers share: HTTP/1.1 with keep-alive on 127.0.0.1, one asyncio loop in
a thread that a test starts and stops (:mod:`tests.fault_server`, :mod:`tests.daily_server`).

A subclass answers one request at a time through :meth:`LocalServer._exchange`, and writes
its answer with :meth:`LocalServer._send`, which also plays a :class:`Reply`'s faults
(a reset connection, a body cut short of its Content-Length).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict (sent as JSON), bytes, or None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering (connection reset)
    truncate: bool = False  # send a Content-Length larger than the body
    delay: float = 0.0  # seconds before answering (a read timeout when above the client's)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str  # the path and query
    headers: dict[str, str]  # names in lower case
    body: bytes


class LocalServer:
    #: What ``url`` adds to the server's address (an API's root).
    base_path: ClassVar[str] = ""
    content_type: ClassVar[str] = "application/json"
    #: Reason phrases of the status line by status; "X" for any other (clients ignore it).
    phrases: ClassVar[Mapping[int, str]] = {}

    def __init__(self) -> None:
        #: TCP connections accepted (a kept-alive connection serves many requests).
        self.connections = 0
        #: Answers written back (a gated request counts once it is let go and answered).
        self.answered = 0
        self.last_at: float | None = None
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    async def _exchange(self, writer: asyncio.StreamWriter, http: HttpRequest) -> bool:
        """Answer one request; False when the connection is closed after it."""
        raise NotImplementedError

    def _encode(self, body: Any) -> bytes:
        return body if isinstance(body, bytes) else json.dumps(body or {}).encode()

    # -- HTTP/1.1 ----------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            try:
                await self._serve(reader, writer)
            finally:
                if not writer.is_closing():
                    writer.close()
        except asyncio.CancelledError:
            # Shutting down with requests still sleeping: end quietly (asyncio logs a
            # cancelled connection task as an error otherwise).
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            target = rest.rpartition(" ")[0] or rest
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            try:
                raw = await reader.readexactly(int(headers.get("content-length", 0)))
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # the client died while sending (the benchmark's kill -9)
            if not await self._exchange(writer, HttpRequest(method, target, headers, raw)):
                return

    async def _send(
        self, writer: asyncio.StreamWriter, reply: Reply, extra: dict[str, str]
    ) -> bool:
        """Write one answer; False when the connection is closed after it."""
        if reply.drop:
            writer.transport.abort()
            return False
        body = self._encode(reply.body)
        headers = {"content-type": self.content_type, **extra, **reply.headers}
        out = [
            f"HTTP/1.1 {reply.status} {self.phrases.get(reply.status, 'X')}",
            f"content-length: {len(body) + (100 if reply.truncate else 0)}",
        ]
        out += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
        # Counted before the drain: a client may read the answer before drain() returns.
        self.answered += 1
        self.last_at = time.monotonic()
        await writer.drain()
        if reply.truncate:
            writer.close()
            return False
        return True

    # -- lifecycle -----------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()
        # Close what is still open so no socket outlives the server (warnings are errors).
        if self._server is not None:
            self._server.close()
        tasks = asyncio.all_tasks(self.loop)
        for t in tasks:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_interrupted(self, port: int, *about: str) -> None:
        """Serve on ``port`` (0: any free one) until Ctrl-C, after printing the URL and ``about``
        (for running a server by hand: ``python -m tests.fault_server``)."""
        self.port = port
        self.start()
        print(self.url, *about, flush=True)
        try:
            threading.Event().wait()  # until Ctrl-C
        except KeyboardInterrupt:
            self.stop()
