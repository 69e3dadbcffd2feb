"""The DuckDB file: opening it (a busy or missing file in one line), migrating it, and
writing to it in bulk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from ..errors import DatabaseBusy, StoreError
from .migrations import MIGRATIONS

DEFAULT_DB = "papertag.duckdb"
DB_ENV = "PAPERTAG_DB"


def default_db_path() -> Path:
    """``$PAPERTAG_DB`` if set, else ``papertag.duckdb`` in the working directory."""
    return Path(os.environ.get(DB_ENV) or DEFAULT_DB)


def _translate_open_error(path: Path, exc: duckdb.Error) -> StoreError:
    msg = str(exc)
    first = msg.splitlines()[0] if msg else type(exc).__name__
    # The first line: an internal error's stack trace below it names C++ locks.
    if "lock" in first.lower():
        return DatabaseBusy(
            f"{path}: the database is in use by another process (another papertag run or a DuckDB "
            "session); wait for it to finish or close it, then try again"
        )
    return StoreError(f"{path}: cannot open database: {first}")


#: The storage format of a new database file: the one DuckDB 1.0 and later read, so the file
#: opens in the `duckdb` CLI and any DuckDB 1.x whichever DuckDB papertag runs on (2.0
#: writes a format that 1.x cannot read by default).
STORAGE_VERSION = "v1.0.0"


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(
        str(path),
        read_only=read_only,
        config={"storage_compatibility_version": STORAGE_VERSION},
    )


class Store:
    """An open papertag database. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no such database; run `papertag ingest` first")
        if not read_only and self.path.parent and not self.path.parent.exists():
            raise StoreError(f"{self.path}: directory {self.path.parent} does not exist")
        try:
            self.con = _connect(self.path, read_only)
        except duckdb.Error as exc:
            raise _translate_open_error(self.path, exc) from None
        self.read_only = read_only
        if not read_only:
            self.migrate()
        elif self._pending_migrations():
            # A file written by an older papertag: upgrade it once, then reopen read-only.
            self.con.close()
            Store(self.path).close()
            self.con = _connect(self.path, True)

    def _pending_migrations(self) -> list[str]:
        try:
            done = {row[0] for row in self.con.execute("SELECT name FROM _migrations").fetchall()}
        except duckdb.CatalogException:
            done = set()
        return [name for name, _ in MIGRATIONS if name not in done]

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All-or-nothing block: a failure rolls back everything written in it."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # -- migrations ------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the migrations this file has not seen; returns their names."""
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL)"
        )
        done = {row[0] for row in self.con.execute("SELECT name FROM _migrations").fetchall()}
        applied = []
        for name, fn in MIGRATIONS:
            if name in done:
                continue
            with self.transaction() as con:
                fn(con)
                con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [name])
            applied.append(name)
        if applied:
            # Into the file itself at once, not left in DuckDB's log: DuckDB 1.5 cannot replay
            # from its log an ALTER TABLE ADD COLUMN on a table with a nextval() default
            # (m007, m008), so a database whose process died before the next checkpoint
            # (a new one, killed during its first pull) would never open again.
            self.con.execute("CHECKPOINT")
        return applied

    # -- helpers ---------------------------------------------------------
    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        """The first column of the first row (None if no row). The result is read to its
        end: DuckDB 2 refuses some work (``register``) while a result is left unfinished."""
        rows = self.con.execute(sql, params or []).fetchall()
        return rows[0][0] if rows else None

    def prepare_arrow(self) -> None:
        """Pay now for what DuckDB imports on its first Arrow scan (pyarrow.dataset, pandas
        if installed: a third of a second), which in the middle of a run stalls the writer."""
        import pyarrow as pa

        _papertag_batch = pa.table({"x": pa.array([], pa.int8())})
        self.con.execute("SELECT count(*) FROM _papertag_batch").fetchall()

    def insert_arrow(self, table: str, data: Any) -> None:
        """Bulk-insert a pyarrow Table (columnar path, never row by row)."""
        cols = ", ".join(data.column_names)
        # DuckDB finds `_papertag_batch` in this frame (a replacement scan). Not register():
        # DuckDB holds on to a registered object's memory until the transaction ends, so a
        # file written in many batches grew without bound.
        _papertag_batch = data
        self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _papertag_batch")
