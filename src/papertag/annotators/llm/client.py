"""The HTTP side of LLM calls: one httpx transport that throttles, retries (tenacity) and
records every exchange for ``llm_calls``, wrapped around the transport the ``openai``
client would have used (so proxies, custom headers and Azure work as shipped)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from urllib.parse import urlparse

import httpx2
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from ...db import utc_now
from ...retry_after import retry_after_seconds
from .records import CallRecord, RequestTemplate
from .throttle import Throttle

#: Statuses worth another try: timeouts, conflicts, rate limits, server faults.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: Longest wait we accept from a server's Retry-After.
MAX_SERVER_WAIT = 120.0
#: Where requests go without --base-url or $OPENAI_BASE_URL (the client's own default).
DEFAULT_BASE_URL = "https://api.openai.com/v1"


# --------------------------------------------------------------------------- transport


def environment_proxy(url: str) -> str | None:
    """The proxy that HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY name for ``url``.

    httpx applies these only to a client it builds its own transport for; the
    annotator's client is given :class:`CallTransport`, so the proxy is read here, from
    the same variables (the standard library's reading of them), and given to the
    ``HTTPTransport`` inside it.
    """
    parts = urlparse(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc or parts.hostname or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def http_transport(url: str, connections: int) -> httpx2.HTTPTransport:
    """The transport the client would use for ``url``: through the environment's proxy,
    with a keep-alive connection for each request in flight."""
    return httpx2.HTTPTransport(
        proxy=environment_proxy(url),
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


class _RetryableStatus(Exception):
    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        super().__init__(f"HTTP {response.status_code}")


def _parse_duration(text: str) -> float | None:
    """OpenAI's reset headers look like '1s', '6m0s', '20ms', '0.5s'."""
    total, found = 0.0, False
    for num, unit in re.findall(r"([\d.]+)\s*(ms|s|m|h)", text):
        found = True
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if found:
        return total
    try:
        return float(text)
    except ValueError:
        return None


def server_wait(headers: httpx2.Headers) -> float | None:
    """Seconds the server asks us to wait, from Retry-After-Ms, Retry-After or x-ratelimit-reset-*."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            value = float(ms) / 1000
            if value > 0:
                return value
        except ValueError:
            pass
    if (ra := retry_after_seconds(headers.get("retry-after"))) is not None:
        return ra
    resets = [
        d
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (v := headers.get(name)) and (d := _parse_duration(v)) is not None
    ]
    return max(resets) if resets else None


def _max_tokens(body: bytes) -> int:
    match = re.search(rb'"max_(?:completion_)?tokens"\s*:\s*(\d+)', body)
    return int(match.group(1)) if match else 0


def summarise_response(record: CallRecord, body: bytes) -> None:
    record.response_body = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    usage = data.get("usage") or {}
    if isinstance(usage, dict):
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            record.cached_tokens = details.get("cached_tokens")
    choices = data.get("choices") or []
    if choices and isinstance(choices[0], dict):
        record.finish_reason = choices[0].get("finish_reason")
        message = choices[0].get("message") or {}
        record.refusal = message.get("refusal") if isinstance(message, dict) else None
    err = data.get("error")
    if err:
        record.error = (err.get("message") if isinstance(err, dict) else str(err)) or str(err)


class CallTransport(httpx2.BaseTransport):
    """Throttles, retries transient faults with tenacity, and records every exchange.

    Wraps the transport that sends (an ``HTTPTransport``, so recorded cassettes replay
    through it). Each attempt first takes a slot of the :class:`Throttle` (concurrency
    and rate), and gives it back with what the answer said. Retries 408/409/429/5xx,
    connection errors and timeouts with exponential backoff and jitter, waiting what
    the server asks when it says (Retry-After, Retry-After-Ms, x-ratelimit-reset-*).
    400/401/403/404/422 are returned at once. Every exchange goes to ``on_call``.
    """

    def __init__(
        self,
        inner: httpx2.BaseTransport | None = None,
        *,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        on_call: Callable[[CallRecord], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        self.inner = inner or httpx2.HTTPTransport()
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_call = on_call
        self.throttle = throttle
        self.sleep = sleep or (throttle.sleep if throttle is not None else time.sleep)
        # One policy for every request (tenacity keeps each call's state per thread).
        self._retrying = Retrying(
            stop=stop_after_attempt(max_attempts),
            wait=self._wait,
            sleep=lambda seconds: self.sleep(seconds),  # looked up late: tests swap it
            retry=retry_if_exception_type((_RetryableStatus, httpx2.TransportError)),
            reraise=True,
        )
        #: The part every request shares, stored once instead of in each call's row.
        self.template: RequestTemplate | None = None
        #: Responses already paid for (a run killed before storing its results), by request hash.
        self.replay: dict[str, list[tuple[int, str]]] = {}
        self._replay_lock = threading.Lock()
        #: Whether the server was ever reached: an answer of any status, or a connection it
        #: then broke or left unanswered (not a connection refused, unresolved or timed out).
        self.reached = False

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryableStatus):
            asked = server_wait(exc.response.headers)
            if asked is not None:
                return min(asked, MAX_SERVER_WAIT)
        # Exponential backoff with jitter (tenacity's wait_exponential_jitter warns on this version).
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** (state.attempt_number - 1))
        return float(ceiling / 2 + random.uniform(0, ceiling / 2))

    def _replayed(self, request_hash: str) -> tuple[int, str] | None:
        if not self.replay:
            return None
        with self._replay_lock:
            stored = self.replay.get(request_hash)
            return stored.pop(0) if stored else None

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        host = request.url.host + (f":{request.url.port}" if request.url.port else "")
        request_hash = hashlib.sha256(body).hexdigest()[:16]
        request_text = body.decode("utf-8", errors="replace")
        template_id = None
        if self.template is not None and (part := self.template.middle(request_text)) is not None:
            template_id, request_text = self.template.template_id, part

        def new_record(attempt: int) -> CallRecord:
            return CallRecord(
                started_at=utc_now(),
                host=host,
                path=request.url.path,
                request_hash=request_hash,
                request_body=request_text,
                attempt=attempt,
                duration_ms=0.0,
                request_template=template_id,
            )

        if (stored := self._replayed(request_hash)) is not None:
            call_id, content = stored
            record = new_record(1)
            record.status, record.replay_of = 200, call_id
            summarise_response(record, content.encode())
            self._emit(record)
            return httpx2.Response(
                200,
                headers={"content-type": "application/json"},
                content=content.encode(),
                request=request,
            )
        # What a token-rate limit counts: the prompt (about 4 characters a token) plus the
        # completion the server must reserve.
        est_tokens = len(body) // 4 + _max_tokens(body)
        attempt_no = 0

        def once() -> httpx2.Response:
            nonlocal attempt_no
            attempt_no += 1
            if self.throttle is not None:
                self.throttle.acquire(est_tokens)
            record = new_record(attempt_no)  # started now: after any wait for a slot
            t0 = time.perf_counter()
            try:
                response = self.inner.handle_request(request)
                content = response.read()
            except httpx2.TransportError as exc:
                if not isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
                    self.reached = True
                record.duration_ms = (time.perf_counter() - t0) * 1000
                record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if self.throttle is not None:
                    self.throttle.release(None, {})
                self._emit(record)
                raise
            record.duration_ms = (time.perf_counter() - t0) * 1000
            record.status = response.status_code
            self.reached = True
            summarise_response(record, content)
            if response.status_code >= 400 and record.error is None:
                record.error = f"HTTP {response.status_code}"
            record.retry_after = server_wait(response.headers)
            try:
                # Journaled before the slot goes to the next request (waiting, built, in
                # another thread, which would otherwise take the interpreter first): an
                # answer is on disk within a fraction of a millisecond of arriving.
                self._emit(record)
            finally:
                if self.throttle is not None:
                    self.throttle.release(
                        response.status_code, response.headers, record.retry_after
                    )
            if response.status_code in RETRY_STATUSES:
                raise _RetryableStatus(response)
            return response

        try:
            # Most requests succeed at once: tenacity's bookkeeping (a few percent of a
            # call) starts only after a failure, which it is handed as its first attempt.
            return once()
        except (_RetryableStatus, httpx2.TransportError) as exc:
            first: list[BaseException] = [exc]

        def attempt() -> httpx2.Response:
            if first:
                raise first.pop()
            return once()

        try:
            return self._retrying(attempt)
        except _RetryableStatus as exc:
            # Out of attempts: hand the last answer to openai, which raises its typed error.
            return exc.response

    def _emit(self, record: CallRecord) -> None:
        if self.on_call is not None:
            self.on_call(record)

    def close(self) -> None:
        self.inner.close()
