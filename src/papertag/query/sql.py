"""SQL over the store, and the counts behind ``papertag stats``."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from ..db import Store
from ..errors import QueryError


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    #: A statement's status (DuckDB's "Success" of a SET, "Count" of an INSERT), not a query's rows.
    status: bool = False

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def run_sql(store: Store, sql: str, params: list[Any] | None = None) -> QueryResult:
    """Run one SQL statement; DuckDB's own message becomes a :class:`QueryError`."""
    if not sql.strip():
        raise QueryError("empty SQL")
    try:
        rel = store.con.execute(sql, params or [])
        if rel.description is None:
            return QueryResult([], [], [])
        columns = [d[0] for d in rel.description]
        types = [str(d[1]) for d in rel.description]
        return QueryResult(columns, types, rel.fetchall())
    except duckdb.Error as exc:
        raise QueryError(" ".join(str(exc).split())) from None


def run_script(store: Store, sql: str) -> list[QueryResult]:
    """Run each statement of ``sql`` in order; one result per statement (``status`` for a
    statement such as SET or INSERT, whose only row says it worked)."""
    if not sql.strip():
        raise QueryError("empty SQL")
    try:
        statements = store.con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(" ".join(str(exc).split())) from None
    results = []
    for st in statements:
        result = run_sql(store, st.query)
        result.status = st.type.name != "SELECT" and result.columns in (["Success"], ["Count"])
        results.append(result)
    return results


def read_sql_file(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"{p}: cannot read SQL file: {exc}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def to_json(result: QueryResult) -> str:
    return json.dumps(
        [{k: _jsonable(v) for k, v in r.items()} for r in result.records()], ensure_ascii=False
    )


def to_csv(result: QueryResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows(result.rows)
    return buf.getvalue()


def stats(store: Store) -> dict[str, Any]:
    """Counts of what the database holds."""
    q = store.scalar
    out: dict[str, Any] = {
        "papers": q("SELECT count(*) FROM papers"),
        "digests": q("SELECT count(*) FROM digests"),
        "links": q("SELECT count(*) FROM digest_papers"),
        "papers_with_arxiv_id": q("SELECT count(*) FROM papers WHERE arxiv_id IS NOT NULL"),
        "annotations": q("SELECT count(*) FROM annotations"),
        "current_annotations": q("SELECT count(*) FROM annotation_status WHERE current"),
        "annotation_failures": q("SELECT count(*) FROM annotation_failures"),
    }
    per_field = store.con.execute(
        "SELECT field, count(*) FROM labels WHERE current GROUP BY field ORDER BY field"
    ).fetchall()
    out["current_labels"] = {f: n for f, n in per_field}
    return out
