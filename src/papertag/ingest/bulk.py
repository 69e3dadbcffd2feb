"""How ingest writes to DuckDB in bulk: Arrow tables in and out of a statement, and the
settings and transaction of a bulk write, compressed once committed."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from ..db import Store


def arrow_table(rows: Iterable[Sequence[Any]], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True)) or [()] * len(schema)
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
        schema=schema,
    )


def arrow_schema(names: Iterable[str], **types: pa.DataType) -> pa.Schema:
    """The columns ``names`` in order: strings, but for those ``types`` names."""
    return pa.schema([(name, types.get(name, pa.string())) for name in names])


def with_table(
    store: Store, table: pa.Table, sql: str, params: list[Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run ``sql`` (which may write) with ``table`` visible as ``_papertag_rows``; returns
    its rows.

    DuckDB finds ``_papertag_rows`` in this frame (a replacement scan). Not ``register()``,
    nor a relation's ``query()`` in DuckDB 1.x: DuckDB holds on to those until the
    transaction ends, so memory would grow with a file's size.
    """
    _papertag_rows = table
    return store.con.execute(sql, params or []).fetchall()


#: DuckDB settings for the length of a bulk write, then restored: flush each finished row
#: group instead of buffering several, and compress text with zstd, which for abstracts is
#: about twice as fast to write and two to three times smaller than DuckDB's automatic
#: choice (dictionary + FSST).
_BULK_SETTINGS: dict[str, Any] = {"write_buffer_row_group_count": 1, "force_compression": "zstd"}
#: DuckDB keeps the blocks it writes cached up to its memory limit (80% of RAM by default),
#: so a long ingest would grow with its input. While ingest writes, DuckDB's *default*
#: limit is lowered to this and then reset; a limit the user set is left alone. Uncommitted
#: rows beyond it spill to DuckDB's temporary directory.
BULK_MEMORY_LIMIT = 512 * 2**20

_SIZE = re.compile(r"^\s*([\d.]+)\s*([KMGTPE]?)(i?)B?\s*$", re.IGNORECASE)


def _size_bytes(text: str) -> float | None:
    """Bytes in a DuckDB size such as ``18.8 GiB`` or ``512MB``; None if unreadable."""
    m = _SIZE.match(text.replace("bytes", ""))
    if not m:
        return None
    number, prefix, binary = m.groups()
    power = "KMGTPE".find(prefix.upper()) + 1 if prefix else 0
    return float(number) * (1024.0 if binary else 1000.0) ** power


@functools.cache
def _default_memory_limit() -> str | None:
    """DuckDB's own memory limit on this machine, as ``current_setting`` shows it."""
    with contextlib.suppress(duckdb.Error), duckdb.connect() as con:
        row = con.execute("SELECT current_setting('memory_limit')").fetchone()
        return str(row[0]) if row else None
    return None


def _cap_default_memory(store: Store) -> bool:
    """Lower DuckDB's default memory limit to BULK_MEMORY_LIMIT; True if it did."""
    try:
        row = store.con.execute("SELECT current_setting('memory_limit')").fetchone()
        current = str(row[0]) if row else None
        size = _size_bytes(current) if current else None
        if current != _default_memory_limit() or size is None or size <= BULK_MEMORY_LIMIT:
            return False
        store.con.execute("SET memory_limit = ?", [f"{BULK_MEMORY_LIMIT // 2**20}MiB"])
    except duckdb.Error:
        return False
    return True


@contextlib.contextmanager
def _bulk_settings(store: Store) -> Iterator[None]:
    previous: dict[str, Any] = {}
    for name, value in _BULK_SETTINGS.items():
        try:
            old = store.con.execute("SELECT current_setting(?)", [name]).fetchone()
            store.con.execute(f"SET {name} = ?", [value])
        except duckdb.Error:
            continue  # a DuckDB without this setting: its defaults do
        if old is not None:
            previous[name] = old[0]
    capped = _cap_default_memory(store)
    try:
        yield
    finally:
        for name, old_value in previous.items():
            with contextlib.suppress(duckdb.Error):
                store.con.execute(f"SET {name} = ?", [old_value])
        if capped:
            with contextlib.suppress(duckdb.Error):
                store.con.execute("RESET memory_limit")


@contextlib.contextmanager
def bulk_write(store: Store, *, compress: bool = True) -> Iterator[None]:
    """One all-or-nothing transaction under the bulk settings, compressed once committed
    unless ``compress`` is False (see :func:`compress`)."""
    with _bulk_settings(store):
        with store.transaction():
            yield
        if compress:
            _checkpoint(store)


def _checkpoint(store: Store) -> None:
    # Compress what was written now, under the settings above; DuckDB's own later
    # checkpoint would use its defaults. Busy (another transaction open)? Later, then.
    with contextlib.suppress(duckdb.Error):
        store.con.execute("CHECKPOINT")


def compress(store: Store) -> None:
    """Compress what writes made with ``compress=False`` left in DuckDB's log: once after
    many small writes, as a checkpoint costs more than a day's papers (a third of a second
    in a database of 100,000 papers) and grows with the database."""
    with _bulk_settings(store):
        _checkpoint(store)
