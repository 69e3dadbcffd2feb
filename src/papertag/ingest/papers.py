"""Which paper each entry is: matched against the database by arXiv id and title key,
then against the entries before it, and written as new papers, updates and versions."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from ..db import Store
from .bulk import arrow_schema, arrow_table, with_table
from .entries import Entry
from .identity import content_hash, make_paper_id, title_key
from .report import FileReport

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


#: The columns of new details of a known paper, and of a text a paper has had.
_ENRICH_FIELDS = ("paper_id", "arxiv_id", "url", "published_at", "upvotes", "keywords")
_VERSION_FIELDS = ("paper_id", "title", "abstract", "content_hash", "seen_at")


@functools.cache
def _schema(names: tuple[str, ...]) -> pa.Schema:
    return arrow_schema(
        names,
        published_at=pa.date32(),
        upvotes=pa.int32(),
        keywords=pa.list_(pa.string()),
        first_seen=pa.timestamp("us"),
        updated_at=pa.timestamp("us"),
        seen_at=pa.timestamp("us"),
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
        found = with_table(
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


class Papers:
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
            table = arrow_table(self._new.values(), _schema(_PAPER_FIELDS))
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
                "paper_versions", arrow_table(((*v, now) for v in texts), _schema(_VERSION_FIELDS))
            )
        if self._updates:
            with_table(
                store,
                arrow_table(((*u, now) for u in self._updates.values()), _schema(_VERSION_FIELDS)),
                "UPDATE papers SET title = u.title, abstract = u.abstract, "
                "content_hash = u.content_hash, updated_at = u.seen_at "
                "FROM _papertag_rows u WHERE papers.paper_id = u.paper_id",
            )
        if self._enrich:
            # Only the rows it changes: a day's list read again carries the same upvotes and
            # keywords, and rewriting thousands of unchanged rows cost more than the rest.
            with_table(
                store,
                arrow_table(self._enrich.values(), _schema(_ENRICH_FIELDS)),
                "UPDATE papers SET arxiv_id = coalesce(papers.arxiv_id, e.arxiv_id), url = coalesce(e.url, papers.url), "
                "published_at = coalesce(e.published_at, papers.published_at), upvotes = coalesce(e.upvotes, papers.upvotes), "
                "keywords = coalesce(e.keywords, papers.keywords) FROM _papertag_rows e WHERE papers.paper_id = e.paper_id "
                "AND ((papers.arxiv_id IS NULL AND e.arxiv_id IS NOT NULL) "
                "OR (e.url IS NOT NULL AND e.url IS DISTINCT FROM papers.url) "
                "OR (e.published_at IS NOT NULL AND e.published_at IS DISTINCT FROM papers.published_at) "
                "OR (e.upvotes IS NOT NULL AND e.upvotes IS DISTINCT FROM papers.upvotes) "
                "OR (e.keywords IS NOT NULL AND e.keywords IS DISTINCT FROM papers.keywords))",
            )
