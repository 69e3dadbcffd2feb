"""One call of an annotator, as a pool thread (or a Ray actor) makes it: a paper's outcome
each, and the HTTP exchanges behind them. Never raises: errors travel in the outcome."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..annotators import Annotator, PaperInput
from ..db import utc_now
from ..errors import AnnotationError
from ..schema import Annotation
from .pending import Pending


@dataclass
class Outcome:
    """What annotating one paper gave: a result, a reasoned failure or a fatal error."""

    started: datetime
    duration_ms: float = 0.0
    result: Annotation | None = None
    error: AnnotationError | None = None
    fatal: BaseException | None = None


@dataclass
class Work:
    """What one call of the annotator gave: an outcome for each of its papers, and the
    HTTP exchanges it made (each names the papers it carried)."""

    outcomes: list[Outcome]
    calls: Sequence[Any] = ()


def work(ann: Annotator, papers: Sequence[PaperInput]) -> Work:
    """Annotate papers in one call (``annotate_call`` where the annotator has it, else one
    paper with ``annotate``); never raises (a pool thread's errors travel in the outcome)."""
    drain: Callable[[], Sequence[Any]] = getattr(ann, "drain_calls", tuple)
    started = utc_now()
    outcomes = [Outcome(started) for _ in papers]
    t0 = time.perf_counter()
    try:
        call = getattr(ann, "annotate_call", None)
        results: Sequence[Annotation | AnnotationError] = (
            call(papers) if call is not None else [_one(ann, papers[0])]
        )
        for paper, out, result in zip(papers, outcomes, results, strict=True):
            if isinstance(result, AnnotationError):
                result.paper_id = paper.paper_id
                out.error = result
            else:
                out.result = result
    except BaseException as exc:
        for out in outcomes:
            out.fatal = exc
    # A call's time is each of its papers' time.
    for out in outcomes:
        out.duration_ms = (time.perf_counter() - t0) * 1000
    return Work(outcomes, drain())


def _one(ann: Annotator, paper: PaperInput) -> Annotation | AnnotationError:
    try:
        return ann.annotate(paper)
    except AnnotationError as exc:
        return exc


def calls_of(
    papers: Sequence[Pending], size: int, kept: Sequence[Sequence[str]] = ()
) -> list[list[Pending]]:
    """The papers in calls of ``size``, in order. The groups of ``kept`` (the papers of
    calls a killed run paid for) come as they were, where all their papers are still to
    do: the same request again, whose answer is replayed instead of paid twice."""
    index = {p.paper_id: i for i, p in enumerate(papers)}
    taken: set[str] = set()
    groups: list[list[Pending]] = []
    for ids in kept:
        if len(ids) > 1 and all(i in index and i not in taken for i in ids):
            groups.append([papers[index[i]] for i in ids])
            taken.update(ids)
    rest = [p for p in papers if p.paper_id not in taken]
    groups += [rest[i : i + size] for i in range(0, len(rest), size)]
    return sorted(groups, key=lambda g: index[g[0].paper_id])


#: Threads (and papers started) per request the annotator may have in flight: behind each
#: call in flight a second thread waits with its next request built, and the throttle
#: lets it go the moment an answer is read, while that answer's thread validates and
#: stores it. The throttle, not the pool, keeps the requests in flight to --concurrency.
THREADS_PER_CALL = 2
