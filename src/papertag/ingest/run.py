"""Ingest digest files: each read, checked and written all-or-nothing, a bad file reported
and skipped while the others still land."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..db import Store
from ..errors import InputError
from .digests import DigestFile
from .formats import Digest
from .report import FileReport, IngestReport
from .write import BatchWriter, write_entries


def _digest_file(path: Path, digest: Digest) -> DigestFile:
    return DigestFile(path.name, str(path.absolute()), digest.format, digest.sha256)


def ingest_file(
    store: Store, path: str | Path, *, on_batch: Callable[[int], None] | None = None
) -> FileReport:
    """Parse and write one file; a bad file raises :class:`InputError` and writes nothing."""
    p = Path(path)
    report = FileReport(path=str(p))
    with Digest(p) as digest:
        report.format, report.note = digest.format, digest.note
        write_entries(
            store,
            digest.entries(),
            digest=_digest_file(p, digest),
            report=report,
            on_batch=on_batch,
        )
    return report


def ingest_digests(
    paths: Iterable[str | Path],
    db: Store | str | Path | None = None,
    *,
    on_read: Callable[[FileReport], None] | None = None,
    on_file: Callable[[FileReport], None] | None = None,
) -> IngestReport:
    """Ingest digest files into the database; a bad file is reported and skipped.

    Small files are read first and written together, up to :data:`.write.BATCH_SIZE`
    entries a transaction; a larger file is streamed in a transaction of its own (see
    :class:`.write.BatchWriter`). Each file is all-or-nothing: one that fails to read adds
    nothing, and the others still land. ``on_read`` sees each file's report once it is read (its error if
    it failed), ``on_file`` once it is final, in the order given. Returns an
    :class:`IngestReport`; check ``report.ok`` (the CLI exits non-zero when a file failed).
    """
    store = db if isinstance(db, Store) else Store(db)
    report = IngestReport()
    try:
        writer = BatchWriter(store, on_file)
        for path in paths:
            p = Path(path)
            fr = FileReport(path=str(p))
            report.files.append(fr)
            try:
                with Digest(p) as digest:
                    fr.format, fr.note = digest.format, digest.note
                    writer.add(_digest_file(p, digest), digest.entries(), fr)
            except InputError as exc:
                # What a streamed file counted before its bad line was rolled back.
                fr = report.files[-1] = FileReport(path=str(p), error=str(exc))
                writer.skip(fr)
            if on_read:
                on_read(fr)
        writer.flush()
    finally:
        if not isinstance(db, Store):
            store.close()
    return report
