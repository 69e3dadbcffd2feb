"""Which papers a run has to do: those lacking an annotation for the annotator's key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..annotators import (
    AnnotatorInfo,
    PaperInput,
)
from ..db import Store


@dataclass
class Pending:
    paper_id: str
    title: str
    abstract: str
    content_hash: str


def pending_papers(
    store: Store,
    annotator: AnnotatorInfo,
    *,
    force: bool = False,
    retry_failed: bool = False,
    limit: int | None = None,
    paper_ids: Sequence[str] | None = None,
    texts: bool = True,
) -> tuple[list[Pending], int]:
    """Papers to annotate, and how many were skipped because their key is already settled.

    A key is settled by an annotation, or by a failure that asking again would only
    repeat (an answer that failed validation, a refusal, a cut-off answer): those are
    retried only with ``retry_failed``. Transport failures are always retried. Without
    ``texts``, titles and abstracts are left empty for :func:`load_texts` to fill a batch
    at a time, so a run's memory does not grow with the papers it has to do.
    """
    where = ["TRUE"]
    params: list[Any] = []
    if paper_ids is not None:
        where.append("p.paper_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(paper_ids))
    # --limit N means the first N papers (in ingest order), so re-running the same
    # command is idempotent instead of moving on to the next N.
    limit_sql = f"LIMIT {int(limit)}" if limit is not None else ""
    eligible_sql = f"SELECT * FROM papers p WHERE {' AND '.join(where)} ORDER BY p.first_seen, p.paper_id {limit_sql}"
    key = (
        "paper_id = p.paper_id AND content_hash = p.content_hash AND annotator = ? AND model = ? "
        "AND prompt_version = ? AND taxonomy_version = ?"
    )
    key_params = [
        annotator.name,
        annotator.model,
        annotator.prompt_version,
        annotator.taxonomy.version,
    ]
    eligible = int(store.scalar(f"SELECT count(*) FROM ({eligible_sql})", params))
    filters = ["TRUE"]
    filter_params: list[Any] = []
    if not force:
        filters.append(f"NOT EXISTS (SELECT 1 FROM annotations WHERE {key})")
        filter_params += key_params
        if not retry_failed:
            filters.append(
                f"NOT EXISTS (SELECT 1 FROM annotation_failures WHERE {key} AND NOT retryable)"
            )
            filter_params += key_params
    # A paper in a batch still open at the server is not sent again (its answer is paid for).
    filters.append(
        "NOT EXISTS (SELECT 1 FROM llm_batch_requests r JOIN llm_batches b USING (batch_uid) "
        "WHERE r.paper_id = p.paper_id AND r.content_hash = p.content_hash "
        "AND b.collected_at IS NULL AND b.annotator = ? AND b.model = ? "
        "AND b.prompt_version = ? AND b.taxonomy_version = ?)"
    )
    filter_params += key_params
    text_cols = "p.title, p.abstract" if texts else "'', ''"
    sql = (
        f"SELECT p.paper_id, {text_cols}, p.content_hash FROM ({eligible_sql}) p "
        f"WHERE {' AND '.join(filters)} ORDER BY p.first_seen, p.paper_id"
    )
    rows = store.con.execute(sql, params + filter_params).fetchall()
    skipped = eligible - len(rows)
    return [Pending(*r) for r in rows], skipped


def load_texts(store: Store, papers: Sequence[Pending]) -> list[Pending]:
    """The papers with their title and abstract, read from the database."""
    rows = store.con.execute(
        "SELECT paper_id, title, abstract FROM papers WHERE paper_id IN "
        "(SELECT unnest(?::VARCHAR[]))",
        [[p.paper_id for p in papers]],
    ).fetchall()
    text = {pid: (title, abstract) for pid, title, abstract in rows}
    # A paper deleted meanwhile keeps empty text, and fails as a paper without text would.
    return [Pending(p.paper_id, *text.get(p.paper_id, ("", "")), p.content_hash) for p in papers]


def paper_input(paper: Pending) -> PaperInput:
    return PaperInput(paper.paper_id, paper.title, paper.abstract)
