"""Digest formats, detected from content, not the file name:

* Hugging Face "Daily Papers" page text (titles and abstracts on alternate
  lines, with or without blank lines between them, plus page chrome);
* Hugging Face daily-papers API JSON (every schema generation);
* JSONL, JSON lists of records, and CSV/TSV with a title and an abstract/summary column
  (the delimiter sniffed from the header);
* Atom and RSS feeds (the arXiv API's answers, arXiv's lists): see :mod:`papertag.ingest.feeds`,
  which also refuses other markup (HTML, other XML) in one line.

Page text, JSONL and CSV are streamed: entries are parsed in batches, so memory stays
bounded whatever the file size. A JSON document is one value and is read whole, and so
is a feed.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..errors import InputError
from .entries import (
    MAX_TITLE_CHARS,
    Entry,
    Parsed,
    check_entry,
    parse_date,
    short,
)
from .feeds import parse_markup
from .identity import clean_text, parse_arxiv_id

#: Bytes read at a time while checking a file's encoding.
_CHUNK = 1 << 20

# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

_LATIN1_NOTE = "not UTF-8 (byte offset {bad}); decoded as Windows-1252/Latin-1"


def _legacy_encoding(path: Path, head: bytes, bad: int) -> tuple[str, str]:
    """Not UTF-8: legacy 8-bit text (Windows-1252 / Latin-1) is decodable; binary is refused."""
    controls = sum(1 for b in head[:65536] if b < 9 or 13 < b < 32)
    if controls > 0:
        raise InputError(
            path,
            f"not a text file: invalid UTF-8 and control bytes (first bad byte at offset {bad})",
        )
    return "cp1252", _LATIN1_NOTE.format(bad=bad)


#: Content up to this size is decoded while it is checked and parsed from memory: reading
#: and decoding it a second time cost as much as parsing a day of the API.
_SMALL = 8 * _CHUNK


@dataclass
class _Scan:
    encoding: str
    note: str | None
    sha256: str
    text: str | None = None  # the decoded text of small UTF-8 content


class _Scanner:
    """Checks content a chunk at a time, without holding it in memory (unless small): its
    checksum and encoding; refuses empty, binary and undecodable content."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sha = hashlib.sha256()
        self._head = b""
        self._nonblank = False
        self._offset = 0  # bytes read so far
        self._pending = b""  # an incomplete UTF-8 sequence carried over to the next chunk
        self._bad: int | None = None  # offset of the first byte that is not UTF-8
        self._text: list[str] | None = []  # decoded so far, while small

    def feed(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        if not self._head:
            self._head = chunk[:65536]
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise InputError(
                self.path,
                f"not a text file: NUL byte at offset {self._offset + nul} (binary or corrupted file)",
            )
        self._nonblank = self._nonblank or bool(chunk.strip())
        if self._bad is None:
            data = self._pending + chunk
            try:
                text, used = codecs.utf_8_decode(data, "strict", False)
                self._pending = data[used:]
            except UnicodeDecodeError as exc:
                self._bad = self._offset - len(self._pending) + exc.start
                self._text = None
            else:
                if self._text is not None and self._offset + len(chunk) <= _SMALL:
                    self._text.append(text)
                else:
                    self._text = None
        self._offset += len(chunk)

    def finish(self) -> _Scan:
        """The encoding (UTF-8, else a legacy one to check with :func:`_legacy_encoding`)."""
        if not self._nonblank:
            raise InputError(self.path, "empty file")
        if self._bad is None and self._pending:
            self._bad = self._offset - len(self._pending)  # it ends inside a UTF-8 sequence
        if self._bad is None:
            text = "".join(self._text).removeprefix("\ufeff") if self._text is not None else None
            return _Scan("utf-8-sig", None, self._sha.hexdigest(), text)
        encoding, note = _legacy_encoding(self.path, self._head, self._bad)
        return _Scan(encoding, note, self._sha.hexdigest())


def _scan(path: Path) -> _Scan:
    """Check a file in one pass over its bytes (see :class:`_Scanner`)."""
    scanner = _Scanner(path)
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                scanner.feed(chunk)
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a digest file") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror}") from None
    scan = scanner.finish()
    if scan.encoding != "utf-8-sig":
        try:
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    chunk.decode("cp1252")  # single-byte: chunks decode independently
        except UnicodeDecodeError:
            scan.encoding = "latin-1"  # bytes Windows-1252 leaves undefined
        except OSError as exc:
            raise InputError(path, f"cannot read: {exc.strerror}") from None
    return scan


def _scan_bytes(path: Path, data: bytes) -> _Scan:
    """Check content already in memory (an API's answer) as :func:`_scan` checks a file."""
    scanner = _Scanner(path)
    scanner.feed(data)
    scan = scanner.finish()
    if scan.encoding != "utf-8-sig":
        try:
            scan.text = data.decode("cp1252")
        except UnicodeDecodeError:
            scan.encoding = "latin-1"  # bytes Windows-1252 leaves undefined
        if scan.text is None:
            scan.text = data.decode(scan.encoding)
    return scan


# ---------------------------------------------------------------------------
# Format: Hugging Face Daily Papers page text
# ---------------------------------------------------------------------------

_CHROME = re.compile(
    r"^(?:new|subscribe|daily papers|get trending papers in your email inbox(?: once a day)?!?"
    r"|by ?ak and the research community|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}(?:, ?\d{4})?)$",
    re.IGNORECASE,
)
_GLUED_SUBSCRIBE = re.compile(r"^Subscribe(?=\S)")
_URL_ARTEFACT = re.compile(r"\{this URL\}")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def _looks_like_abstract(line: str) -> bool:
    return len(line) >= 200 or bool(_SENTENCE_END.search(line))


def _page_text_entries(path: Path, lines: Iterable[str]) -> Iterator[Entry]:
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
        if len(title) > 300 and _SENTENCE_END.search(title):
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


# ---------------------------------------------------------------------------
# Format: JSON (HF daily-papers API, or a list of records) and JSONL
# ---------------------------------------------------------------------------


_RECORD_KEYS = frozenset({"title", "abstract", "summary", "id", "arxiv_id", "url", "link", "date"})


def _lower_keys(obj: dict[Any, Any]) -> dict[str, Any]:
    if obj.keys() <= _RECORD_KEYS:
        return obj  # already the canonical keys (the common case)
    return {_column(str(k)): v for k, v in obj.items()}


def _record_entry(path: Path, low: dict[str, Any], position: int, where: int, kind: str) -> Entry:
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


def _api_entry(path: Path, item: dict[str, Any], position: int) -> Entry:
    paper = item.get("paper")
    if not isinstance(paper, dict):
        raise InputError(path, "item has no 'paper' object", line=position, kind="item")
    kw = paper.get("ai_keywords")
    upvotes = paper.get("upvotes")
    arxiv = parse_arxiv_id(paper.get("id"))
    entry = Entry(
        position,
        position,
        clean_text(str(paper.get("title") or item.get("title") or "")),
        clean_text(str(paper.get("summary") or item.get("summary") or "")),
        arxiv_id=arxiv,
        url=f"https://arxiv.org/abs/{arxiv}" if arxiv else None,
        # The day of the daily list: `submittedOnDailyAt` in current schemas, where the
        # item's `publishedAt` is the arXiv date; older schemas only have the item's
        # `publishedAt`, and there it is the listing time.
        listed_on=parse_date(paper.get("submittedOnDailyAt") or item.get("publishedAt")),
        published_at=parse_date(paper.get("publishedAt")),
        upvotes=upvotes if isinstance(upvotes, int) else None,
        keywords=[str(k) for k in kw] if isinstance(kw, list) else None,
    )
    return check_entry(path, entry, "item")


def _has_columns(keys: Iterable[str]) -> tuple[bool, bool]:
    low = {_column(k) for k in keys}
    return "title" in low, bool(low & {"abstract", "summary"})


def parse_json(path: Path, text: str) -> Parsed:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno
        ) from None
    if isinstance(data, dict):
        for key in ("papers", "data", "items", "results"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            if all(_has_columns(data)):
                data = [data]
            elif "error" in data:
                raise InputError(
                    path,
                    f"JSON is an error response, not a digest: {short(str(data['error']), 100)!r}",
                )
            else:
                keys = ", ".join(list(data)[:8]) or "none"
                raise InputError(
                    path, f"JSON object is not a digest (no list of papers; keys: {keys})"
                )
    if not isinstance(data, list):
        raise InputError(
            path, f"JSON {type(data).__name__} is not a digest (expected a list of papers)"
        )
    if not data:
        raise InputError(path, "JSON list is empty: no papers")
    entries: list[Entry] = []
    fmt = "json"
    for pos, item in enumerate(data, start=1):
        if isinstance(item, str) and item.lstrip().startswith("{'"):
            raise InputError(
                path,
                "items are Python repr() strings, not JSON objects (a broken export); re-export as real JSON",
                line=pos,
                kind="item",
            )
        if not isinstance(item, dict):
            raise InputError(
                path, f"item is a {type(item).__name__}, expected an object", line=pos, kind="item"
            )
        if "paper" in item:
            fmt = "hf-api-json"
            entries.append(_api_entry(path, item, pos))
        else:
            has_title, has_abstract = _has_columns(item)
            if not has_title or not has_abstract:
                raise InputError(
                    path,
                    "object has no 'title' and 'abstract'/'summary' keys (nor an HF 'paper' object)",
                    line=pos,
                    kind="item",
                )
            entries.append(_record_entry(path, _lower_keys(item), pos, pos, "item"))
    return Parsed(fmt, entries)


def _jsonl_entries(path: Path, lines: Iterable[str]) -> Iterator[Entry]:
    n = 0
    for lineno, line in enumerate(lines, start=1):
        if not line or line.isspace():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=lineno) from None
        if not isinstance(rec, dict):
            raise InputError(
                path, f"line is a JSON {type(rec).__name__}, expected an object", line=lineno
            )
        low = _lower_keys(rec)
        if "title" not in low:
            raise InputError(path, "no 'title' key", line=lineno)
        if "abstract" not in low and "summary" not in low:
            raise InputError(path, "no 'abstract' or 'summary' key", line=lineno)
        n += 1
        yield _record_entry(path, low, n, lineno, "line")


# ---------------------------------------------------------------------------
# Format: CSV / TSV
# ---------------------------------------------------------------------------


_DELIMITERS = (",", "\t", ";", "|")
#: Column names a list of papers may have, as :func:`_column` spells them. A first line of
#: two or more of them (and nothing like a sentence) is a CSV header, whatever the file's
#: other columns are: so a CSV without the columns papertag needs says so, and is not
#: taken for page text.
_KNOWN_COLUMNS = frozenset(
    {
        *("title", "name", "abstract", "summary", "description", "url", "link", "pdf", "pdf_url"),
        *("id", "arxiv_id", "doi", "authors", "author", "date", "published", "published_at"),
        *("year", "venue", "category", "categories", "tags", "keywords", "upvotes", "comments"),
        *("notes", "note", "source"),
    }
)
#: Other spellings of the columns a record is read from (spreadsheets' "Paper Title").
_COLUMN_ALIASES = {
    "paper_title": "title",
    "paper_abstract": "abstract",
    "arxiv": "arxiv_id",
    "paper_url": "url",
    "paper_link": "link",
}
_WORD = re.compile(r"[a-z0-9]+")


def _column(name: str) -> str:
    """A column or key name folded: case, spaces, punctuation, BOM ("Paper Title" ->
    "title", "arXiv ID" -> "arxiv_id")."""
    key = "_".join(_WORD.findall(name.lower()))
    return _COLUMN_ALIASES.get(key, key)


def _cells(line: str, delimiter: str) -> list[str]:
    return [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]


def _csv_dialect(header: str) -> str:
    """The delimiter of a CSV/TSV file, sniffed from its header: the one that splits the
    header into the most known column names (then the most cells). The header, not the
    rows: abstracts are full of commas and semicolons, column names are not."""
    header = header.lstrip("\ufeff")

    def fit(delimiter: str) -> tuple[int, int]:
        cells = _cells(header, delimiter)
        return sum(_column(c) in _KNOWN_COLUMNS for c in cells), len(cells)

    return max(_DELIMITERS, key=fit)


def _looks_like_csv_header(first_line: str) -> bool:
    line = first_line.lstrip("\ufeff")
    if not any(d in line for d in _DELIMITERS):
        return False
    cells = [c for c in _cells(line, _csv_dialect(line)) if c]
    # Column names are a few words, never a sentence or a subtitle: a title such as
    # "Name, Date, and Source: ..." is page text.
    return sum(_column(c) in _KNOWN_COLUMNS for c in cells) >= 2 and all(
        len(c) <= 64 and len(c.split()) <= 4 and ":" not in c and not _SENTENCE_END.search(c)
        for c in cells
    )


def _csv_entries(path: Path, lines: Iterable[str]) -> Iterator[Entry]:
    """Rows of a CSV/TSV file; a row is named by the line it starts on (the header is 1)."""
    it = iter(lines)
    skipped = 0  # blank lines before the header
    first = ""
    for first in it:
        if first.strip():
            break
        skipped += 1
    reader = csv.reader(
        itertools.chain([first], it), delimiter=_csv_dialect(first.lstrip("\ufeff"))
    )
    end = skipped  # the last line of the previous record
    n = 0
    try:
        header = [c.strip() for c in next(reader, [])]
        columns = [_column(c) for c in header]
        end = skipped + reader.line_num
        missing = [
            (column, need)
            for (column, need), present in zip(
                (("title", "'title'"), ("abstract", "'abstract' or 'summary'")),
                _has_columns(columns),
                strict=True,
            )
            if not present
        ]
        if missing:
            raise InputError(
                path,
                f"CSV has no {' and no '.join(c for c, _ in missing)} column (need "
                f"{' and '.join(n for _, n in missing)}); columns: {', '.join(header)}",
                line=end,
                kind="row",
            )
        for row in reader:
            start, end = end + 1, skipped + reader.line_num
            if not row:
                continue
            if len(row) > len(columns):
                raise InputError(path, "more cells than header columns", line=start, kind="row")
            if not any(v.strip() for v in row):
                continue
            n += 1
            yield _record_entry(path, dict(zip(columns, row, strict=False)), n, start, "row")
    except csv.Error as exc:
        reason = f"malformed CSV: {exc}"
        if "field larger than field limit" in str(exc):
            reason = f"a cell is longer than {csv.field_size_limit():,} characters; not an abstract"
        raise InputError(path, reason, line=end + 1, kind="row") from None


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------

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
    if _looks_like_csv_header(first.split("\n", 1)[0]):
        return "csv", head
    return "page-text", head


_STREAMS: dict[str, Callable[[Path, Iterable[str]], Iterator[Entry]]] = {
    "jsonl": _jsonl_entries,
    "csv": _csv_entries,
    "page-text": _page_text_entries,
}


class Digest:
    """A digest file, checked and open: its format, note and checksum now, its entries as
    a stream (:meth:`entries`). Use as a context manager."""

    def __init__(self, path: str | Path, data: bytes | None = None) -> None:
        """``data`` is the content when it is not read from a file (an API's answer):
        ``path`` then only names it in errors."""
        self.path = Path(path)
        scan = _scan(self.path) if data is None else _scan_bytes(self.path, data)
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
