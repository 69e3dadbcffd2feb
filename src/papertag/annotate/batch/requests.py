"""The lines of a batch file: each call's first request, as the live client builds it."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import httpx2
import openai

from ...annotators import PaperInput
from ...annotators.llm.annotator import CHAT_PATH, LLMAnnotator


class Shared(httpx2.BaseTransport):
    """The annotator's connections, borrowed: closing this leaves them to their owner."""

    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        pass


class _Capture(httpx2.BaseTransport):
    """Keeps the body of each request the client builds, and sends nothing."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(request.read())
        return httpx2.Response(418, json={"error": {"message": "not sent"}}, request=request)


def request_bodies(ann: LLMAnnotator, calls: Sequence[Sequence[PaperInput]]) -> list[bytes]:
    """The body of each call's first live request (``build_request``), sent through the
    client as a live call sends it (and captured, not sent): the same bytes, so the same
    request hash as a live call of those papers."""
    capture = _Capture()
    dry = ann.client.with_options(http_client=httpx2.Client(transport=capture), max_retries=0)
    try:
        for papers in calls:
            with contextlib.suppress(openai.APIStatusError):
                dry.post(CHAT_PATH, body=ann.build_request(papers), cast_to=httpx2.Response)
    finally:
        dry.close()
    return capture.bodies
