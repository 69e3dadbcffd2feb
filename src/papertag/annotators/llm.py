"""``--annotator llm``: a structured-output prompt on OpenAI or any OpenAI-compatible server.

Each paper is one loop of ours: ask through the official ``openai`` client
(``chat.completions.create``, its public API only), validate the answer with
:class:`papertag.schema.Annotation`, and re-ask with the validation error a bounded
number of times. The request's structured-output part (a function tool, a
``response_format``, or the schema written into the prompt) is built here from the
pydantic model's JSON schema, so the abstract is sent exactly as written (no
templating of messages).

Throttle, transport retries (tenacity) and the record of every HTTP exchange for the
``llm_calls`` table live in one httpx transport, :class:`CallTransport`, that wraps the
``HTTPTransport`` the client would have used; the client's own retries are off
(``max_retries=0``) so the two never multiply. Everything else (URLs, headers, auth,
errors) is the client's.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlparse

import httpx2
import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall
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
from .llm_config import SCHEMA_NAME, LLMConfig, estimate_cost
from .throttle import Cancelled, Throttle

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


# --------------------------------------------------------------------------- annotator


#: Stands for a paper's user message in the request cut into a template (plain letters:
#: a JSON encoder leaves them as they are).
_USER_SLOT = "papertagUserMessageSlot7f3a9c"


class _Capture(httpx2.BaseTransport):
    """Keeps the body of the request the client builds, and sends nothing."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(request.read())
        return httpx2.Response(418, json={"error": {"message": "not sent"}}, request=request)


class LLMAnnotator(LLMConfig):
    """Annotate through a chat-completions endpoint with the ``openai`` client."""

    def __init__(
        self,
        *,
        max_attempts: int = 5,
        backoff: float = 1.0,
        timeout: float = 120.0,
        transport: httpx2.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        default_headers: Mapping[str, str] | None = None,
        api_key: str | Callable[[], str] | None = None,
        **settings: Any,
    ) -> None:
        """``settings`` are :class:`LLMConfig`'s (model, base_url, mode, ...); the rest
        configure the client: HTTP attempts per call, backoff, timeout, a transport to
        send through instead of the network (tests), the clock and sleep that the
        throttle and retries wait by (tests hand in a fake pair), headers to send with
        every request (a gateway's, say), and the API key instead of ``$api_key_env``'s: a
        string, or a function the client asks before each request (a key that expires)."""
        super().__init__(api_key=api_key, **settings)
        base_url = self.base_url or DEFAULT_BASE_URL
        self.throttle = Throttle(
            self.concurrency, rpm=self.rpm, tpm=self.tpm, clock=clock, sleep=sleep
        )
        # Each thread annotates one paper at a time; its HTTP exchanges are its own.
        self._local = threading.local()
        #: Called with (paper_id, record) the moment an exchange ends (the crash journal).
        self.call_sink: Callable[[str, CallRecord], None] | None = None
        self.transport = CallTransport(
            transport or http_transport(base_url, self.concurrency),
            max_attempts=max_attempts,
            backoff=backoff,
            on_call=self._record,
            throttle=self.throttle,
        )
        # max_retries=0: tenacity in CallTransport owns transport retries, so they never multiply.
        self.client = openai.OpenAI(
            api_key=api_key or os.environ.get(self.api_key_env) or "no-key",
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=httpx2.Client(transport=self.transport, timeout=timeout),
            default_headers=default_headers,
        )
        self.transport.template = self._request_template()

    def close(self) -> None:
        self.client.close()

    def cancel(self) -> None:
        """Stop: no new request starts and retry waits end (Ctrl-C)."""
        self.throttle.cancel()

    # -- the calls of this thread -------------------------------------------------------
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

    # -- requests -------------------------------------------------------------------------
    def _request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The arguments of ``chat.completions.create`` for these messages."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.output_options(),
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        return kwargs

    def _request_template(self) -> RequestTemplate | None:
        """The body every first ask of the run shares, cut where the paper's message goes.

        The client builds a request around a placeholder, sent nowhere; each call then
        stores only its own part (``llm_request_templates``). None when the placeholder
        does not come out in one piece (each call then stores its whole body).
        """
        capture = _Capture()
        dry = self.client.with_options(http_client=httpx2.Client(transport=capture))
        messages = [
            {"role": "system", "content": self._system},
            {"role": "user", "content": _USER_SLOT},
        ]
        try:
            dry.chat.completions.create(**self._request(messages))
        except openai.APIError:
            pass
        finally:
            dry.close()
        if len(capture.bodies) != 1:
            return None
        parts = capture.bodies[0].decode("utf-8").split(_USER_SLOT)
        return RequestTemplate(parts[0], parts[1]) if len(parts) == 2 else None

    def _create(self, messages: list[dict[str, Any]], paper: PaperInput) -> ChatCompletion | None:
        """One chat completion (the transport retries faults); None for a 200 that holds none."""
        try:
            raw = self.client.chat.completions.with_raw_response.create(**self._request(messages))
        except Cancelled:
            # Ctrl-C: the throttle refused the request (newer clients pass the error on as
            # it is, older ones as the cause of an APIConnectionError).
            raise self._stopped(paper) from None
        except openai.APIError as exc:
            if isinstance(exc.__cause__, Cancelled):
                raise self._stopped(paper) from None
            raise self._api_failure(exc, paper) from None
        return _completion(raw.http_response.content)

    # -- the loop -------------------------------------------------------------------------
    def annotate(self, paper: PaperInput) -> Annotation:
        self._local.paper_id = paper.paper_id
        ctx: ValidationContext = {
            "text": paper_text(paper.title, paper.abstract),
            "taxonomy": self.taxonomy,
        }
        messages: list[dict[str, Any]] = list(self._messages(paper))
        attempts = self.max_reasks + 1
        last_error: pydantic.ValidationError | None = None
        for attempt in range(1, attempts + 1):
            completion = self._create(messages, paper)
            if completion is None or not completion.choices:
                # A 200 without an answer (or not JSON) is the server's fault: ask again as it is.
                last_error = None
                continue
            choice = completion.choices[0]
            refusal = getattr(choice.message, "refusal", None)
            if choice.finish_reason == "length" or refusal:
                # Asking again would only repeat it.
                raise AnnotationError(
                    f"the model refused: {refusal}"
                    if refusal
                    else "the model's answer was cut off "
                    f"(finish_reason=length at max_tokens={self.max_tokens})",
                    paper_id=paper.paper_id,
                    attempts=attempt,
                    last_completion=self._last_body(),
                )
            try:
                return Annotation.model_validate_json(
                    answer_text(self.mode, choice.message), context=ctx
                )
            except pydantic.ValidationError as exc:
                last_error = exc
                messages = self._reask(messages, choice.message, format_validation_error(exc))
        raise self._failure(last_error, attempts, paper)

    def _reask(
        self, messages: list[dict[str, Any]], message: Any, error: str
    ) -> list[dict[str, Any]]:
        """The conversation so far, the answer, and the validation errors to fix."""
        call = _function_call(message) if self.mode == "tools" else None
        if call is not None:
            return [
                *messages,
                {
                    "role": "assistant",
                    "content": message.content or "",
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.function.name,
                                "arguments": call.function.arguments,
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": call.id,
                    "content": f"Validation errors: {error}\n"
                    f"Call {SCHEMA_NAME} again with every error fixed.",
                },
            ]
        return [
            *messages,
            {"role": "assistant", "content": getattr(message, "content", None) or ""},
            {
                "role": "user",
                "content": f"Correct your JSON: it has these errors: {error}\n"
                "Answer with the whole corrected JSON object only.",
            },
        ]

    # -- failures -------------------------------------------------------------------------
    def _api_failure(self, exc: openai.APIError, paper: PaperInput) -> PapertagError:
        """Client errors stop the run (ProviderError); transient ones end in a failure row."""
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return ProviderError(
                f"{self.host} refused the API key ({exc.status_code}); check the key"
            )
        if isinstance(exc, openai.NotFoundError):
            return ProviderError(f"{self.host}: model {self.model!r} or endpoint not found (404)")
        if isinstance(exc, openai.BadRequestError) and _is_context_overflow(exc):
            # This paper (with its re-asks) is too long for the model: fail it, keep the run going.
            return self._call_failure(
                f"too long for the model's context window: {_api_message(exc)}",
                paper,
            )
        if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
            return ProviderError(
                f"{self.host} rejected the request ({exc.status_code}): {_api_message(exc)}"
            )
        if isinstance(exc, openai.APIStatusError):
            return self._call_failure(
                f"server error after {len(self._calls)} attempts: HTTP {exc.status_code}: {_api_message(exc)}",
                paper,
                retryable=True,
            )
        if isinstance(exc, openai.APIResponseValidationError | openai.APIConnectionError):
            what = (
                "no answer"
                if isinstance(exc, openai.APIConnectionError)
                else "an unreadable answer"
            )
            last_error = (
                self._calls[-1].error
                if self._calls and self._calls[-1].error
                else type(exc).__name__
            )
            message = f"{what} from {self.host} after {len(self._calls)} attempts: {last_error}"
            if isinstance(exc, openai.APIConnectionError) and not self.transport.reached:
                # Nothing was ever reached: a wrong --base-url or a server that is down.
                # Every other paper would wait out the same retries (a quarter of an hour
                # for 600 papers), so the run stops here.
                return ProviderError(f"{message}; check --base-url and that the server is running")
            return self._call_failure(message, paper, retryable=True)
        return AnnotationError(
            f"{type(exc).__name__}: {exc}",
            paper_id=paper.paper_id,
            attempts=len(self._calls),
            retryable=True,
        )

    def _stopped(self, paper: PaperInput) -> AnnotationError:
        """Cut off by Ctrl-C: not a failure (the run drops it; the next one asks again)."""
        return self._call_failure("stopped before an answer came (Ctrl-C)", paper, retryable=True)

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
        self, error: pydantic.ValidationError | None, attempts: int, paper: PaperInput
    ) -> AnnotationError:
        if error is None:
            # A 200 without a usable choice is the server's fault: worth asking again later.
            return AnnotationError(
                f"{self.host} sent a 200 with no usable choice (after {attempts} attempts)",
                paper_id=paper.paper_id,
                attempts=attempts,
                last_completion=self._last_body(),
                retryable=True,
            )
        reason = " ".join(format_validation_error(error).split())[:2000]
        return ValidationFailed(
            f"no valid annotation after {attempts} attempts; last error: {reason}",
            paper_id=paper.paper_id,
            attempts=attempts,
            last_completion=self._last_body(),
        )


def _function_call(message: Any) -> ChatCompletionMessageFunctionToolCall | None:
    for call in getattr(message, "tool_calls", None) or []:
        if isinstance(call, ChatCompletionMessageFunctionToolCall):
            return call
    return None


_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def answer_text(mode: str, message: Any) -> str:
    """The JSON text of an answer: the function's arguments (tools mode), else the
    message's content, out of a fenced block if it has one, from its first ``{`` to its
    last ``}`` if there is text around it."""
    if mode == "tools" and (call := _function_call(message)) is not None:
        return call.function.arguments
    text = str(getattr(message, "content", None) or "")
    if mode in ("json", "md_json"):
        if (fenced := _FENCED.search(text)) is not None:
            text = fenced.group(1)
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            text = text[start : end + 1]
    return text


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


def _is_context_overflow(exc: openai.APIStatusError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else body
    code = str(inner.get("code") or "") if isinstance(inner, dict) else ""
    text = _api_message(exc).lower()
    return code == "context_length_exceeded" or "context length" in text or "context window" in text


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if msg:
            return " ".join(str(msg).split())
    return exc.message
