"""Export labels to Parquet, CSV or JSON Lines through DuckDB's ``COPY``.

Wide (default): one row per paper with the three fields as lists; from
``paper_labels`` (one row per paper and annotator key) or, with ``final``, from
``final_labels`` (one row per annotated paper, the accepted labels of every
annotator merged). Long: one row per label, from ``labels`` (current ones) or
``final_labels``.

The file is written beside its destination under a temporary name and moved
into place at the end, so a failed export leaves nothing behind; an existing
file is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import duckdb

from ..db import Store
from ..errors import ConfigError, QueryError
from ..files import check_out_path, temp_beside

DEFAULT_STEM = "papertag-export"


class ExportFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


_COPY_OPTIONS = {
    ExportFormat.parquet: "FORMAT parquet",
    ExportFormat.csv: "FORMAT csv, HEADER true",
    # DuckDB's json COPY writes one object per line (newline-delimited) unless ARRAY true.
    ExportFormat.jsonl: "FORMAT json",
}

WIDE_SQL = "SELECT * FROM paper_labels ORDER BY paper_id, annotator, model"

# Papers with a current annotation, each once, with the accepted labels (model or person).
# Empty lists, not NULL, for a field with no accepted label, so every row has the same shape.
WIDE_FINAL_SQL = """
SELECT p.paper_id, p.arxiv_id, p.title, p.abstract, p.url, p.published_at,
       list_sort(list_distinct(coalesce(list(f.label) FILTER (WHERE f.field = 'technique'), [])))
           AS technique,
       list_sort(list_distinct(coalesce(list(f.label) FILTER (WHERE f.field = 'modality'), [])))
           AS modality,
       list_sort(list_distinct(coalesce(list(f.label) FILTER (WHERE f.field = 'target_metric'), [])))
           AS target_metric,
       coalesce(bool_or(f.decided_by = 'person'), false) AS reviewed,
       list_sort(coalesce(list(f.field || ' ' || f.label || ': ' || f.note)
                          FILTER (WHERE f.note IS NOT NULL), [])) AS notes
FROM papers p
LEFT JOIN final_labels f USING (paper_id)
WHERE p.paper_id IN (SELECT paper_id FROM annotation_status WHERE current)
GROUP BY ALL
ORDER BY p.paper_id
"""

LONG_SQL = """
SELECT l.paper_id, p.arxiv_id, p.title, l.field, l.label, l.confidence, l.evidence, l.note,
       l.annotator, l.model, l.annotation_id, l.created_at AS annotated_at
FROM labels l JOIN papers p USING (paper_id)
WHERE l.current
ORDER BY l.paper_id, l.annotator, l.model, l.field, l.rank
"""

LONG_FINAL_SQL = """
SELECT f.paper_id, p.arxiv_id, p.title, f.field, f.label, f.confidence, f.evidence,
       f.decided_by, f.reviewer, f.decided_at, f.annotator, f.model, f.annotation_id, f.note
FROM final_labels f JOIN papers p USING (paper_id)
ORDER BY f.paper_id, f.field, f.label, f.annotator, f.model
"""


@dataclass
class ExportResult:
    path: Path
    rows: int
    format: ExportFormat
    final: bool
    long: bool


#: File extensions that name a format: ``--out labels.csv`` needs no ``--format csv``.
_SUFFIXES = {
    ".parquet": ExportFormat.parquet,
    ".pq": ExportFormat.parquet,
    ".csv": ExportFormat.csv,
    ".jsonl": ExportFormat.jsonl,
    ".ndjson": ExportFormat.jsonl,
}


def export_format(fmt: ExportFormat | str | None, out: str | Path | None) -> ExportFormat:
    """The format asked for, else the one ``out``'s extension names, else Parquet.

    An extension that names another format than the one asked for is refused: the
    file would not be what its name says.
    """
    suffix = Path(out).suffix.lower() if out is not None else ""
    named = _SUFFIXES.get(suffix)
    if fmt is None:
        if named is None and suffix:
            known = ", ".join(_SUFFIXES)
            raise ConfigError(
                f"{out}: cannot tell the format from {suffix!r}; "
                f"use --format, or one of these extensions: {known}"
            )
        return named or ExportFormat.parquet
    try:
        asked = ExportFormat(fmt)
    except ValueError:
        allowed = ", ".join(f.value for f in ExportFormat)
        raise ConfigError(f"unknown export format {fmt!r}; use one of: {allowed}") from None
    if named is not None and named != asked:
        raise ConfigError(
            f"{out}: the extension says {named.value}, the format asked is {asked.value}"
        )
    return asked


def default_out(fmt: ExportFormat) -> Path:
    """``papertag-export.<ext>`` in the working directory."""
    return Path(f"{DEFAULT_STEM}.{fmt.value}")


def export_sql(*, final: bool = False, long: bool = False) -> str:
    """The query an export runs: a notebook can run it with :func:`papertag.run_sql` too."""
    if long:
        return LONG_FINAL_SQL if final else LONG_SQL
    return WIDE_FINAL_SQL if final else WIDE_SQL


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def export(
    db: Store | str | Path | None,
    fmt: ExportFormat | str | None = None,
    out: str | Path | None = None,
    *,
    final: bool = False,
    long: bool = False,
    overwrite: bool = False,
) -> ExportResult:
    """Write the labels to ``out`` (default :func:`default_out`) and return what was written.

    ``db`` is an open :class:`Store` or a database path (opened read-only). ``fmt``
    defaults to what ``out``'s extension names (``.parquet``, ``.csv``, ``.jsonl``),
    else Parquet (:func:`export_format`).
    """
    fmt = export_format(fmt, out)
    path = Path(out) if out is not None else default_out(fmt)
    check_out_path(path, overwrite=overwrite)
    tmp = temp_beside(path)
    copy = (
        f"COPY ({export_sql(final=final, long=long)}) "
        f"TO {_sql_string(str(tmp))} ({_COPY_OPTIONS[fmt]})"
    )
    store = db if isinstance(db, Store) else Store(db, read_only=True)
    try:
        row = store.con.execute(copy).fetchone()
        os.replace(tmp, path)
    except duckdb.Error as exc:
        raise QueryError(f"{path}: export failed: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if not isinstance(db, Store):
            store.close()
    rows = int(row[0]) if row else 0
    return ExportResult(path=path, rows=rows, format=fmt, final=final, long=long)
