"""Write parsed digests into the store: dedupe papers, link them to their digests.

Each file is written in one transaction, so a bad file adds nothing while good files
beside it still land. A digest is keyed on what it lists (:class:`_Listing`), not on its
file name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa

from ..db import Store
from ..errors import InputError
from .entries import Entry
from .formats import Digest
from .identity import content_hash, make_paper_id, title_key

# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

#: Entries written per batch; bounds memory whatever the file size.
BATCH_SIZE = 20_000


@dataclass
class FileReport:
    path: str
    format: str | None = None
    entries: int = 0
    new_papers: int = 0
    updated_papers: int = 0
    new_links: int = 0
    unchanged: int = 0
    error: str | None = None
    note: str | None = None


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.error]

    @property
    def ok(self) -> bool:
        return not self.failed

    def total(self, attr: str) -> int:
        return sum(int(getattr(f, attr)) for f in self.files if not f.error)


#: The columns of a new-paper row, in order.
_PAPER_FIELDS = (
    "paper_id",
    "title",
    "abstract",
    "arxiv_id",
    "title_key",
    "content_hash",
    "url",
    "published_at",
    "upvotes",
    "keywords",
    "first_seen",
    "updated_at",
)


@functools.cache
def _paper_schema() -> pa.Schema:
    types = {
        "published_at": pa.date32(),
        "upvotes": pa.int32(),
        "keywords": pa.list_(pa.string()),
        "first_seen": pa.timestamp("us"),
        "updated_at": pa.timestamp("us"),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in _PAPER_FIELDS])


@functools.cache
def _enrich_schema() -> pa.Schema:
    return pa.schema(
        [
            ("paper_id", pa.string()),
            ("arxiv_id", pa.string()),
            ("url", pa.string()),
            ("published_at", pa.date32()),
            ("upvotes", pa.int32()),
            ("keywords", pa.list_(pa.string())),
        ]
    )


# Column positions in a new-paper row.
_TITLE, _ABSTRACT, _ARXIV, _HASH, _URL, _PUBLISHED, _UPVOTES, _KEYWORDS = (
    _PAPER_FIELDS.index(name)
    for name in (
        "title",
        "abstract",
        "arxiv_id",
        "content_hash",
        "url",
        "published_at",
        "upvotes",
        "keywords",
    )
)


def _table(rows: Iterable[Sequence[Any]], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True)) or [()] * len(schema)
    return pa.Table.from_arrays(
        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)],
        schema=schema,
    )


@functools.cache
def _digest_schema() -> pa.Schema:
    return pa.schema(
        [
            ("digest_id", pa.string()),
            ("source", pa.string()),
            ("format", pa.string()),
            ("digest_date", pa.date32()),
            ("sha256", pa.string()),
            ("entries", pa.int32()),
            ("ingested_at", pa.timestamp("us")),
            ("path", pa.string()),
        ]
    )


@functools.cache
def _update_schema() -> pa.Schema:
    return pa.schema(
        [
            ("paper_id", pa.string()),
            ("title", pa.string()),
            ("abstract", pa.string()),
            ("content_hash", pa.string()),
            ("seen_at", pa.timestamp("us")),
        ]
    )


def _with_table(
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


@dataclass
class _Known:
    """What the database holds for papers a batch mentions, as the batch goes on."""

    by_arxiv: dict[str, str]  # arXiv id -> paper_id
    by_title: dict[str, list[str]]  # title key -> paper_ids, most recent first
    arxiv_of: dict[str, str | None]  # paper_id -> its arXiv id
    db_hash: dict[str, str]  # paper_id -> content hash stored in the database


def _lookup(store: Store, entries: Sequence[Entry], tkeys: list[str]) -> _Known:
    """Existing papers matching a batch: by arXiv id and by title key."""
    known = _Known({}, {}, {}, {})
    arxiv_ids = sorted({e.arxiv_id for e in entries if e.arxiv_id})
    queries: list[tuple[str, pa.Table]] = [
        ("title_key", pa.table({"title_key": sorted(set(tkeys))}))
    ]
    if arxiv_ids:
        queries.append(("arxiv_id", pa.table({"arxiv_id": arxiv_ids})))
    for column, probe in queries:
        found = _with_table(
            store,
            probe,
            "SELECT p.paper_id, p.arxiv_id, p.title_key, p.content_hash "
            f"FROM papers p JOIN _papertag_rows USING ({column})",
        )
        for pid, aid, tk, chash in found:
            if pid in known.db_hash:
                continue
            known.db_hash[pid] = chash
            known.arxiv_of[pid] = aid
            if aid:
                known.by_arxiv[aid] = pid
            known.by_title.setdefault(tk, []).append(pid)
    return known


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


@dataclass
class _Listed:
    """One file's listings in a :class:`_Listing`."""

    digest: DigestFile
    report: FileReport
    hash: Any = field(default_factory=hashlib.sha256)
    dates: Counter[date] = field(default_factory=Counter)
    entries: int = 0


class _Listing:
    """The listings of the digests one transaction writes (one file, or many small ones).

    A digest is identified by what it lists, not by its file name (two files both called
    papers.json are two digests): its entries in order, each with its arXiv id, title,
    abstract and listing date, hashed. That id is known only after a file's last entry, so
    the listings wait in a temporary table of the transaction (memory stays bounded
    whatever the file size, as DuckDB spills it) and reach ``digest_papers`` under their
    ids at the end, for all files at once.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
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
        if len(files) >= BATCH_SIZE:
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
        found = _with_table(
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
                for f, c in _with_table(
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
                    for (d,) in _with_table(
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
            _with_table(
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
                store.insert_arrow("digests", _table(new_rows, _digest_schema()))
            if reread:
                # A day read again: its size, date and bytes are those of the newest read.
                _with_table(
                    store,
                    _table(reread, _digest_schema()),
                    "UPDATE digests SET entries = r.entries, sha256 = r.sha256, "
                    "digest_date = r.digest_date FROM _papertag_rows r "
                    "WHERE digests.digest_id = r.digest_id",
                )
        con.execute(f"DROP TABLE {_LISTING}")


class _Papers:
    """The papers of one write's entries: matched against the database once, then each
    file in turn (a *segment*: one small file, or one batch of a large one), then written
    in a few statements by :meth:`flush`.

    Each segment is reported as if written alone, after the ones before it: a paper is new
    in the segment that first lists it, and updated in a later one that gives it another
    text, which is then kept in ``paper_versions`` as well.
    """

    def __init__(self, store: Store, segments: Sequence[Sequence[Entry]], now: datetime) -> None:
        self._store, self._now = store, now
        self._tkeys = [[title_key(e.title) for e in entries] for entries in segments]
        self._segments = segments
        known = _lookup(
            store,
            [e for entries in segments for e in entries],
            [tk for tkeys in self._tkeys for tk in tkeys],
        )
        self._by_arxiv, self._by_title = known.by_arxiv, known.by_title
        self._arxiv_of = known.arxiv_of
        self._cur_hash = dict(known.db_hash)  # each paper's text as of the entries seen so far
        self._new: dict[str, list[Any]] = {}  # papers this write adds, as rows
        self._updates: dict[str, tuple[str, str, str, str]] = {}  # known papers' newest text
        self._enrich: dict[str, list[Any]] = {}
        self._versions: list[tuple[str, str, str, str]] = []  # (id, title, abstract, hash)
        # The first text of new papers a later segment changed; the others' is their row's.
        self._first_text: dict[str, tuple[str, str, str, str]] = {}

    def add(self, segment: int, report: FileReport) -> tuple[list[str], list[str]]:
        """Match one segment's entries; returns the paper each entry is and its content
        hash, in order."""
        by_arxiv, by_title, arxiv_of, cur_hash = (
            self._by_arxiv,
            self._by_title,
            self._arxiv_of,
            self._cur_hash,
        )
        new, enrich, now = self._new, self._enrich, self._now
        added: dict[str, None] = {}  # papers new in this segment, in order
        base: dict[str, str] = {}  # text before this segment of the papers it changes
        changed: dict[str, tuple[str, str, str, str]] = {}
        link_pid: list[str] = []
        link_hash: list[str] = []
        entries = self._segments[segment]
        for e, tk in zip(entries, self._tkeys[segment], strict=True):
            chash = content_hash(e.title, e.abstract)
            aid = e.arxiv_id
            pid = by_arxiv.get(aid) if aid else None
            if pid is None:
                for cand in by_title.get(tk, ()):
                    # A title match is the same paper unless both sides know different arXiv ids.
                    cand_arxiv = arxiv_of[cand]
                    if aid is None or cand_arxiv is None or cand_arxiv == aid:
                        pid = cand
                        break
            fresh = False
            if pid is None:
                pid = make_paper_id(aid, tk)
                fresh = pid not in new
            if fresh:
                new[pid] = [
                    pid,
                    e.title,
                    e.abstract,
                    aid,
                    tk,
                    chash,
                    e.url,
                    e.published_at,
                    e.upvotes,
                    e.keywords,
                    now,
                    now,
                ]
                added[pid] = None
                cur_hash[pid] = chash
                # Later entries must find it.
                arxiv_of[pid] = aid
                by_title.setdefault(tk, []).insert(0, pid)
            else:
                if chash != cur_hash[pid]:
                    # A new paper's later text is its text; a text other than the one the
                    # segment started with is an update (back to that one: none).
                    if pid not in added:
                        start = base.setdefault(pid, cur_hash[pid])
                        if chash == start:
                            changed.pop(pid, None)
                        else:
                            changed[pid] = (pid, e.title, e.abstract, chash)
                        if pid in new and pid not in self._first_text:
                            row = new[pid]
                            self._first_text[pid] = (pid, row[_TITLE], row[_ABSTRACT], row[_HASH])
                    cur_hash[pid] = chash
                if pid in new:
                    row = new[pid]
                    row[_TITLE], row[_ABSTRACT], row[_HASH] = e.title, e.abstract, chash
                    if aid and not row[_ARXIV]:
                        row[_ARXIV] = arxiv_of[pid] = aid
                    for col, value in (
                        (_URL, e.url),
                        (_PUBLISHED, e.published_at),
                        (_UPVOTES, e.upvotes),
                        (_KEYWORDS, e.keywords),
                    ):
                        if value is not None:
                            row[col] = value
                elif (
                    (aid and not arxiv_of[pid])
                    or e.upvotes is not None
                    or e.keywords
                    or e.published_at
                    or e.url
                ):
                    prev = enrich.get(pid)
                    values = [pid, aid, e.url, e.published_at, e.upvotes, e.keywords or None]
                    if prev is not None:
                        values = [
                            v if v is not None else p for v, p in zip(values, prev, strict=True)
                        ]
                        values[1] = prev[1] or aid
                    enrich[pid] = values
                    if aid and not arxiv_of[pid]:
                        arxiv_of[pid] = aid
            if aid:
                by_arxiv.setdefault(aid, pid)
            link_pid.append(pid)
            link_hash.append(chash)
        # Every text a paper has had: a new paper's is its row's (see flush), a changed one's.
        for pid, update in changed.items():
            self._versions.append(update)
            if pid not in new:
                self._updates[pid] = update
        report.new_papers += len(added)
        report.updated_papers += len(changed)
        return link_pid, link_hash

    def flush(self) -> None:
        """Write what the segments added and changed."""
        store, now = self._store, self._now
        if self._new:
            table = _table(self._new.values(), _paper_schema())
            store.insert_arrow("papers", table)
            # A new paper's first text is its row's, unless a later segment changed it: taken
            # from the same Arrow table, not converted from Python strings a second time.
            versions = table.select(["paper_id", "title", "abstract", "content_hash"])
            if self._first_text:
                versions = versions.filter(pa.array([p not in self._first_text for p in self._new]))
            store.insert_arrow(
                "paper_versions",
                versions.append_column(
                    "seen_at", pa.array([now] * versions.num_rows, pa.timestamp("us"))
                ),
            )
        texts = [*self._first_text.values(), *self._versions]
        if texts:
            store.insert_arrow(
                "paper_versions", _table(((*v, now) for v in texts), _update_schema())
            )
        if self._updates:
            _with_table(
                store,
                _table(((*u, now) for u in self._updates.values()), _update_schema()),
                "UPDATE papers SET title = u.title, abstract = u.abstract, "
                "content_hash = u.content_hash, updated_at = u.seen_at "
                "FROM _papertag_rows u WHERE papers.paper_id = u.paper_id",
            )
        if self._enrich:
            # Only the rows it changes: a day's list read again carries the same upvotes and
            # keywords, and rewriting thousands of unchanged rows cost more than the rest.
            _with_table(
                store,
                _table(self._enrich.values(), _enrich_schema()),
                "UPDATE papers SET arxiv_id = coalesce(papers.arxiv_id, e.arxiv_id), url = coalesce(e.url, papers.url), "
                "published_at = coalesce(e.published_at, papers.published_at), upvotes = coalesce(e.upvotes, papers.upvotes), "
                "keywords = coalesce(e.keywords, papers.keywords) FROM _papertag_rows e WHERE papers.paper_id = e.paper_id "
                "AND ((papers.arxiv_id IS NULL AND e.arxiv_id IS NOT NULL) "
                "OR (e.url IS NOT NULL AND e.url IS DISTINCT FROM papers.url) "
                "OR (e.published_at IS NOT NULL AND e.published_at IS DISTINCT FROM papers.published_at) "
                "OR (e.upvotes IS NOT NULL AND e.upvotes IS DISTINCT FROM papers.upvotes) "
                "OR (e.keywords IS NOT NULL AND e.keywords IS DISTINCT FROM papers.keywords))",
            )


def _batches(entries: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    stream = iter(entries)
    while batch := list(itertools.islice(stream, size)):
        yield batch


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


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextlib.contextmanager
def _bulk_write(store: Store, *, compress: bool = True) -> Iterator[None]:
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
    now = _utcnow()
    count = 0
    with _bulk_write(store):
        listing = _Listing(store) if digest is not None else None
        if listing is not None and digest is not None:
            listing.start(digest, report)
        for batch in _batches(entries, BATCH_SIZE):
            count += len(batch)
            papers = _Papers(store, [batch], now)
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
    ``compress=False`` leaves the compression to one :func:`compress` after many writes.
    """
    now = _utcnow()
    with _bulk_write(store, compress=compress):
        if digests:
            papers = _Papers(store, [entries for _, entries, _ in digests], now)
            listing = _Listing(store)
            for segment, (digest, entries, report) in enumerate(digests):
                paper_ids, hashes = papers.add(segment, report)
                report.entries = len(entries)
                listing.start(digest, report)
                listing.add(entries, hashes, paper_ids)
            papers.flush()
            listing.write(now)
        if after is not None:
            after(store)


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

    Small files are read first and written together, up to :data:`BATCH_SIZE` entries a
    transaction: a transaction and its statements cost more than a day's list of papers
    (580 API files took 44 s one by one). A larger file is streamed in a transaction of
    its own. Each file is all-or-nothing: one that fails to read adds nothing, and the
    others still land. ``on_read`` sees each file's report once it is read (its error if
    it failed), ``on_file`` once it is final, in the order given. Returns an
    :class:`IngestReport`; check ``report.ok`` (the CLI exits non-zero when a file failed).
    """
    store = db if isinstance(db, Store) else Store(db)
    report = IngestReport()
    # Files read and not yet reported, in order, and their entries: those with a digest are
    # still to be written; a failed or streamed one has none.
    pending: list[tuple[DigestFile | None, list[Entry], FileReport]] = []
    size = 0

    def write_pending() -> None:
        nonlocal size
        todo = [(d, entries, fr) for d, entries, fr in pending if d is not None]
        if todo:
            write_digests(store, todo)
        for _, _, fr in pending:
            if on_file:
                on_file(fr)
        pending.clear()
        size = 0

    try:
        for path in paths:
            p = Path(path)
            fr = FileReport(path=str(p))
            report.files.append(fr)
            try:
                with Digest(p) as digest:
                    fr.format, fr.note = digest.format, digest.note
                    stream = digest.entries()
                    head = list(itertools.islice(stream, BATCH_SIZE + 1))
                    if len(head) > BATCH_SIZE:
                        # A large file: streamed, its memory bounded by a batch; the files
                        # before it land first, so reports stay in order.
                        write_pending()
                        write_entries(
                            store,
                            itertools.chain(head, stream),
                            digest=_digest_file(p, digest),
                            report=fr,
                        )
                        pending.append((None, [], fr))
                    else:
                        if size + len(head) > BATCH_SIZE:
                            write_pending()
                        pending.append((_digest_file(p, digest), head, fr))
                        size += len(head)
            except InputError as exc:
                # What a streamed file counted before its bad line was rolled back.
                fr = report.files[-1] = FileReport(path=str(p), error=str(exc))
                pending.append((None, [], fr))
            if on_read:
                on_read(fr)
        write_pending()
    finally:
        if not isinstance(db, Store):
            store.close()
    return report
