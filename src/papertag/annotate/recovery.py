"""After a crash: move what the journal holds into the database, and find the answers
already paid for, to replay instead of asking again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from ..annotators import (
    AnnotatorInfo,
)
from ..annotators.llm.records import RequestTemplate
from ..db import Store
from .journal import Journal
from .writer import call_schema


def save_template(store: Store, template: RequestTemplate | None) -> None:
    """Store the part of a run's requests that each call's row leaves out."""
    if template is not None:
        store.con.execute(
            "INSERT OR IGNORE INTO llm_request_templates VALUES (?, ?, ?)",
            [template.template_id, template.head, template.tail],
        )


def recover_journal(store: Store, journal: Journal) -> int:
    """Move the rows a killed run journaled into ``llm_calls``; returns how many were new."""
    rows = journal.read()
    if rows:
        table = pa.Table.from_pylist(rows, schema=call_schema())
        cols = ", ".join(table.column_names)
        with store.transaction() as con:
            before = int(store.scalar("SELECT count(*) FROM llm_call_rows"))
            con.register("_journal", table)
            con.execute(
                f"INSERT INTO llm_call_rows ({cols}) SELECT {cols} FROM _journal j "
                "WHERE NOT EXISTS (SELECT 1 FROM llm_call_rows c WHERE c.call_uid = j.call_uid)"
            )
            con.unregister("_journal")
            added = int(store.scalar("SELECT count(*) FROM llm_call_rows")) - before
    journal.clear()
    return added if rows else 0


@dataclass(frozen=True)
class PaidCall:
    """An answer paid for but never stored as a result."""

    request_hash: str
    call_id: int
    response_body: str
    #: The papers the call carried, in the order of their numbers in it.
    paper_ids: list[str]


def paid_answers(
    store: Store, annotator: AnnotatorInfo, paper_ids: Sequence[str]
) -> dict[str, list[tuple[int, str]]]:
    """Answers already paid for but never stored as a result, by request hash (what the
    transport replays instead of asking again)."""
    return replay_index(paid_calls(store, annotator, paper_ids))


def replay_index(calls: Sequence[PaidCall]) -> dict[str, list[tuple[int, str]]]:
    answers: dict[str, list[tuple[int, str]]] = {}
    for c in calls:
        answers.setdefault(c.request_hash, []).append((c.call_id, c.response_body))
    return answers


def paid_calls(store: Store, annotator: AnnotatorInfo, paper_ids: Sequence[str]) -> list[PaidCall]:
    """The calls whose answers were paid for but never stored as a result.

    These are 200s logged for a call whose run died before the results of its papers
    were committed (its run stored no annotation or failure for any paper it carried:
    a call's papers settle together), that carried one of ``paper_ids``, and that no
    later run has replayed into a stored result.
    """
    rows = store.con.execute(
        """
        WITH calls AS (
            SELECT c.call_id, c.run_id, c.request_hash, c.response_body,
                   unnest(coalesce(c.paper_ids, [c.paper_id])) AS paper_id
            FROM llm_call_rows c
            WHERE c.status = 200 AND c.annotation_id IS NULL AND c.response_body IS NOT NULL
              AND c.replay_of IS NULL
              AND c.annotator = ? AND c.model = ? AND c.host = ?
              AND c.prompt_version = ? AND c.taxonomy_version = ?
        ),
        replays AS (
            SELECT r.replay_of AS call_id, r.run_id,
                   unnest(coalesce(r.paper_ids, [r.paper_id])) AS paper_id
            FROM llm_call_rows r WHERE r.replay_of IS NOT NULL
        ),
        -- A run stored a result for a paper: an annotation or a failure row.
        results AS (
            SELECT run_id, paper_id FROM annotations
            UNION SELECT run_id, paper_id FROM annotation_failures
        ),
        used AS (
            SELECT c.call_id FROM calls c JOIN results s USING (run_id, paper_id)
            -- Used by a replay whose result was stored (a replay killed before its commit
            -- leaves the answer free for the next run).
            UNION SELECT r.call_id FROM replays r JOIN results s USING (run_id, paper_id)
            UNION SELECT replay_of FROM llm_call_rows
            WHERE replay_of IS NOT NULL AND annotation_id IS NOT NULL
        )
        SELECT c.request_hash, c.call_id, c.response_body,
               coalesce(r.paper_ids, [r.paper_id]) AS paper_ids
        FROM (SELECT DISTINCT request_hash, call_id, response_body FROM calls
              WHERE paper_id IN (SELECT unnest(?::VARCHAR[]))
                AND call_id NOT IN (SELECT call_id FROM used)) c
        JOIN llm_call_rows r USING (call_id)
        ORDER BY c.call_id
        """,
        [
            annotator.name,
            annotator.model,
            getattr(annotator, "host", ""),
            annotator.prompt_version,
            annotator.taxonomy.version,
            list(paper_ids),
        ],
    ).fetchall()
    return [PaidCall(h, int(i), body, list(ids)) for h, i, body, ids in rows]
