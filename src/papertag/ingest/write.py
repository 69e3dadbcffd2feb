"""The batched writer: entries and digests into the database, a transaction a file or a
group of small files, in batches that bound memory whatever the input's size.

Each file is written all-or-nothing, so a bad file adds nothing while good files beside
it still land. Papers are matched by :mod:`.papers`, digests keyed by :mod:`.digests`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..db import Store, utc_now
from .bulk import bulk_write
from .digests import DigestFile, Listing
from .entries import Entry
from .papers import Papers
from .report import FileReport

#: Entries written per batch; bounds memory whatever the file size.
BATCH_SIZE = 20_000


def _batches(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    stream = iter(entries)
    while batch := list(itertools.islice(stream, size)):
        yield batch


def write_entries(
    store: Store,
    entries: Iterable[Entry],
    *,
    digest: DigestFile | None,
    report: FileReport,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Write entries in one transaction, a batch at a time; ``entries`` may be a stream.

    ``digest`` is the file they come from, or None to record no digest and no listings.
    If the stream raises (a bad line half way through a file), everything is rolled back.
    """
    now = utc_now()
    count = 0
    with bulk_write(store):
        listing = Listing(store, BATCH_SIZE) if digest is not None else None
        if listing is not None and digest is not None:
            listing.start(digest, report)
        for batch in _batches(entries, BATCH_SIZE):
            count += len(batch)
            papers = Papers(store, [batch], now)
            paper_ids, hashes = papers.add(0, report)
            papers.flush()
            if listing is not None:
                listing.add(batch, hashes, paper_ids)
            if on_batch:
                on_batch(len(batch))
        report.entries = count
        if listing is not None:
            listing.write(now)


def write_digests(
    store: Store,
    digests: Sequence[tuple[DigestFile, Sequence[Entry], FileReport]],
    *,
    after: Callable[[Store], None] | None = None,
    compress: bool = True,
) -> None:
    """Write parsed digests in one transaction: all of them, or on an error none.

    Each report says what its digest added, as if the digests had been written one after
    another in this order. ``after`` runs in the same transaction once they are written
    (``papertag pull`` records the days it fetched there, so a day is stored with them).
    ``compress=False`` leaves the compression to one :func:`.bulk.compress` after many
    writes.
    """
    now = utc_now()
    with bulk_write(store, compress=compress):
        if digests:
            papers = Papers(store, [entries for _, entries, _ in digests], now)
            listing = Listing(store, BATCH_SIZE)
            for segment, (digest, entries, report) in enumerate(digests):
                paper_ids, hashes = papers.add(segment, report)
                report.entries = len(entries)
                listing.start(digest, report)
                listing.add(entries, hashes, paper_ids)
            papers.flush()
            listing.write(now)
        if after is not None:
            after(store)


class BatchWriter:
    """Digests written as they are read: small ones together, up to :data:`BATCH_SIZE`
    entries a transaction, as a transaction and its statements cost more than a day's list
    of papers (580 API files took 44 s one by one); a larger one streamed in a transaction
    of its own. ``on_file`` sees each file's report once it is final, in the order given."""

    def __init__(self, store: Store, on_file: Callable[[FileReport], None] | None) -> None:
        self._store, self._on_file = store, on_file
        # Files read and not yet reported, in order, and their entries: those with a digest
        # are still to be written; a failed or streamed one has none.
        self._pending: list[tuple[DigestFile | None, list[Entry], FileReport]] = []
        self._size = 0

    def add(self, digest: DigestFile, entries: Iterable[Entry], report: FileReport) -> None:
        """A file's entries (a stream): kept for the next write, or streamed now when large.
        If the stream raises, nothing of this file is written."""
        stream = iter(entries)
        head = list(itertools.islice(stream, BATCH_SIZE + 1))
        if len(head) > BATCH_SIZE:
            # A large file: streamed, its memory bounded by a batch; the files before it
            # land first, so reports stay in order.
            self.flush()
            write_entries(self._store, itertools.chain(head, stream), digest=digest, report=report)
            self.skip(report)
        else:
            if self._size + len(head) > BATCH_SIZE:
                self.flush()
            self._pending.append((digest, head, report))
            self._size += len(head)

    def skip(self, report: FileReport) -> None:
        """A file with nothing (more) to write: reported in its turn."""
        self._pending.append((None, [], report))

    def flush(self) -> None:
        """Write the files kept so far, then report them."""
        todo = [(d, entries, fr) for d, entries, fr in self._pending if d is not None]
        if todo:
            write_digests(self._store, todo)
        for _, _, fr in self._pending:
            if self._on_file:
                self._on_file(fr)
        self._pending.clear()
        self._size = 0
