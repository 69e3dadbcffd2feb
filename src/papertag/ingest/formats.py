"""Digest formats, detected from content, not the file name:

* Hugging Face "Daily Papers" page text (:mod:`.pagetext`);
* Hugging Face daily-papers API JSON, JSON lists of records, and JSONL (:mod:`.jsonfmt`);
* CSV/TSV with a title and an abstract/summary column (:mod:`.delimited`);
* Atom and RSS feeds (the arXiv API's answers, arXiv's lists): see :mod:`papertag.ingest.feeds`,
  which also refuses other markup (HTML, other XML) in one line.

Page text, JSONL and CSV are streamed: entries are parsed in batches, so memory stays
bounded whatever the file size. A JSON document is one value and is read whole, and so
is a feed.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from ..errors import InputError
from .delimited import csv_entries, looks_like_csv_header
from .entries import Entry, Parsed
from .feeds import parse_markup
from .jsonfmt import jsonl_entries, parse_json
from .pagetext import page_text_entries
from .scan import scan_bytes, scan_file

_LEADING = "\ufeff \t\r\n"
#: A first line that starts a markup document: a declaration, or a tag followed by another
#: tag or by the end of the line. A title that opens with a tag and goes on in words
#: ("<think> So let's ...", a real arXiv title) is still page text.
_MARKUP_START = re.compile(
    r"<(?:[?!]|[A-Za-z][\w.:-]*(?:\s[^<>]*)?(?:/?>\s*(?:<|$)|$))", re.MULTILINE
)


def _sniff(fh: IO[str]) -> tuple[str, list[str]]:
    """The format, from the first non-blank line (more only for a JSON object); returns it
    and the lines read so far, which the parser must see again."""
    head: list[str] = []
    first = ""
    for line in fh:
        head.append(line)
        first = line.lstrip(_LEADING)
        if first:
            break
    if _MARKUP_START.match(first):
        # XML or HTML: a feed, or a one-line "not a digest" (never page text: markup
        # would become titles).
        return "markup", head
    if first.startswith("["):
        return "json", head
    if first.startswith("{"):
        # One JSON object is a JSON document (maybe an error body); several lines of them are JSONL.
        try:
            json.loads(first)
        except json.JSONDecodeError:
            # Not one object per line: either a pretty-printed document or broken JSONL.
            text = "".join(head) + fh.read()
            try:
                json.loads(text)
                return "json", [text]
            except json.JSONDecodeError:
                return "jsonl", list(io.StringIO(text, newline=""))
        for line in fh:
            head.append(line)
            if line.strip(_LEADING):
                return "jsonl", head
        return "json", head
    if looks_like_csv_header(first.split("\n", 1)[0]):
        return "csv", head
    return "page-text", head


_STREAMS: dict[str, Callable[[Path, Iterable[str]], Iterator[Entry]]] = {
    "jsonl": jsonl_entries,
    "csv": csv_entries,
    "page-text": page_text_entries,
}


class Digest:
    """A digest file, checked and open: its format, note and checksum now, its entries as
    a stream (:meth:`entries`). Use as a context manager."""

    def __init__(self, path: str | Path, data: bytes | None = None) -> None:
        """``data`` is the content when it is not read from a file (an API's answer):
        ``path`` then only names it in errors."""
        self.path = Path(path)
        scan = scan_file(self.path) if data is None else scan_bytes(self.path, data)
        self.note, self.sha256 = scan.note, scan.sha256
        self._parsed: Parsed | None = None
        self._fh: IO[str]
        if scan.text is not None:
            self._fh = io.StringIO(scan.text, newline="")
        else:
            try:
                self._fh = self.path.open(encoding=scan.encoding, newline="")
            except OSError as exc:
                raise InputError(self.path, f"cannot read: {exc.strerror}") from None
        try:
            self.format, head = _sniff(self._fh)
            self._lines = itertools.chain(head, self._fh)
            if self.format == "json":
                # One JSON value: read whole (API responses are small), in one read: line
                # by line would take as long as parsing it.
                self._parsed = parse_json(self.path, "".join(head) + self._fh.read())
                self.format = self._parsed.format
            elif self.format == "markup":
                # One XML document, read whole like JSON (a feed is a page of results).
                self._parsed = parse_markup(self.path, "".join(head) + self._fh.read())
                self.format = self._parsed.format
        except BaseException:
            self._fh.close()
            raise

    def entries(self) -> Iterator[Entry]:
        """Entries one by one; raises :class:`InputError` at the first bad one."""
        if self._parsed is not None:
            yield from self._parsed.entries
            return
        empty = True
        for entry in _STREAMS[self.format](self.path, self._lines):
            empty = False
            yield entry
        if empty:
            raise InputError(self.path, "no papers found")

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> Digest:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def parse_file(path: str | Path) -> Parsed:
    """Read and parse one digest file; raises :class:`InputError` naming the file and line."""
    with Digest(path) as digest:
        entries = list(digest.entries())
        return Parsed(digest.format, entries, digest.note)
