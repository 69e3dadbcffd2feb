"""``--annotator llm``: a structured-output prompt on OpenAI or any OpenAI-compatible server.

instructor (over the official ``openai`` client) asks for an :class:`Annotation`
and re-asks with the validation error a bounded number of times. Transport
faults are retried by tenacity inside :class:`CallTransport`, which also records
every HTTP exchange for the ``llm_calls`` table. The ``openai`` client's own
retries are turned off (``max_retries=0``) so the two never multiply.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import logging
import os
import random
import re
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2
import instructor
import pydantic
from instructor.core import IncompleteOutputException
from instructor.v2.core.function_calls import ResponseSchema
from instructor.v2.core.providers import Provider
from instructor.v2.core.registry import mode_registry

# From the modules that define them, not from the package: the worker defers openai's
# __init__ (worker.main), which imports every type of every API.
from openai import _exceptions as openai_errors
from openai._client import OpenAI
from openai._models import FinalRequestOptions
from openai.types.chat import ChatCompletion
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from ..errors import AnnotationError, PapertagError, ProviderError, ValidationFailed
from ..journal import CallRecord, RequestTemplate
from ..schema import Annotation, ValidationContext, format_validation_error, paper_text
from . import PaperInput
from .llm_config import LLMConfig, estimate_cost
from .throttle import Throttle

# instructor logs every failed attempt at ERROR; we record them in llm_calls instead of
# letting Python's last-resort handler print them over the progress bar.
logging.getLogger("instructor").addHandler(logging.NullHandler())

#: Statuses worth another try: timeouts, conflicts, rate limits, server faults.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: Longest wait we accept from a server's Retry-After.
MAX_SERVER_WAIT = 120.0

#: instructor's mode for each of papertag's --mode names.
MODES = {
    "tools": instructor.Mode.TOOLS,
    "json_schema": instructor.Mode.JSON_SCHEMA,
    "json": instructor.Mode.JSON,
    "md_json": instructor.Mode.MD_JSON,
}


# --------------------------------------------------------------------------- transport


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
    if (ra := headers.get("retry-after")) is not None:
        try:
            return max(float(ra), 0.0)
        except ValueError:
            try:
                return max((parsedate_to_datetime(ra) - datetime.now(UTC)).total_seconds(), 0.0)
            except (TypeError, ValueError):
                pass
    resets = [
        d
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (v := headers.get(name)) and (d := _parse_duration(v)) is not None
    ]
    return max(resets) if resets else None


def _max_tokens(body: bytes) -> int:
    match = re.search(rb'"max_(?:completion_)?tokens"\s*:\s*(\d+)', body)
    return int(match.group(1)) if match else 0


def _summarise_response(record: CallRecord, body: bytes) -> None:
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
    choices = data.get("choices") or []
    if choices and isinstance(choices[0], dict):
        record.finish_reason = choices[0].get("finish_reason")
        message = choices[0].get("message") or {}
        record.refusal = message.get("refusal") if isinstance(message, dict) else None
    err = data.get("error")
    if err:
        record.error = (err.get("message") if isinstance(err, dict) else str(err)) or str(err)


class CallTransport(httpx2.BaseTransport):
    """Retries transient faults with tenacity and records every exchange.

    Wraps the real transport (so recorded cassettes replay through it). Retries
    408/409/429/5xx, connection errors and timeouts with exponential backoff and
    jitter, waiting what the server asks when it says (Retry-After, Retry-After-Ms,
    x-ratelimit-reset-*). 400/401/403/404/422 are returned at once.
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
                started_at=datetime.now(UTC).replace(tzinfo=None),
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
            _summarise_response(record, content.encode())
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
            _summarise_response(record, content)
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


class ConnectionStack(httpx2.BaseTransport):
    """Kept-alive connections, each serving one request at a time.

    A request takes the connection freed last (the one least likely to have been closed
    by the server) or, if every one is busy, opens another: there are never more
    connections than requests in flight at once, however many threads send them.
    One shared httpcore pool would serialise every request on its lock, and while
    holding it poll each idle connection to see whether the server closed it: with 32
    calls in flight, a fast server's requests spent most of their time waiting there.
    Here each connection is a pool of its own, and taking one is a deque pop.
    """

    def __init__(self, *, tls: bool = True) -> None:
        self.tls = tls
        self._ssl: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._idle: collections.deque[httpx2.HTTPTransport] = collections.deque()
        self._pools: list[httpx2.HTTPTransport] = []
        # One ready now: the first builds the SSL context and imports httpcore (a few
        # hundredths of a second), which otherwise every first request of a run waits for.
        self._idle.append(self._open())

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            pool = self._idle.pop()  # a deque's pop and append need no lock
        except IndexError:
            pool = self._open()
        try:
            response = pool.handle_request(request)
            # The connection is free again once the body is read (no call streams).
            response.read()
        finally:
            self._idle.append(pool)
        return response

    def _open(self) -> httpx2.HTTPTransport:
        with self._lock:
            if self._ssl is None:
                # Built once and shared: loading the CA bundle takes 40 ms. A plain-http
                # server needs none.
                self._ssl = httpx2.create_ssl_context(verify=self.tls)
            pool = httpx2.HTTPTransport(
                verify=self._ssl,
                limits=httpx2.Limits(max_connections=1, max_keepalive_connections=1),
            )
            self._pools.append(pool)
        return pool

    @property
    def connections(self) -> int:
        """How many single-connection pools exist: one from the start, then at most the
        requests ever in flight at once."""
        return len(self._pools)

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools)
        for pool in pools:
            pool.close()


# --------------------------------------------------------------------------- prompt


# --------------------------------------------------------------------------- annotator


class PreparedPost:
    """POSTs bodies to one endpoint of an openai client as ``client.post`` would, for
    a fraction of its CPU.

    The client builds the request once (URL, auth header, its own ``x-stainless-*``
    headers, timeout) and still turns every failure into its typed errors, as
    ``client.post`` does: a timeout into APITimeoutError, any other failure to get an
    answer into APIConnectionError, a status other than 2xx into that status's
    APIStatusError. What is no longer done per call is rebuilding that same request
    (copying its options twice, parsing the URL three times, merging the headers):
    0.4 ms a call, a third of a call's CPU, which at a fast server's rate was the
    worker process's limit. Retries are the transport's (the client is built with
    ``max_retries=0``), so nothing else of ``client.post`` applies. Only for a client
    with a fixed key, as papertag builds it (no workload identity, no key provider).
    """

    def __init__(self, client: OpenAI, transport: httpx2.BaseTransport, path: str) -> None:
        template = client._build_request(
            FinalRequestOptions.construct(method="post", url=path, content=b"")
        )
        self.client = client
        self.transport = transport
        self.url = template.url
        self.headers = [(k, v) for k, v in template.headers.raw if k.lower() != b"content-length"]
        self.extensions = template.extensions

    def __call__(self, content: bytes) -> bytes:
        request = httpx2.Request(
            "POST",
            self.url,
            headers=self.headers,
            content=content,
            extensions=dict(self.extensions),
        )
        try:
            response = self.transport.handle_request(request)
        except httpx2.TimeoutException as exc:
            raise openai_errors.APITimeoutError(request=request) from exc
        except openai_errors.OpenAIError:
            raise
        except Exception as exc:
            raise openai_errors.APIConnectionError(request=request) from exc
        response.request = request
        if not response.is_success:
            raise self.client._make_status_error_from_response(response)
        return response.read()


#: Stands for a paper's user message while a request is shaped once per annotator.
_USER_SLOT = "\x00papertag:user-message\x00"
_USER_SLOT_MESSAGE = {"role": "user", "content": _USER_SLOT}


class LLMAnnotator(LLMConfig):
    """Annotate through a chat-completions endpoint with instructor."""

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 120.0,
        transport: httpx2.BaseTransport | None = None,
        **settings: Any,
    ) -> None:
        """``settings`` are :class:`LLMConfig`'s (model, base_url, mode, ...); the rest
        configure the client: HTTP attempts per call, backoff, timeout, and a transport
        to send through (tests, cassettes)."""
        super().__init__(**settings)
        key = os.environ.get(self.api_key_env)
        self.throttle = Throttle(self.concurrency, rpm=self.rpm, tpm=self.tpm)
        # Each worker thread annotates one paper at a time; its HTTP exchanges are its own.
        self._local = threading.local()
        #: Called with (paper_id, record) the moment an exchange ends (the crash journal).
        self.call_sink: Callable[[str, CallRecord], None] | None = None
        self.transport = CallTransport(
            transport or ConnectionStack(tls=not (self.base_url or "").startswith("http://")),
            max_attempts=max_attempts,
            backoff=backoff,
            on_call=self._record,
            throttle=self.throttle,
        )
        # max_retries=0: tenacity in CallTransport owns transport retries, so they never multiply.
        self.client = OpenAI(
            api_key=key or "no-key",
            base_url=self.base_url,
            max_retries=0,
            timeout=timeout,
            http_client=httpx2.Client(
                transport=self.transport,
                timeout=timeout,
                limits=httpx2.Limits(
                    max_connections=self.concurrency,
                    max_keepalive_connections=self.concurrency,
                ),
            ),
        )
        self.post = PreparedPost(self.client, self.transport, "/chat/completions")
        self.handlers = mode_registry.get_handlers(Provider.OPENAI, MODES[self.mode])
        self._template = self._request_template()
        self.transport.template = self._split_template()

    def close(self) -> None:
        self.client.close()

    def cancel(self) -> None:
        """Stop: no new request starts and retry waits end (Ctrl-C)."""
        self.throttle.cancel()

    @property
    def _calls(self) -> list[CallRecord]:
        calls: list[CallRecord] | None = getattr(self._local, "calls", None)
        if calls is None:
            calls = self._local.calls = []
        return calls

    def _record(self, record: CallRecord) -> None:
        if record.replay_of is None:
            record.cost_usd = estimate_cost(
                self.model, record.prompt_tokens, record.completion_tokens
            )
        self._calls.append(record)
        if self.call_sink is not None:
            self.call_sink(getattr(self._local, "paper_id", ""), record)

    def drain_calls(self) -> list[CallRecord]:
        """This thread's exchanges since the last drain."""
        calls = self._calls
        self._local.calls = []
        return calls

    def _shape(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The request instructor's mode handler makes of these messages."""
        _, kwargs = self.handlers.request_handler(
            response_model=AnnotationResponse,
            kwargs={"model": self.model, "messages": messages, **self._request_extras()},
        )
        return kwargs

    def _request_template(self) -> tuple[dict[str, Any], int] | None:
        """The shaped request with a slot for the paper, when the handler allows one.

        What the handler adds (tool schema, the schema written into the system message
        in json modes) is the same for every paper, and costs more to build than the
        rest of a call; so it is built once, around a placeholder user message. None
        (shape each request in full) if the placeholder is not left intact in one message.
        """
        kwargs = self._shape([{"role": "system", "content": self._system}, _USER_SLOT_MESSAGE])
        slots = [
            i
            for i, m in enumerate(kwargs.get("messages", []))
            if isinstance(m.get("content"), str) and _USER_SLOT in m["content"]
        ]
        others = {k: v for k, v in kwargs.items() if k != "messages"}
        if (
            len(slots) != 1
            or kwargs["messages"][slots[0]]["content"].count(_USER_SLOT) != 1
            or _USER_SLOT in json.dumps(others, default=str)
        ):
            return None
        return kwargs, slots[0]

    def _split_template(self) -> RequestTemplate | None:
        """The body of the shaped request, cut where the paper goes."""
        if self._template is None:
            return None
        kwargs, _ = self._template
        slot = _json_text(_USER_SLOT)
        parts = _body(kwargs).split(slot)
        return RequestTemplate(parts[0], parts[1]) if len(parts) == 2 else None

    def _shaped(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        if self._template is None:
            return self._shape(messages)
        kwargs, i = self._template
        shaped = list(kwargs["messages"])
        shaped[i] = {
            **shaped[i],
            "content": shaped[i]["content"].replace(_USER_SLOT, messages[1]["content"]),
        }
        # A new list: re-asks append to it.
        return {**kwargs, "messages": shaped}

    def _request_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.seed is not None:
            extras["seed"] = self.seed
        if self.mode == "json":
            # llama.cpp's server constrains output by a schema given inside json_object
            # (it refuses OpenAI's json_schema type); servers that don't know the key ignore it.
            extras["extra_body"] = {
                "response_format": {"type": "json_object", "schema": self.output_schema}
            }
        return extras

    def annotate(self, paper: PaperInput) -> Annotation:
        self._local.paper_id = paper.paper_id
        ctx: ValidationContext = {
            "text": paper_text(paper.title, paper.abstract),
            "taxonomy": self.taxonomy,
        }
        # instructor's own mode handler shapes the request (tools, schema, system message),
        # parses the answer and writes the re-ask; the loop is ours. Going through
        # instructor's client instead costs several ms of CPU a call (it re-checks the
        # response model and re-renders every message as a Jinja template, which also
        # mangles abstracts containing "{{", instructor#2669), which would make papertag,
        # not the provider, the bottleneck of a large batch.
        messages = self._messages(paper)
        # Until a re-ask changes the request, its body is the run's template around this
        # paper's message: only that part is serialised (the rest is 90% of the bytes).
        # The request as arguments is shaped only when a re-ask needs it.
        kwargs: dict[str, Any] | None = None
        body = self._first_body(messages[1]["content"])
        if body is None:
            kwargs = self._shaped(messages)
            body = _body(kwargs)
        attempts = self.max_reasks + 1
        last_error: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                completion = self._send(body)
            except openai_errors.APIError as exc:
                raise self._api_failure(exc, paper) from None
            if completion is None or not completion.choices:
                # A 200 without an answer (or not JSON) is the server's fault: ask again as it is.
                last_error = None
                continue
            try:
                result: Annotation = self.handlers.response_parser(
                    response=completion,
                    response_model=AnnotationResponse,
                    validation_context=dict(ctx),
                    strict=None,
                    stream=False,
                    is_async=False,
                )
                # As the plain model: results cross to the writer process by pickle, which
                # would otherwise import this module (and openai) there to rebuild them.
                return Annotation.model_construct(
                    _fields_set=result.model_fields_set,
                    **{name: getattr(result, name) for name in Annotation.model_fields},
                )
            except IncompleteOutputException:
                raise self._truncated(paper, attempt) from None
            except (pydantic.ValidationError, ValueError) as exc:
                # ValueError covers invalid JSON and instructor's ResponseParsingError.
                last_error = exc
                kwargs = self.handlers.reask_handler(
                    kwargs=kwargs if kwargs is not None else self._shaped(messages),
                    response=completion,
                    exception=exc,
                )
                body = _body(kwargs)
        raise self._failure(last_error, attempts, paper)

    def _first_body(self, user_message: str) -> str | None:
        """The body of a first ask, from the template (None: the mode allows no template)."""
        template = self.transport.template
        if template is None:
            return None
        return template.head + _json_text(user_message) + template.tail

    def _send(self, content: str) -> ChatCompletion | None:
        """POST one chat completion body with the openai client's request (:class:`PreparedPost`).

        The body is serialised here (:func:`_body`) rather than by
        ``chat.completions.create``, whose walk of the request against its typed
        parameters costs about a millisecond a call (the tool schema is large) and whose
        import adds a quarter of a second to start-up; the bytes sent are what ``create``
        would send for these arguments. The answer is parsed by pydantic, not by the
        client's generic object construction (a fifth of a call's CPU).
        """
        return _completion(self.post(content.encode()))

    def _truncated(self, paper: PaperInput, attempts: int) -> AnnotationError:
        return AnnotationError(
            f"the model's answer was cut off (finish_reason=length at max_tokens={self.max_tokens})",
            paper_id=paper.paper_id,
            attempts=attempts,
            last_completion=self._last_body(),
        )

    def _api_failure(self, exc: openai_errors.APIError, paper: PaperInput) -> PapertagError:
        """Client errors stop the run (ProviderError); transient ones end in a failure row."""
        if isinstance(exc, openai_errors.AuthenticationError | openai_errors.PermissionDeniedError):
            return ProviderError(
                f"{self.host} refused the API key ({exc.status_code}); check the key"
            )
        if isinstance(exc, openai_errors.NotFoundError):
            return ProviderError(f"{self.host}: model {self.model!r} or endpoint not found (404)")
        if isinstance(exc, openai_errors.BadRequestError) and _is_context_overflow(exc):
            # This paper (with its re-asks) is too long for the model: fail it, keep the run going.
            return self._call_failure(
                f"too long for the model's context window: {_api_message(exc)}",
                paper,
            )
        if isinstance(exc, openai_errors.BadRequestError | openai_errors.UnprocessableEntityError):
            return ProviderError(
                f"{self.host} rejected the request ({exc.status_code}): {_api_message(exc)}"
            )
        if isinstance(exc, openai_errors.APIStatusError):
            return self._call_failure(
                f"server error after {len(self._calls)} attempts: HTTP {exc.status_code}: {_api_message(exc)}",
                paper,
                retryable=True,
            )
        if isinstance(
            exc, openai_errors.APIResponseValidationError | openai_errors.APIConnectionError
        ):
            what = (
                "no answer"
                if isinstance(exc, openai_errors.APIConnectionError)
                else "an unreadable answer"
            )
            last_error = (
                self._calls[-1].error
                if self._calls and self._calls[-1].error
                else type(exc).__name__
            )
            message = f"{what} from {self.host} after {len(self._calls)} attempts: {last_error}"
            if isinstance(exc, openai_errors.APIConnectionError) and not self.transport.reached:
                # Nothing was ever reached: a wrong --base-url or a server that is down.
                # Every other paper would wait out the same retries (a quarter of an hour
                # for 600 papers), so the run stops here.
                return ProviderError(f"{message}; check --base-url and that the server is running")
            return self._call_failure(
                message,
                paper,
                retryable=True,
            )
        return AnnotationError(
            f"{type(exc).__name__}: {exc}",
            paper_id=paper.paper_id,
            attempts=len(self._calls),
            retryable=True,
        )

    def _call_failure(
        self, reason: str, paper: PaperInput, *, retryable: bool = False
    ) -> AnnotationError:
        """A failure row for this paper, with its attempts so far and the last answer."""
        return AnnotationError(
            reason,
            paper_id=paper.paper_id,
            attempts=len(self._calls),
            last_completion=self._last_body(),
            retryable=retryable,
        )

    def _last_body(self) -> str | None:
        return self._calls[-1].response_body if self._calls else None

    def _failure(
        self, error: Exception | None, attempts: int, paper: PaperInput
    ) -> AnnotationError:
        last = self._calls[-1] if self._calls else None
        if last is not None and last.refusal:
            return AnnotationError(
                f"the model refused: {last.refusal}",
                paper_id=paper.paper_id,
                attempts=attempts,
                last_completion=last.response_body,
            )
        if error is None:
            # A 200 without a usable choice is the server's fault: worth asking again later.
            return AnnotationError(
                f"{self.host} sent a 200 with no usable choice (after {attempts} attempts)",
                paper_id=paper.paper_id,
                attempts=attempts,
                last_completion=last.response_body if last else None,
                retryable=True,
            )
        reason = (
            format_validation_error(error)
            if isinstance(error, pydantic.ValidationError)
            else str(error)
        )
        return ValidationFailed(
            f"no valid annotation after {attempts} attempts; last error: {' '.join(reason.split())[:2000]}",
            paper_id=paper.paper_id,
            attempts=attempts,
            last_completion=last.response_body if last else None,
        )


class AnnotationResponse(Annotation, ResponseSchema):
    """:class:`Annotation` as instructor's response model, prepared once per process.

    instructor wraps a plain model in a new class and regenerates its JSON schema on
    every call (several ms each, more than the rest of a call); a ResponseSchema
    subclass is used as is, and its schema is computed once here.
    """

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        key = (cls, args, tuple(sorted(kwargs.items())))
        schema = _SCHEMAS.get(key)
        if schema is None:
            schema = _SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        # A copy: callers (instructor) edit the schema they are given.
        return copy.deepcopy(schema)


_SCHEMAS: dict[Any, dict[str, Any]] = {}


def _json_text(text: str) -> str:
    """``text`` as it appears inside a JSON string in :func:`_body` (quotes left off): the
    template is cut, and a first ask filled in, with the same escaping."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _body(kwargs: dict[str, Any]) -> str:
    """The JSON body ``chat.completions.create`` sends for these arguments."""
    body = {k: v for k, v in kwargs.items() if k != "extra_body"}
    # openai merges extra_body over the typed parameters; so do we.
    body.update(kwargs.get("extra_body") or {})
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _completion(raw: bytes) -> ChatCompletion | None:
    """The ChatCompletion in a 200's body, validated by pydantic's JSON parser.

    A server whose answer does not fit the schema exactly (a field left out, a
    finish_reason of its own) gets openai's lenient construction, as ``create`` does.
    None if the body is not a JSON object at all.
    """
    try:
        return ChatCompletion.model_validate_json(raw)
    except pydantic.ValidationError:
        pass
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None
    return ChatCompletion.construct(**data)


def _is_context_overflow(exc: openai_errors.APIStatusError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else body
    code = str(inner.get("code") or "") if isinstance(inner, dict) else ""
    text = _api_message(exc).lower()
    return code == "context_length_exceeded" or "context length" in text or "context window" in text


def _api_message(exc: openai_errors.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if msg:
            return " ".join(str(msg).split())
    return exc.message
