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

import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx2
import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from ...errors import AnnotationError, PapertagError, ProviderError, ValidationFailed
from ...schema import Annotation, ValidationContext, format_validation_error, paper_text
from ..base import PaperInput
from .client import DEFAULT_BASE_URL, CallTransport, http_transport
from .config import SCHEMA_NAME, LLMConfig, estimate_cost
from .records import CallRecord, RequestTemplate
from .throttle import Cancelled, Throttle

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
