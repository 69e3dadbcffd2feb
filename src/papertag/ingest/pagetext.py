"""Hugging Face "Daily Papers" page text: titles and abstracts on alternate lines, with or
without blank lines between them, among the page's chrome."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InputError
from .entries import MAX_TITLE_CHARS, Entry, check_entry, short
from .identity import clean_text

_CHROME = re.compile(
    r"^(?:new|subscribe|daily papers|get trending papers in your email inbox(?: once a day)?!?"
    r"|by ?ak and the research community|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}(?:, ?\d{4})?)$",
    re.IGNORECASE,
)
_GLUED_SUBSCRIBE = re.compile(r"^Subscribe(?=\S)")
_URL_ARTEFACT = re.compile(r"\{this URL\}")
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def _looks_like_abstract(line: str) -> bool:
    return len(line) >= 200 or bool(SENTENCE_END.search(line))


def page_text_entries(path: Path, lines: Iterable[str]) -> Iterator[Entry]:
    """Titles and abstracts on alternate content lines; chrome and blank lines skipped."""
    pending: tuple[int, str] | None = None  # a title waiting for its abstract
    first_content = True
    n = 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or (len(line) <= 64 and _CHROME.match(line)):
            continue
        if first_content:
            # The page's "Subscribe" button text is glued onto the first title.
            line = _GLUED_SUBSCRIBE.sub("", line)
            first_content = False
        if "{this URL}" in line:
            line = _URL_ARTEFACT.sub("", line)
        line = clean_text(line)
        if not line:
            continue
        if pending is None:
            pending = (lineno, line)
            continue
        t_line, title = pending
        pending = None
        if not _looks_like_abstract(line):
            raise InputError(path, f"title {short(title)!r} has no abstract", line=t_line)
        if len(title) > 300 and SENTENCE_END.search(title):
            raise InputError(path, "abstract without a title before it", line=t_line)
        n += 1
        yield check_entry(path, Entry(n, t_line, title, line), "line")
    if pending is not None:
        t_line, title = pending
        if _looks_like_abstract(title) and len(title) > MAX_TITLE_CHARS // 4:
            raise InputError(path, "text without a title before it", line=t_line)
        raise InputError(path, f"title {short(title)!r} has no abstract", line=t_line)
    if n == 0:
        raise InputError(path, "no papers found (only page chrome or blank lines)")
