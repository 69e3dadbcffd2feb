"""One annotate run per database at a time.

A run opens the database only while it stores a batch, so DuckDB's own lock no longer
keeps a second run out: two runs would ask for the same papers and pay for them twice,
and share one crash journal. A run therefore holds an exclusive lock (``flock``) on a
file beside the database, ``<db>.annotating``, for as long as it goes on; a second run
finds it held and is refused at once, naming the first. The kernel drops the lock when
the process ends, however it ends (``kill -9`` included), so a stale file never blocks.
A run that starts another inside it (the cascade's learned and LLM runs) shares its lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from ..errors import RunInProgress, StoreError

#: Lock files this process holds: a run inside a run (the cascade's) shares its lock.
_held: set[str] = set()
_held_lock = threading.Lock()


class RunLock:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".annotating")
        self._fd: int | None = None
        self._key = os.path.abspath(self.path)

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunInProgress` naming the run that holds it."""
        with _held_lock:
            if self._key in _held:
                return  # this process's own run, with a run inside it
            self._take()
            _held.add(self._key)

    def _take(self) -> None:
        if not self.path.parent.is_dir():
            raise StoreError(f"{self.db_path}: directory {self.path.parent} does not exist")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(
                    f"{self.db_path}: cannot create {self.path.name} beside it (the lock of "
                    f"an annotate run): {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").split()
                os.close(fd)
                raise RunInProgress(self._message(holder)) from None
            # The run that held it may have ended (and removed the file) between our open
            # and our lock: the lock is then on a file nobody else will find. Try again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {started}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with _held_lock:
            _held.discard(self._key)
            # Removed while still held, so no other run can lock a file about to go.
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def _message(self, holder: list[str]) -> str:
        who = f"pid {holder[0]}, started {holder[1]} UTC" if len(holder) >= 2 else "pid unknown"
        return (
            f"{self.db_path}: another `papertag annotate` run ({who}) is going on with this "
            "database; one run at a time, so no paper is paid for twice. Wait for it to "
            "finish, or stop it (Ctrl-C), then run again; meanwhile `papertag stats` and "
            "`papertag calls` show its progress"
        )
