"""A digest's identity and its listings: a digest is keyed on what it lists (or on what it
is, a pulled day), not on its file name, and its listings are written once that key is known."""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple

import pyarrow as pa

from ..db import Store
from .bulk import arrow_schema, arrow_table, with_table
from .entries import Entry
from .report import FileReport


class DigestFile(NamedTuple):
    """The file a digest was read from, as the ``digests`` table records it."""

    name: str  # base name, stored as `source`
    path: str  # where it was first read from, absolute
    format: str
    sha256: str  # of its bytes
    #: A digest identified by what it is rather than by what it lists: a day of the
    #: daily-papers API (``hf:2025-03-04``), whose list grows and reorders during the day.
    #: Read again, its listing is replaced by the new one.
    key: str | None = None
    #: Its date when the source says it (a pulled day); else the most common listing date.
    day: date | None = None


#: Where a write's listings wait until their digest ids are known (a temporary table).
_LISTING = "_papertag_listing"


@functools.cache
def _digest_schema() -> pa.Schema:
    return arrow_schema(
        (
            "digest_id",
            "source",
            "format",
            "digest_date",
            "sha256",
            "entries",
            "ingested_at",
            "path",
        ),
        digest_date=pa.date32(),
        entries=pa.int32(),
        ingested_at=pa.timestamp("us"),
    )


@dataclass
class _Listed:
    """One file's listings in a :class:`Listing`."""

    digest: DigestFile
    report: FileReport
    hash: Any = field(default_factory=hashlib.sha256)
    dates: Counter[date] = field(default_factory=Counter)
    entries: int = 0


class Listing:
    """The listings of the digests one transaction writes (one file, or many small ones).

    A digest is identified by what it lists, not by its file name (two files both called
    papers.json are two digests): its entries in order, each with its arXiv id, title,
    abstract and listing date, hashed. That id is known only after a file's last entry, so
    the listings wait in a temporary table of the transaction (memory stays bounded
    whatever the file size, as DuckDB spills it) and reach ``digest_papers`` under their
    ids at the end, for all files at once.
    """

    def __init__(self, store: Store, stage_every: int) -> None:
        """``stage_every`` listings go to the temporary table at a time."""
        self._store, self._stage_every = store, stage_every
        self._files: list[_Listed] = []
        # Listings not yet in the temporary table, by column: file, position, paper, date.
        self._staged: tuple[list[int], list[int], list[str], list[date | None]] = ([], [], [], [])
        store.con.execute(
            f"CREATE TEMP TABLE {_LISTING} "
            "(file INTEGER, position INTEGER, paper_id VARCHAR, listed_on DATE)"
        )

    def start(self, digest: DigestFile, report: FileReport) -> None:
        """The entries added next are this file's."""
        self._files.append(_Listed(digest, report))

    def add(self, entries: Sequence[Entry], hashes: Sequence[str], paper_ids: list[str]) -> None:
        """Stage entries of the current file: their content hashes and the papers they are."""
        listed = self._files[-1]
        file = len(self._files) - 1
        # What the file says of each paper (arXiv id, text, listing date), not the paper_id
        # it matched: the same file gives the same id in any database. Upvotes and keywords
        # stay out, so a day's list fetched again later is still that day's digest.
        update = listed.hash.update
        for e, chash in zip(entries, hashes, strict=True):
            update(f"{e.arxiv_id or ''}\t{chash}\t{e.listed_on or ''}\n".encode())
        files, positions, papers, dates = self._staged
        files.extend([file] * len(entries))
        positions.extend([e.position for e in entries])
        papers.extend(paper_ids)
        dates.extend([e.listed_on for e in entries])
        listed.dates.update(e.listed_on for e in entries if e.listed_on)
        listed.entries += len(entries)
        if len(files) >= self._stage_every:
            self._stage()

    def _stage(self) -> None:
        file, position, paper_id, listed_on = self._staged
        if not file:
            return
        self._store.insert_arrow(
            _LISTING,
            pa.table(
                {
                    "file": pa.array(file, pa.int32()),
                    "position": pa.array(position, pa.int32()),
                    "paper_id": pa.array(paper_id, pa.string()),
                    "listed_on": pa.array(listed_on, pa.date32()),
                }
            ),
        )
        self._staged = ([], [], [], [])

    def _resolve(self) -> list[tuple[int, str, bool, bool]]:
        """Each file's digest: (file, digest_id, keyed, known) for the files that write one;
        a file listing what an earlier file of this write listed is that digest, unchanged."""
        ids = [f.digest.key or f.hash.hexdigest()[:16] for f in self._files]
        found = with_table(
            self._store,
            pa.table({"id": ids, "sha": [f.digest.sha256 for f in self._files]}),
            "SELECT digest_id, sha256 FROM digests "
            "WHERE digest_id IN (SELECT id FROM _papertag_rows) "
            "OR sha256 IN (SELECT sha FROM _papertag_rows) ORDER BY ingested_at, digest_id",
        )
        known = {str(d) for d, _ in found}
        by_sha: dict[str, str] = {}
        for d, sha in found:
            by_sha.setdefault(str(sha), str(d))
        written: set[str] = set()
        plan = []
        for file, (listed, did) in enumerate(zip(self._files, ids, strict=True)):
            keyed = listed.digest.key is not None
            if not keyed and did not in known and did not in written:
                # Written before digests had content ids (their id is the file name): the
                # same bytes again are that digest, not a second one.
                did = by_sha.get(listed.digest.sha256, did)
            if did in written:
                if keyed:
                    raise ValueError(f"{did}: one write takes a keyed digest once")
                listed.report.unchanged += listed.entries
                continue
            written.add(did)
            plan.append((file, did, keyed, did in known))
        return plan

    def write(self, now: datetime) -> None:
        """Record the digests not yet known and the listings not yet recorded: a content
        digest gains the positions it lacks; a keyed one whose list changed is replaced."""
        self._stage()
        store, con = self._store, self._store.con
        plan = self._resolve()
        if plan:
            file, did, keyed, _ = zip(*plan, strict=True)
            digests = pa.table(
                {
                    "file": pa.array(file, pa.int32()),
                    "digest_id": pa.array(did, pa.string()),
                    "keyed": pa.array(keyed, pa.bool_()),
                }
            )
            listings = (
                "SELECT l.file, m.digest_id, m.keyed, l.position, l.paper_id, l.listed_on "
                f"FROM {_LISTING} l JOIN _papertag_rows m USING (file)"
            )
            # A content digest lacks the positions not stored under its id; those are its
            # new links. A keyed one's list reorders as it grows: its new links are the
            # papers it did not list before.
            lacking = (
                "NOT EXISTS (SELECT 1 FROM digest_papers d WHERE d.digest_id = n.digest_id "
                "AND d.position = n.position)"
            )
            unlisted = (
                "NOT EXISTS (SELECT 1 FROM digest_papers d WHERE d.digest_id = n.digest_id "
                "AND d.paper_id = n.paper_id)"
            )
            added = {
                int(f): int(c)
                for f, c in with_table(
                    store,
                    digests,
                    f"WITH n AS ({listings}) SELECT file, count(*) FROM ("
                    f"SELECT file FROM n WHERE NOT keyed AND {lacking} UNION ALL "
                    f"SELECT file FROM n WHERE keyed AND {unlisted}) GROUP BY file",
                )
            }
            replaced: list[str] = []
            if any(keyed):
                replaced = [
                    str(d)
                    for (d,) in with_table(
                        store,
                        digests,
                        f"WITH n AS (SELECT digest_id, position, paper_id, listed_on FROM "
                        f"({listings}) WHERE keyed), o AS (SELECT digest_id, position, "
                        "paper_id, listed_on FROM digest_papers WHERE digest_id IN "
                        "(SELECT digest_id FROM n)) SELECT DISTINCT digest_id FROM "
                        "((SELECT * FROM n EXCEPT SELECT * FROM o) UNION ALL "
                        "(SELECT * FROM o EXCEPT SELECT * FROM n))",
                    )
                ]
            if replaced:
                con.execute(
                    "DELETE FROM digest_papers WHERE list_contains(?, digest_id)", [replaced]
                )
            with_table(
                store,
                digests,
                "INSERT INTO digest_papers (digest_id, position, paper_id, listed_on) "
                f"WITH n AS ({listings}) "
                f"SELECT digest_id, position, paper_id, listed_on FROM n WHERE NOT keyed AND {lacking} "
                "UNION ALL SELECT digest_id, position, paper_id, listed_on FROM n "
                "WHERE list_contains(?, digest_id)",
                [replaced],
            )
            new_rows = []
            reread = []
            for f, d, k, was_known in plan:
                listed = self._files[f]
                report, entries, digest = listed.report, listed.entries, listed.digest
                report.new_links += added.get(f, 0)
                report.unchanged += entries - added.get(f, 0)
                day = digest.day
                if day is None and listed.dates:
                    day = listed.dates.most_common(1)[0][0]
                row = (d, digest.name, digest.format, day, digest.sha256, entries, now, digest.path)
                if not was_known:
                    new_rows.append(row)
                elif k:
                    reread.append(row)
            if new_rows:
                store.insert_arrow("digests", arrow_table(new_rows, _digest_schema()))
            if reread:
                # A day read again: its size, date and bytes are those of the newest read.
                with_table(
                    store,
                    arrow_table(reread, _digest_schema()),
                    "UPDATE digests SET entries = r.entries, sha256 = r.sha256, "
                    "digest_date = r.digest_date FROM _papertag_rows r "
                    "WHERE digests.digest_id = r.digest_id",
                )
        con.execute(f"DROP TABLE {_LISTING}")
