"""``--annotator llm``: a structured-output prompt on OpenAI or any OpenAI-compatible server.

Each call is one loop of ours: the request for its papers
(:meth:`LLMConfig.build_request`: the system message and the structured-output part,
the same for every call, then the papers) goes through the official ``openai``
client's public ``post``; instructor reads the answer out of the completion
(:mod:`papertag.annotators.llm.answers`), and each paper's entry is validated on its own
with :class:`papertag.schema.Annotation` against that paper's text. A paper whose entry
fails is asked again alone, with the validation error, a bounded number of times. The
abstract is sent exactly as written (no templating of messages, no ``context=``).

Throttle, transport retries (tenacity) and the record of every HTTP exchange for the
``llm_calls`` table live in one httpx transport, :class:`CallTransport`, that wraps the
``HTTPTransport`` the client would have used; the client's own retries are off
(``max_retries=0``) so the two never multiply. Everything else (URLs, headers, auth,
errors) is the client's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from ...errors import AnnotationError, ConfigError, PapertagError, ProviderError, ValidationFailed
from ...schema import Annotation
from ..base import PaperInput
from .answers import SCHEMA_NAME, PaperAnswer, as_completion
from .client import DEFAULT_BASE_URL, CallTransport, http_transport
from .config import LLMConfig
from .prices import estimate_cost
from .records import CallRecord, RequestTemplate
from .throttle import Cancelled, Throttle

# --------------------------------------------------------------------------- annotator


#: Where a request goes, under the client's base URL. The body goes through the client's
#: public ``post`` as built (:meth:`LLMConfig.build_request`, the body a batch file holds
#: too): ``chat.completions.create`` would walk the tool or response-format schema node by
#: node on every call, and its first use imports every resource of the API (half a second).
CHAT_PATH = "/chat/completions"

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
        super().__init__(**settings)
        # Checked here, not in the settings: a dry run or a score sends nothing, so needs no key.
        if api_key is None and not os.environ.get(self.api_key_env) and not self.base_url:
            raise ConfigError(
                f"no API key: set {self.api_key_env} (or --api-key-env NAME), or point --base-url "
                "at a local server"
            )
        base_url = self.base_url or DEFAULT_BASE_URL
        self.throttle = Throttle(
            self.concurrency, rpm=self.rpm, tpm=self.tpm, clock=clock, sleep=sleep
        )
        # Each thread annotates one paper at a time; its HTTP exchanges are its own.
        self._local = threading.local()
        #: Called with (paper_id, record) the moment an exchange ends (the crash journal).
        self.call_sink: Callable[[str | None, CallRecord], None] | None = None
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
        record.paper_ids = list(getattr(self._local, "papers", ()))
        if record.replay_of is None:
            record.cost_usd = estimate_cost(
                self.model, record.prompt_tokens, record.completion_tokens, record.cached_tokens
            )
        self._calls.append(record)
        if self.call_sink is not None:
            ids = record.paper_ids
            self.call_sink(ids[0] if len(ids) == 1 else None, record)

    def drain_calls(self) -> list[CallRecord]:
        """This thread's exchanges since the last drain."""
        calls = self._calls
        self._local.calls = []
        return calls

    # -- requests -------------------------------------------------------------------------
    def _request_template(self) -> RequestTemplate | None:
        """The body every first ask of a full call shares (``papers_per_call`` papers), cut
        where the papers' message goes.

        The client builds a request around a placeholder, sent nowhere; each call then
        stores only its own part (``llm_request_templates``). None when the placeholder
        does not come out in one piece (each call then stores its whole body).
        """
        messages = [
            {"role": "system", "content": self._system},
            {"role": "user", "content": _USER_SLOT},
        ]
        bodies = self.sent_bodies([self.request(messages, self.papers_per_call)])
        if len(bodies) != 1:
            return None
        parts = bodies[0].decode("utf-8").split(_USER_SLOT)
        return RequestTemplate(parts[0], parts[1]) if len(parts) == 2 else None

    def sent_bodies(self, bodies: Sequence[dict[str, Any]]) -> list[bytes]:
        """Each body as the client sends it, sent nowhere: the same bytes, so the same
        request hash, as a live call with that body."""
        capture = _Capture()
        dry = self.client.with_options(http_client=httpx2.Client(transport=capture), max_retries=0)
        try:
            for body in bodies:
                with contextlib.suppress(openai.APIStatusError):
                    dry.post(CHAT_PATH, body=body, cast_to=httpx2.Response)
        finally:
            dry.close()
        return capture.bodies

    def _create(self, body: dict[str, Any], papers: Sequence[PaperInput]) -> ChatCompletion | None:
        """One chat completion (the transport retries faults); None for a 200 that holds none.

        Raises one AnnotationError for all the papers of a call that got no answer (their
        run goes on), or a ProviderError that stops the run.
        """
        self._local.papers = [p.paper_id for p in papers]
        try:
            raw = self.client.post(CHAT_PATH, body=body, cast_to=httpx2.Response)
        except Cancelled:
            # Ctrl-C: the throttle refused the request (newer clients pass the error on as
            # it is, older ones as the cause of an APIConnectionError).
            raise self._stopped() from None
        except openai.APIError as exc:
            if isinstance(exc.__cause__, Cancelled):
                raise self._stopped() from None
            raise self._api_failure(exc) from None
        return as_completion(raw.content)

    # -- the loop -------------------------------------------------------------------------
    def annotate(self, paper: PaperInput) -> Annotation:
        """One paper in a call of its own."""
        [result] = self.annotate_call([paper])
        if isinstance(result, AnnotationError):
            raise result
        return result

    def annotate_call(self, papers: Sequence[PaperInput]) -> list[Annotation | AnnotationError]:
        """Label these papers in one request, each paper's entry validated on its own
        against its text; a paper whose entry fails is re-asked alone, the validation
        error fed back, up to ``max_reasks`` times. One result per paper, in order.

        Raises ProviderError (a refused key, an unknown model): the run stops.
        """
        if len(papers) == 1:
            return [self._settled(papers[0], lambda: self._loop(papers[0], None, asked=0))]
        try:
            completion = self._create(self.build_request(papers), papers)
        except AnnotationError as exc:
            return [self._for(exc, p) for p in papers]
        results: list[Annotation | AnnotationError] = []
        for answer in self.parse_answers(papers, completion or b""):
            if answer.annotation is not None:
                results.append(answer.annotation)
            else:
                # A bad entry, or no usable answer at all: this paper alone.
                results.append(self._settled(answer.paper, functools.partial(self.reask, answer)))
        return results

    def reask(self, answer: PaperAnswer) -> Annotation:
        """Ask for one paper alone after ``answer`` failed: its entry and the validation
        error go back to the model (a paper with no usable entry is asked afresh). Counts
        the call that gave ``answer`` as the first of ``max_reasks + 1`` asks. Raises
        AnnotationError (ValidationFailed when no answer validated)."""
        feedback = None
        if isinstance(answer.error, ValidationFailed) and answer.entry is not None:
            feedback = (answer.entry, answer.error.reason, None)
        return self._loop(answer.paper, feedback, asked=1, error=answer.error)

    def _loop(
        self,
        paper: PaperInput,
        feedback: tuple[str, str, Any] | None,
        *,
        asked: int,
        error: AnnotationError | None = None,
    ) -> Annotation:
        """Ask for ``paper`` alone until an answer validates, ``asked`` asks already made."""
        messages = self.messages([paper])
        if feedback is not None:
            messages = self._reask(messages, *feedback)
        attempts = self.max_reasks + 1
        last = error
        for attempt in range(asked + 1, attempts + 1):
            completion = self._create(self.request(messages, 1), [paper])
            [answer] = self.parse_answers([paper], completion or b"")
            if answer.annotation is not None:
                return answer.annotation
            last = answer.error
            if isinstance(last, ValidationFailed) and completion is not None:
                messages = self._reask(
                    messages, answer.entry or "", last.reason, completion.choices[0].message
                )
            elif last is not None and not last.retryable:
                # A refusal or a cut-off answer: asking again would only repeat it.
                raise self._call_failure(last.reason, paper, attempts=attempt)
            # else a 200 without an answer (the server's fault): ask again as it is.
        raise self._failure(last, paper)

    def _reask(
        self, messages: list[dict[str, Any]], entry: str, error: str, message: Any
    ) -> list[dict[str, Any]]:
        """The conversation so far, the answer (``entry``), and the validation errors to fix."""
        if self.mode == "tools":
            call = _function_call(message) if message is not None else None
            call_id = call.id if call is not None else "call_papertag_1"
            return [
                *messages,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": SCHEMA_NAME, "arguments": entry},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": f"Validation errors: {error}\n"
                    f"Call {SCHEMA_NAME} again with every error fixed.",
                },
            ]
        return [
            *messages,
            {"role": "assistant", "content": entry},
            {
                "role": "user",
                "content": f"Correct your JSON: it has these errors: {error}\n"
                "Answer with the whole corrected JSON object only.",
            },
        ]

    def _settled(
        self, paper: PaperInput, ask: Callable[[], Annotation]
    ) -> Annotation | AnnotationError:
        try:
            return ask()
        except AnnotationError as exc:
            return self._for(exc, paper)

    def _for(self, exc: AnnotationError, paper: PaperInput) -> AnnotationError:
        """``exc`` as this paper's own failure."""
        return type(exc)(
            exc.reason,
            paper_id=paper.paper_id,
            attempts=exc.attempts,
            last_completion=exc.last_completion,
            retryable=exc.retryable,
        )

    # -- failures -------------------------------------------------------------------------
    def _api_failure(self, exc: openai.APIError) -> PapertagError:
        """Client errors stop the run (ProviderError); transient ones end in a failure row."""
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return ProviderError(
                f"{self.host} refused the API key ({exc.status_code}); check the key"
            )
        if isinstance(exc, openai.NotFoundError):
            return ProviderError(f"{self.host}: model {self.model!r} or endpoint not found (404)")
        if isinstance(exc, openai.BadRequestError) and _is_context_overflow(exc):
            # This call (with its re-asks) is too long for the model: fail it, keep the run going.
            return self._call_failure(
                f"too long for the model's context window: {_api_message(exc)}"
            )
        if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
            return ProviderError(
                f"{self.host} rejected the request ({exc.status_code}): {_api_message(exc)}"
            )
        if isinstance(exc, openai.APIStatusError):
            return self._call_failure(
                f"server error after {len(self._calls)} attempts: HTTP {exc.status_code}: {_api_message(exc)}",
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
                return ProviderError(f"{message}; {self._unreachable()}")
            return self._call_failure(message, retryable=True)
        return AnnotationError(
            f"{type(exc).__name__}: {exc}", attempts=len(self._calls), retryable=True
        )

    def _unreachable(self) -> str:
        """What was tried, where its address came from, and what to do."""
        if self.base_url_from is None:
            return (
                "cannot reach api.openai.com (the default, as neither --base-url nor "
                "$OPENAI_BASE_URL is set): check the network connection and any proxy "
                "($HTTPS_PROXY), or give --base-url for a server you can reach, e.g. a local "
                "one: --base-url http://127.0.0.1:8080/v1"
            )
        also = (
            ", or unset OPENAI_BASE_URL to use OpenAI"
            if self.base_url_from == "$OPENAI_BASE_URL"
            else ""
        )
        return (
            f"cannot reach {self.base_url} (from {self.base_url_from}): check the URL and that "
            f"the server is running{also}"
        )

    def _stopped(self) -> AnnotationError:
        """Cut off by Ctrl-C: not a failure (the run drops it; the next one asks again)."""
        return self._call_failure("stopped before an answer came (Ctrl-C)", retryable=True)

    def _call_failure(
        self,
        reason: str,
        paper: PaperInput | None = None,
        *,
        retryable: bool = False,
        attempts: int | None = None,
    ) -> AnnotationError:
        """A failure row, with the attempts so far and the last answer."""
        return AnnotationError(
            reason,
            paper_id=paper.paper_id if paper is not None else None,
            attempts=attempts if attempts is not None else len(self._calls),
            last_completion=self._last_body(),
            retryable=retryable,
        )

    def _last_body(self) -> str | None:
        return self._calls[-1].response_body if self._calls else None

    def _failure(self, error: AnnotationError | None, paper: PaperInput) -> AnnotationError:
        attempts = self.max_reasks + 1
        if not isinstance(error, ValidationFailed):
            # A 200 without a usable choice is the server's fault: worth asking again later.
            return AnnotationError(
                f"{self.host} sent a 200 with no usable choice (after {attempts} attempts)",
                paper_id=paper.paper_id,
                attempts=attempts,
                last_completion=self._last_body(),
                retryable=True,
            )
        reason = " ".join(error.reason.split())[:2000]
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
