"""After a crash: move what the journal holds into the database, and find the answers
already paid for, to replay instead of asking again."""

from __future__ import annotations

from collections.abc import Sequence

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


def paid_answers(
    store: Store, annotator: AnnotatorInfo, paper_ids: Sequence[str]
) -> dict[str, list[tuple[int, str]]]:
    """Answers already paid for but never stored as a result, by request hash.

    These are 200s logged for a paper whose run died before its annotation or
    failure was committed (so the call has no annotation and its run no failure
    row for the paper), and that no later run has replayed into a stored result.
    """
    rows = store.con.execute(
        """
        SELECT c.request_hash, c.call_id, c.response_body FROM llm_call_rows c
        WHERE c.status = 200 AND c.annotation_id IS NULL AND c.response_body IS NOT NULL
          AND c.replay_of IS NULL
          AND c.annotator = ? AND c.model = ? AND c.host = ?
          AND c.prompt_version = ? AND c.taxonomy_version = ?
          AND c.paper_id IN (SELECT unnest(?::VARCHAR[]))
          AND NOT EXISTS (SELECT 1 FROM annotation_failures f
                          WHERE f.run_id = c.run_id AND f.paper_id = c.paper_id)
          -- Used by a replay whose result was stored (a replay killed before its commit
          -- leaves the answer free for the next run).
          AND NOT EXISTS (SELECT 1 FROM llm_call_rows r
                          WHERE r.replay_of = c.call_id
                            AND (r.annotation_id IS NOT NULL
                                 OR EXISTS (SELECT 1 FROM annotation_failures f2
                                            WHERE f2.run_id = r.run_id
                                              AND f2.paper_id = r.paper_id)))
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
    answers: dict[str, list[tuple[int, str]]] = {}
    for request_hash, call_id, body in rows:
        answers.setdefault(request_hash, []).append((call_id, body))
    return answers
