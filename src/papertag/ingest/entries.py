"""One listing of a paper, as every format parses it, and the checks every entry passes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Longest abstract accepted; anything larger is not an abstract but a mistake.
MAX_ABSTRACT_CHARS = 1_000_000
#: Longest plausible title.
MAX_TITLE_CHARS = 1_000


@dataclass
class Entry:
    """One listing of a paper in a digest."""

    position: int
    where: int | None
    title: str
    abstract: str
    arxiv_id: str | None = None
    url: str | None = None
    listed_on: date | None = None
    published_at: date | None = None
    upvotes: int | None = None
    keywords: list[str] | None = None


@dataclass
class Parsed:
    format: str
    entries: list[Entry]
    note: str | None = None


#: A title that starts like a markup document (``<?xml``, ``<!DOCTYPE``, ``<html>``, a feed's
#: tags) is a file read as the wrong format. Other tags stay titles ("<think> ...").
_MARKUP_TITLE = re.compile(
    r"<(?:[?!]|/?(?:html|head|body|meta|script|style|div|span|p|table|feed|entry|rss"
    r"|channel|item|rdf:rdf)\b)",
    re.IGNORECASE,
)


def check_entry(path: Path, entry: Entry, kind: str) -> Entry:
    where = entry.where
    if not entry.title:
        raise InputError(path, "entry has no title", line=where, kind=kind)
    if entry.title[0] == "<" and _MARKUP_TITLE.match(entry.title):
        raise InputError(
            path,
            f"title {short(entry.title)!r} is markup: not a digest, or not one papertag reads",
            line=where,
            kind=kind,
        )
    if not entry.abstract:
        raise InputError(
            path, f"title {short(entry.title)!r} has no abstract", line=where, kind=kind
        )
    if len(entry.abstract) > MAX_ABSTRACT_CHARS:
        raise InputError(
            path,
            f"abstract of {short(entry.title)!r} is {len(entry.abstract):,} characters "
            f"(limit {MAX_ABSTRACT_CHARS:,}); this is not an abstract",
            line=where,
            kind=kind,
        )
    if len(entry.title) > MAX_TITLE_CHARS:
        raise InputError(
            path,
            f"title is {len(entry.title):,} characters long; not a title",
            line=where,
            kind=kind,
        )
    return entry


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_date(value: Any) -> date | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).date()
    except ValueError:
        try:
            return date.fromisoformat(str(value)[:10])
        except ValueError:
            return None
