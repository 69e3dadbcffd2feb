"""The DuckDB file: opening it (a busy or missing file in one line), migrating it, and
writing to it in bulk.

DuckDB lets one process write a file, or several processes read it, never both at once;
a second process that opens it meanwhile is refused at once. An annotate run opens the
file only for the moment it stores a batch (:mod:`papertag.annotate.engine`), so a command
that finds it in use waits and tries again, for up to :data:`BUSY_WAIT` seconds, before it
says the database is in use.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from ..errors import ConfigError, DatabaseBusy, StoreError
from .migrations import MIGRATIONS

DEFAULT_DB = "papertag.duckdb"
DB_ENV = "PAPERTAG_DB"

#: Seconds a command waits for a database another process has open before it gives up:
#: long enough for an annotate run to store a batch (a fraction of a second) or a short
#: command to end; ``$PAPERTAG_BUSY_WAIT`` sets another.
BUSY_WAIT = 10.0
BUSY_ENV = "PAPERTAG_BUSY_WAIT"
#: The first pause between two tries, doubled after each up to the longest.
FIRST_PAUSE = 0.02
LONGEST_PAUSE = 0.5


def utc_now() -> datetime:
    """Now as the database's timestamps hold it: UTC, without a zone (DuckDB's TIMESTAMP)."""
    return datetime.now(UTC).replace(tzinfo=None)


def default_db_path() -> Path:
    """``$PAPERTAG_DB`` if set, else ``papertag.duckdb`` in the working directory."""
    return Path(os.environ.get(DB_ENV) or DEFAULT_DB)


def busy_wait() -> float:
    """How long to wait for a database in use: ``$PAPERTAG_BUSY_WAIT`` or :data:`BUSY_WAIT`."""
    raw = os.environ.get(BUSY_ENV, "").strip()
    if not raw:
        return BUSY_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"${BUSY_ENV} must be a number of seconds (0 or more), not {raw!r}")
    return value


def _busy(first: str) -> bool:
    low = first.lower()
    # Another process holds the file's lock; or this process has it open in the other mode
    # (read-only beside read-write), which DuckDB refuses as a "different configuration";
    # or another thread of this process is opening or closing it that very moment.
    return "lock" in low or "different configuration" in low or "unique file handle conflict" in low


def _translate_open_error(path: Path, exc: duckdb.Error, waited: float) -> StoreError:
    msg = str(exc)
    first = msg.splitlines()[0] if msg else type(exc).__name__
    # The first line: an internal error's stack trace below it names C++ locks.
    if _busy(first):
        pid = re.search(r"\(PID (\d+)\)", first)
        who = f" (pid {pid.group(1)})" if pid else ""
        tried = f", still after {waited:g} s" if waited else ""
        return DatabaseBusy(
            f"{path}: the database is in use by another process{who}{tried}: a DuckDB session, "
            "or a papertag command that writes to it; close it or wait for it to finish, then "
            f"try again (${BUSY_ENV} sets how long to wait)"
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


def _open(
    path: Path,
    read_only: bool,
    wait: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> duckdb.DuckDBPyConnection:
    """Connect, trying again while another process has the file, for up to ``wait`` s."""
    start = clock()
    pause = FIRST_PAUSE
    while True:
        try:
            return _connect(path, read_only)
        except duckdb.Error as exc:
            waited = clock() - start
            error = _translate_open_error(path, exc, waited)
            if not isinstance(error, DatabaseBusy) or waited >= wait:
                raise error from None
        sleep(min(pause, wait - waited))
        pause = min(pause * 2, LONGEST_PAUSE)


class Store:
    """An open papertag database. Use as a context manager or call :meth:`close`.

    A file another process has open is tried again for up to ``wait`` seconds (default
    :func:`busy_wait`), pausing by ``sleep`` and timing by ``clock`` (tests pass fakes).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        read_only: bool = False,
        wait: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no such database; run `papertag ingest` first")
        if not read_only and self.path.parent and not self.path.parent.exists():
            raise StoreError(f"{self.path}: directory {self.path.parent} does not exist")
        wait = busy_wait() if wait is None else wait
        self.con = _open(self.path, read_only, wait, sleep, clock)
        self.read_only = read_only
        if not read_only:
            self.migrate()
        elif self._pending_migrations():
            # A file written by an older papertag: upgrade it once, then reopen read-only.
            self.con.close()
            Store(self.path, wait=wait, sleep=sleep, clock=clock).close()
            self.con = _open(self.path, True, wait, sleep, clock)

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

    def insert_arrow(self, table: str, data: Any) -> None:
        """Bulk-insert a pyarrow Table (columnar path, never row by row)."""
        cols = ", ".join(data.column_names)
        # DuckDB finds `_papertag_batch` in this frame (a replacement scan). Not register():
        # DuckDB holds on to a registered object's memory until the transaction ends, so a
        # file written in many batches grew without bound.
        _papertag_batch = data
        self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _papertag_batch")


@contextmanager
def using(db: Store | str | Path | None, *, wait: float | None = None) -> Iterator[Store]:
    """``db`` itself if it is an open :class:`Store` (left open), else that file opened
    read-write for the block and closed after it."""
    if isinstance(db, Store):
        yield db
        return
    store = Store(db, wait=wait)
    try:
        yield store
    finally:
        store.close()


def prepare_arrow() -> None:
    """Pay now for what DuckDB imports on its first Arrow scan (pyarrow.dataset, pandas if
    installed: a third of a second), which in the middle of a run stalls the writer. The
    imports are the process's: a scan in memory pays for every connection."""
    import pyarrow as pa

    _papertag_batch = pa.table({"x": pa.array([], pa.int8())})
    with duckdb.connect() as con:
        con.execute("SELECT count(*) FROM _papertag_batch").fetchall()
