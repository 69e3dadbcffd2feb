"""Settling collected answers: each paper's entry validated as a live answer is, one that
fails re-asked alone and live, the results written by the live run's Writer."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from ...annotators import PaperInput
from ...db import utc_now
from ...errors import AnnotationError, ValidationFailed
from ...schema import Annotation
from ..pending import Pending, paper_input, pending_papers
from ..report import start_run
from ..writer import Writer
from .batches import Batches

#: Requests settled (parsed, re-asked, written) per commit.
SETTLE_LINES = 256


def settle(batches: Batches) -> None:
    """Validate and store the answers of collected batches, as a live call's answers
    are: each paper's entry on its own (``parse_answers``), one that fails re-asked
    alone and live (``reask``, ``concurrency`` at a time), the results written by the
    live run's Writer. A request is marked settled once its papers' results are
    committed, so a run killed here parses the stored answers again next time (paying
    only for the re-asks in flight)."""
    lines = batches.store.con.execute(
        "SELECT r.batch_uid, r.custom_id, c.call_uid, c.response_body, "
        "list(r.paper_id ORDER BY r.position), list(r.content_hash ORDER BY r.position) "
        "FROM llm_batch_requests r JOIN llm_batches b USING (batch_uid) "
        "JOIN llm_call_rows c ON c.call_uid = r.call_uid "
        "WHERE r.settled_at IS NULL AND b.annotator = ? AND b.model = ? AND b.host = ? "
        "AND b.prompt_version = ? AND b.taxonomy_version = ? "
        "GROUP BY ALL ORDER BY r.batch_uid, r.custom_id",
        batches.key,
    ).fetchall()
    if not lines:
        return
    start_run(batches.store, batches.ann, batches.run_id)
    writer = Writer(batches.ann, batches.run_id)
    workers = max(1, int(getattr(batches.ann, "concurrency", 1)))
    with ThreadPoolExecutor(workers, thread_name_prefix="papertag-reask") as pool:
        for start in range(0, len(lines), SETTLE_LINES):
            chunk = lines[start : start + SETTLE_LINES]
            _settle_lines(batches, writer, pool, chunk)
            batches.hook("settle")
            _flush(batches, writer, [(uid, cid) for uid, cid, *_ in chunk])
    report = batches.report
    batches.store.con.execute(
        "UPDATE annotation_runs SET finished_at = ?, done = ?, failed = ? WHERE run_id = ?",
        [utc_now(), report.annotated, report.failed, batches.run_id],
    )


def _settle_lines(
    batches: Batches, writer: Writer, pool: ThreadPoolExecutor, lines: Sequence[Sequence[Any]]
) -> None:
    ids = [pid for line in lines for pid in line[4]]
    # The papers that still lack a result for this key (a paper whose text changed
    # since it was sent is left to be asked again).
    pending = {p.paper_id: p for p in pending_papers(batches.store, batches.ann, paper_ids=ids)[0]}
    now = utc_now()
    reasks: list[tuple[Pending, Any, str]] = []
    for _batch_uid, _custom_id, call_uid, body, paper_ids, hashes in lines:
        group = {
            pid: pending[pid]
            for pid, content_hash in zip(paper_ids, hashes, strict=True)
            if pid in pending and pending[pid].content_hash == content_hash
        }
        if not group:
            continue
        # The answer numbers the papers as the request did: parse it against all of them.
        inputs = [
            paper_input(group[pid]) if pid in group else PaperInput(pid, "", "")
            for pid in paper_ids
        ]
        for answer in batches.ann.parse_answers(inputs, body):
            paper = group.get(answer.paper.paper_id)
            if paper is None:
                continue
            error = answer.error
            if answer.annotation is not None:
                _result(batches, writer, paper, answer.annotation, call_uid, [], now)
            elif (
                len(paper_ids) > 1
                or isinstance(error, ValidationFailed)
                or (error is not None and error.retryable)
            ):
                reasks.append((paper, answer, call_uid))
            elif error is not None:
                _result(batches, writer, paper, error, call_uid, [], now)  # refused, cut off
    # As a live call does: each failing paper alone, its entry and the error fed back.
    for (paper, _, call_uid), (result, calls) in zip(
        reasks,
        pool.map(functools.partial(_reask, batches), [answer for _, answer, _ in reasks]),
        strict=True,
    ):
        _result(batches, writer, paper, result, call_uid, calls, now)


def _reask(batches: Batches, answer: Any) -> tuple[Annotation | AnnotationError, list[Any]]:
    """One paper re-asked live, in a thread of the pool (its calls are the thread's)."""
    try:
        result: Annotation | AnnotationError = batches.ann.reask(answer)
    except AnnotationError as exc:
        result = exc
    return result, batches.ann.drain_calls()


def _result(
    batches: Batches,
    writer: Writer,
    paper: Pending,
    result: Annotation | AnnotationError,
    call_uid: str,
    calls: list[Any],
    now: datetime,
) -> None:
    """Queue one paper's result, and the live re-asks that gave it (if any)."""
    report = batches.report
    for c in calls:
        report.reasks += 1
        report.prompt_tokens += c.prompt_tokens or 0
        report.completion_tokens += c.completion_tokens or 0
        report.cost_usd += c.cost_usd or 0.0
    annotations: dict[str, str] = {}
    if isinstance(result, Annotation):
        # Named after the answer it was validated from: the last re-ask's, else the batch's.
        made_by = calls[-1].call_uid if calls else call_uid
        annotations[paper.paper_id] = writer.add(paper, result, 0.0, now, made_by)
        report.annotated += 1
    else:
        result.paper_id = paper.paper_id
        writer.fail(paper, result, now)
        report.failed += 1
        report.failures.append((paper.paper_id, result.reason))
    if calls:
        writer.calls([paper], annotations, calls)


def _flush(batches: Batches, writer: Writer, done: list[tuple[str, str]]) -> None:
    writer.flush(batches.store)
    if done:
        batches.store.con.execute(
            "UPDATE llm_batch_requests r SET settled_at = $1 FROM (SELECT "
            "unnest($2::VARCHAR[]) AS b, unnest($3::VARCHAR[]) AS c) d "
            "WHERE r.batch_uid = d.b AND r.custom_id = d.c",
            [utc_now(), [b for b, _ in done], [c for _, c in done]],
        )
        done.clear()
