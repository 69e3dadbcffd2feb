"""A record of named fields (a JSON object, a CSV row) as an :class:`Entry`: its column
names folded to one spelling, a title and an abstract or summary read from them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .entries import Entry, check_entry, parse_date
from .identity import clean_text, parse_arxiv_id

#: Other spellings of the columns a record is read from (spreadsheets' "Paper Title").
_COLUMN_ALIASES = {
    "paper_title": "title",
    "paper_abstract": "abstract",
    "arxiv": "arxiv_id",
    "paper_url": "url",
    "paper_link": "link",
}
_WORD = re.compile(r"[a-z0-9]+")


def column_key(name: str) -> str:
    """A column or key name folded: case, spaces, punctuation, BOM ("Paper Title" ->
    "title", "arXiv ID" -> "arxiv_id")."""
    key = "_".join(_WORD.findall(name.lower()))
    return _COLUMN_ALIASES.get(key, key)


_RECORD_KEYS = frozenset({"title", "abstract", "summary", "id", "arxiv_id", "url", "link", "date"})


def lower_keys(obj: dict[Any, Any]) -> dict[str, Any]:
    if obj.keys() <= _RECORD_KEYS:
        return obj  # already the canonical keys (the common case)
    return {column_key(str(k)): v for k, v in obj.items()}


def has_columns(keys: Iterable[str]) -> tuple[bool, bool]:
    low = {column_key(k) for k in keys}
    return "title" in low, bool(low & {"abstract", "summary"})


def record_entry(path: Path, low: dict[str, Any], position: int, where: int, kind: str) -> Entry:
    """A generic record (JSONL/CSV/JSON list), keys already lower-cased, with title +
    abstract|summary columns."""
    title = clean_text(str(low.get("title") or ""))
    abstract_val = (
        low.get("abstract") if low.get("abstract") not in (None, "") else low.get("summary")
    )
    abstract = clean_text(str(abstract_val or ""))
    # A spreadsheet's "Link" column is the same thing as a record's url.
    url_val = low.get("url") or low.get("link")
    url = str(url_val).strip() if url_val else None
    arxiv = parse_arxiv_id(low.get("arxiv_id")) or parse_arxiv_id(low.get("id"))
    if arxiv is None and url and ("arxiv.org" in url or "huggingface.co/papers" in url):
        arxiv = parse_arxiv_id(url)
    entry = Entry(
        position,
        where,
        title,
        abstract,
        arxiv_id=arxiv,
        url=url,
        listed_on=parse_date(low.get("date")),
    )
    return check_entry(path, entry, kind)
