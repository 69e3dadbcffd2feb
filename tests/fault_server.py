"""A fault-injecting OpenAI-compatible server on 127.0.0.1, for tests and benchmarks.

One asyncio loop serves HTTP/1.1 with keep-alive, so hundreds of concurrent
slow requests cost no threads. Answers come from, in order of precedence:

* ``route(request, n)``: a function of the request body and how many times this
  paper's title has been asked (fault tables pick a fault per paper);
* ``replies``: a script served in order (the last one repeats);
* otherwise a valid annotation built from the request's own abstract, after
  ``latency`` seconds, with a ``fault_rate`` share of random server faults.

``gated`` holds every answer until the test lets it go (:meth:`FaultServer.allow`):
a test then knows how many answers a client can have had, whatever the machine's speed.

``rpm`` turns on an OpenAI-like request limit (a token bucket refilled at
rpm/60 a second, one second deep) with ``x-ratelimit-*`` headers (``rate_headers``)
and 429s carrying ``retry-after`` (``retry_after_header``).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import http.server
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from .local_server import HttpRequest, LocalServer
from .local_server import Reply as Reply  # the tests build their answers from here


def completion(
    content: str,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    usage: dict[str, Any] | None = None,
    tool: str | None = None,
) -> dict[str, Any]:
    """A chat completion whose answer is ``content``: as the message's text, or with
    ``tool`` as the arguments of a call of that function (tools mode)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_" + hashlib.sha256(content.encode()).hexdigest()[:12],
                "type": "function",
                "function": {"name": tool, "arguments": content},
            }
        ]
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage or {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    }


_TAG = re.compile(r"<(title|abstract)>\s*(.*?)\s*</\1>", re.DOTALL)
_PAPER = re.compile(r'<paper(?:\s+id="(\d+)")?\s*>(.*?)</paper>', re.DOTALL)


def _user_text(request: dict[str, Any]) -> str:
    for m in request.get("messages", []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return str(m["content"])
    return ""


def papers_of(request: dict[str, Any]) -> list[dict[str, str]]:
    """The papers of a chat request's first user message, in order: each its ``id`` (the
    number the prompt gives it, "1" when it has none), ``title`` and ``abstract``."""
    text = _user_text(request)
    papers = [
        {"id": number or "1", **dict(_TAG.findall(block))} for number, block in _PAPER.findall(text)
    ]
    return papers or ([{"id": "1", **dict(_TAG.findall(text))}] if _TAG.search(text) else [])


def paper_of(request: dict[str, Any]) -> dict[str, str]:
    """The title and abstract of the first paper of a chat request."""
    papers = papers_of(request)
    return {k: v for k, v in papers[0].items() if k != "id"} if papers else {}


# -- usage as a provider reports it ---------------------------------------------------------
#: Characters a token, as the estimates of papertag and of the issue's figures count.
TOKEN_CHARS = 4
#: A provider caches a prompt's prefix from this many tokens on, in steps of CACHE_STEP
#: (OpenAI's prompt caching: 1,024 tokens, then every 128).
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128


def tokens(text: str) -> int:
    return -(-len(text) // TOKEN_CHARS)


def prompt_text(request: dict[str, Any]) -> str:
    """What a provider puts in front of the model, in its order: the tool and
    response-format definitions first, then every message."""
    parts = [
        json.dumps(request[key], separators=(",", ":"))
        for key in ("tools", "response_format")
        if request.get(key)
    ]
    for m in request.get("messages", []):
        content = m.get("content")
        parts.append(f"<|{m.get('role')}|>")
        parts.append(content if isinstance(content, str) else json.dumps(content or ""))
        if m.get("tool_calls"):
            parts.append(json.dumps(m["tool_calls"], separators=(",", ":")))
    return "".join(parts)


class PromptCache:
    """A provider's prompt cache: a prompt's longest prefix, in whole steps from
    CACHE_MIN_TOKENS on, that an earlier prompt began with is billed as cached."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def cached_tokens(self, text: str) -> int:
        h = hashlib.sha256()
        done = cached = 0
        for boundary in range(CACHE_MIN_TOKENS, tokens(text) + 1, CACHE_STEP_TOKENS):
            end = boundary * TOKEN_CHARS
            h.update(text[done:end].encode())
            done = end
            digest = h.digest()
            if digest in self._seen:
                cached = boundary
            self._seen.add(digest)
        return cached


def usage(request: dict[str, Any], answer: str, cache: PromptCache | None = None) -> dict[str, Any]:
    """The usage a provider reports for this request and answer (cached tokens, if a
    cache is given, count in the prompt's tokens, as OpenAI reports them)."""
    text = prompt_text(request)
    prompt = tokens(text)
    out = tokens(answer)
    cached = cache.cached_tokens(text) if cache is not None else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _quote(words: list[str], start: int, n: int = 8) -> str:
    part = words[start : start + n] or words[:n]
    return " ".join(part) or "x"


def _entry(abstract: str) -> dict[str, Any]:
    """A schema-valid annotation of one paper whose evidence quotes its abstract, of about
    the size a hosted model's answer has (a few labels, one runner-up)."""
    words = abstract.split()
    return {
        "technique": [{"id": "quantization", "confidence": 0.9, "evidence": _quote(words, 0)}],
        "modality": [{"id": "text", "confidence": 0.9, "evidence": _quote(words, 4)}],
        "target_metric": [
            {"id": "memory", "confidence": 0.9, "evidence": _quote(words, 8)},
            {"id": "latency", "confidence": 0.6, "evidence": _quote(words, 12)},
        ],
        "candidates": [
            {
                "field": "technique",
                "id": "distillation",
                "confidence": 0.35,
                "evidence": _quote(words, 16),
            }
        ],
    }


def _tool_name(request: dict[str, Any]) -> str | None:
    tools = request.get("tools") or []
    return str(tools[0]["function"]["name"]) if tools else None


def _wants_list(request: dict[str, Any]) -> bool:
    """Whether the request's schema asks for a list of entries, one per paper."""
    schema = json.dumps([request.get("tools"), request.get("response_format")])
    return '"papers"' in schema or any(
        '"papers"' in str(m.get("content") or "") for m in request.get("messages", [])
    )


def valid_answer(request: dict[str, Any], cache: PromptCache | None = None) -> dict[str, Any]:
    """A schema-valid answer for every paper of the request, whose evidence quotes each
    paper's own abstract; in the request's mode (a tool call, or JSON text), with the
    usage a provider would report (``cache``: its prompt cache)."""
    papers = papers_of(request)
    if _wants_list(request):
        answer: dict[str, Any] = {
            "papers": [{"paper": int(p["id"]), **_entry(p.get("abstract", ""))} for p in papers]
        }
    else:
        answer = _entry(papers[0].get("abstract", "") if papers else "")
    content = json.dumps(answer)
    return completion(content, usage=usage(request, content, cache), tool=_tool_name(request))


RANDOM_FAULTS: list[Reply] = [
    Reply(status=429, body={"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}}),
    Reply(status=500, body={"error": {"message": "boom"}}),
    Reply(status=502, body=b"bad gateway"),
    Reply(status=503, body={"error": {"message": "overloaded"}}),
    Reply(drop=True),
]


class FaultServer(LocalServer):
    base_path = "/v1"

    def __init__(
        self,
        replies: list[Reply] | None = None,
        *,
        route: Callable[[dict[str, Any], int], Reply | None] | None = None,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        rpm: float | None = None,
        rate_headers: bool = True,
        retry_after_header: bool = True,
        keep_requests: bool = True,
        gated: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.replies = list(replies or [])
        self.route = route
        self.latency = latency
        self.fault_rate = fault_rate
        self.rpm = rpm
        self.rate_headers = rate_headers
        self.retry_after_header = retry_after_header
        self.keep_requests = keep_requests
        self.random = random.Random(seed)
        self.requests: list[dict[str, Any]] = []
        #: The prompt cache behind the usage of default answers.
        self.cache = PromptCache()
        self.headers: list[dict[str, str]] = []
        self.statuses: Counter[int] = Counter()
        self.asked: Counter[str] = Counter()
        self.count = 0
        #: How often each distinct request body arrived (a count above 1 is a repeat).
        self.bodies: Counter[str] = Counter()
        self.first_at: float | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        #: With ``gated``: requests numbered up to this are answered, later ones wait.
        self.allowed: int | None = 0 if gated else None
        self._gate = asyncio.Condition() if gated else None
        self._bucket = float(self._depth)
        self._refilled = time.monotonic()

    @property
    def calls(self) -> int:
        return self.count

    @property
    def _depth(self) -> float:
        return max(1.0, (self.rpm or 60) / 60)

    # -- rate limit (an OpenAI-like token bucket) --------------------------------
    def _take(self) -> tuple[bool, dict[str, str]]:
        if self.rpm is None:
            return True, {}
        now = time.monotonic()
        rate = self.rpm / 60
        self._bucket = min(self._depth, self._bucket + (now - self._refilled) * rate)
        self._refilled = now
        ok = self._bucket >= 1
        if ok:
            self._bucket -= 1
        headers: dict[str, str] = {}
        if self.rate_headers:
            headers = {
                "x-ratelimit-limit-requests": str(int(self.rpm)),
                "x-ratelimit-remaining-requests": str(int(self._bucket)),
                "x-ratelimit-reset-requests": f"{(self._depth - self._bucket) / rate:.3f}s",
            }
        if not ok and self.retry_after_header:
            headers["retry-after-ms"] = str(int((1 - self._bucket) / rate * 1000) + 1)
        return ok, headers

    def _answer(self, request: dict[str, Any]) -> Reply:
        title = paper_of(request).get("title", "")
        self.asked[title] += 1
        if self.route is not None:
            routed = self.route(request, self.asked[title])
            if routed is not None:
                return routed
        if self.replies:
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if self.fault_rate and self.random.random() < self.fault_rate:
            return self.random.choice(RANDOM_FAULTS)
        return Reply(body=valid_answer(request, self.cache), delay=self.latency)

    # -- HTTP/1.1 ----------------------------------------------------------------
    async def _exchange(self, writer: asyncio.StreamWriter, http: HttpRequest) -> bool:
        raw = http.body
        other = self.endpoint(http.method, http.target, http.headers, raw)
        if other is not None:
            return await self._send(writer, other, {})
        request = json.loads(raw) if raw else {}
        self.count += 1
        number = self.count
        self.bodies[hashlib.sha256(raw).hexdigest()] += 1
        if self.first_at is None:
            self.first_at = time.monotonic()
        if self.keep_requests:
            self.requests.append(request)
            self.headers.append(http.headers)
        allowed, limit_headers = self._take()
        if allowed:
            reply = self._answer(request)
        else:
            reply = Reply(
                status=429,
                body={
                    "error": {
                        "message": "Rate limit reached for requests",
                        "type": "requests",
                        "code": "rate_limit_exceeded",
                    }
                },
            )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._turn(number)
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self.in_flight -= 1
        self.statuses[0 if reply.drop else reply.status] += 1
        return await self._send(writer, reply, limit_headers)

    def endpoint(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply | None:
        """The answer of an endpoint other than chat completions (a subclass serves
        ``/v1/files`` and ``/v1/batches``); None: the request is a chat completion."""
        return None

    # -- the gate ------------------------------------------------------------------
    async def _turn(self, number: int) -> None:
        """Wait until request ``number`` may be answered (at once when not gated)."""
        if self._gate is None:
            return
        async with self._gate:
            await self._gate.wait_for(lambda: self.allowed is None or number <= self.allowed)

    def allow(self, n: int | None) -> None:
        """Answer the first ``n`` requests (None: every request, from now on)."""

        async def set_allowed() -> None:
            assert self._gate is not None
            async with self._gate:
                self.allowed = n
                self._gate.notify_all()

        if self._gate is None:
            raise RuntimeError("allow() needs a server started with gated=True")
        asyncio.run_coroutine_threadsafe(set_allowed(), self.loop).result(10)


@contextmanager
def fault_server(replies: list[Reply] | None = None, **options: Any) -> Iterator[FaultServer]:
    with FaultServer(replies, **options).start() as srv:
        yield srv


class _ForwardHandler(http.server.BaseHTTPRequestHandler):
    """Forwards plain-HTTP requests in absolute form (as a client sends them to a proxy)."""

    protocol_version = "HTTP/1.1"
    server: ForwardProxy

    def do_POST(self) -> None:
        self.server.seen.append(self.path)
        target = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "connection", "proxy-connection", "keep-alive")
        }
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        try:
            upstream.request("POST", target.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("connection", "content-length", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ForwardProxy(http.server.ThreadingHTTPServer):
    """An HTTP forward proxy on 127.0.0.1 that records the URL of each request it passes on."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ForwardHandler)
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def forward_proxy() -> Iterator[ForwardProxy]:
    proxy = ForwardProxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(10)


def main() -> None:
    """Serve until killed: ``python -m tests.fault_server --latency 0.2 --rpm 600``."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--rpm", type=float)
    ap.add_argument("--no-rate-headers", action="store_true")
    args = ap.parse_args()
    srv = FaultServer(
        latency=args.latency,
        fault_rate=args.fault_rate,
        rpm=args.rpm,
        rate_headers=not args.no_rate_headers,
        keep_requests=False,
    )
    srv.serve_until_interrupted(args.port)


if __name__ == "__main__":
    main()
