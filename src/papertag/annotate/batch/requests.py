"""The lines of a batch file: each call's first request, as the live client builds it."""

from __future__ import annotations

from collections.abc import Sequence

from ...annotators import PaperInput
from ...annotators.llm.annotator import LLMAnnotator


def request_bodies(ann: LLMAnnotator, calls: Sequence[Sequence[PaperInput]]) -> list[bytes]:
    """The body of each call's first live request (``build_request``), sent through the
    client as a live call sends it (and captured, not sent): the same bytes, so the same
    request hash as a live call of those papers."""
    return ann.sent_bodies([ann.build_request(papers) for papers in calls])
