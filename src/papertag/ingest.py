"""Ingest digests into the store: detect the format, parse, dedupe, write.

Formats are detected from content, not the file name:

* Hugging Face "Daily Papers" page text (titles and abstracts on alternate
  lines, with or without blank lines between them, plus page chrome);
* Hugging Face daily-papers API JSON (every schema generation);
* JSONL, JSON lists of records, and CSV with a title and an abstract/summary column.

A paper is one row however many digests list it: it is keyed on its arXiv id
when known, otherwise on a normalised title. Each file is written in one
transaction, so a bad file adds nothing while good files beside it still land.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import InputError
from .store import Store

#: Longest abstract accepted; anything larger is not an abstract but a mistake.
MAX_ABSTRACT_CHARS = 1_000_000
#: Longest plausible title.
MAX_TITLE_CHARS = 1_000
#: Entries written per batch; bounds memory whatever the file size.
BATCH_SIZE = 20_000

# ---------------------------------------------------------------------------
# Normalisation and identity
# ---------------------------------------------------------------------------

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ARXIV_NEW = re.compile(r"(?<![\d.])(\d{4}\.\d{4,5})(?:v\d+)?(?![\d])")
_ARXIV_OLD = re.compile(r"\b([a-z][a-z\-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?\b")


def clean_text(text: str) -> str:
    """Collapse whitespace (arXiv line wraps) and drop stray control characters."""
    return _WS.sub(" ", _CONTROL.sub(" ", text)).strip()


def title_key(title: str) -> str:
    """Normalised title used for identity: case, whitespace and punctuation folded."""
    folded = unicodedata.normalize("NFKC", title).casefold()
    return _WS.sub(" ", _PUNCT.sub(" ", folded)).strip()


def parse_arxiv_id(value: Any) -> str | None:
    """An arXiv id (without version) from an id, ``arXiv:`` string or URL, else None."""
    if value is None:
        return None
    text = str(value).strip()
    m = _ARXIV_NEW.search(text) or _ARXIV_OLD.search(text)
    return m.group(1) if m else None


def content_hash(title: str, abstract: str) -> str:
    return hashlib.sha256(f"{title}\n{abstract}".encode()).hexdigest()[:16]


def _paper_id(arxiv_id: str | None, tkey: str) -> str:
    key = f"arxiv:{arxiv_id}" if arxiv_id else f"title:{tkey}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------
# Parsed entries
# ---------------------------------------------------------------------------


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


def _check_entry(path: Path, entry: Entry, kind: str) -> Entry:
    where = entry.where
    if not entry.title:
        raise InputError(path, "entry has no title", line=where, kind=kind)
    if not entry.abstract:
        raise InputError(
            path, f"title {_short(entry.title)!r} has no abstract", line=where, kind=kind
        )
    if len(entry.abstract) > MAX_ABSTRACT_CHARS:
        raise InputError(
            path,
            f"abstract of {_short(entry.title)!r} is {len(entry.abstract):,} characters "
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


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def decode(path: Path, data: bytes) -> tuple[str, str | None]:
    """Bytes to text; returns (text, note). Refuses binary and empty files."""
    if not data.strip():
        raise InputError(path, "empty file")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(
            path, f"not a text file: NUL byte at offset {nul} (binary or corrupted file)"
        )
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        bad = exc.start
    # Not UTF-8. Legacy 8-bit text (Latin-1 / Windows-1252) is decodable; anything with
    # many control bytes is binary.
    controls = sum(1 for b in data[:65536] if b < 9 or 13 < b < 32)
    if controls > 0:
        raise InputError(
            path,
            f"not a text file: invalid UTF-8 and control bytes (first bad byte at offset {bad})",
        )
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text, f"not UTF-8 (byte offset {bad}); decoded as Windows-1252/Latin-1"


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


def parse_page_text(path: Path, text: str) -> Parsed:
    lines: list[tuple[int, str]] = []
    first_content = True
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or _CHROME.match(line):
            continue
        if first_content:
            # The page's "Subscribe" button text is glued onto the first title.
            line = _GLUED_SUBSCRIBE.sub("", line)
            first_content = False
        line = clean_text(_URL_ARTEFACT.sub("", line))
        if line:
            lines.append((lineno, line))
    if not lines:
        raise InputError(path, "no papers found (only page chrome or blank lines)")
    entries: list[Entry] = []
    i = 0
    while i < len(lines):
        t_line, title = lines[i]
        if i + 1 >= len(lines):
            if _looks_like_abstract(title) and len(title) > MAX_TITLE_CHARS // 4:
                raise InputError(path, "text without a title before it", line=t_line)
            raise InputError(path, f"title {_short(title)!r} has no abstract", line=t_line)
        abstract = lines[i + 1][1]
        if not _looks_like_abstract(abstract):
            raise InputError(path, f"title {_short(title)!r} has no abstract", line=t_line)
        if len(title) > 300 and _SENTENCE_END.search(title):
            raise InputError(path, "abstract without a title before it", line=t_line)
        entries.append(_check_entry(path, Entry(len(entries) + 1, t_line, title, abstract), "line"))
        i += 2
    return Parsed("page-text", entries)


# ---------------------------------------------------------------------------
# Format: JSON (HF daily-papers API, or a list of records) and JSONL
# ---------------------------------------------------------------------------


def _date(value: Any) -> date | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).date()
    except ValueError:
        try:
            return date.fromisoformat(str(value)[:10])
        except ValueError:
            return None


def _lower_keys(obj: dict[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in obj.items()}


def _record_entry(path: Path, rec: dict[str, Any], position: int, where: int, kind: str) -> Entry:
    """A generic record (JSONL/CSV/JSON list) with title + abstract|summary columns."""
    low = _lower_keys(rec)
    title = clean_text(str(low.get("title") or ""))
    abstract_val = (
        low.get("abstract") if low.get("abstract") not in (None, "") else low.get("summary")
    )
    abstract = clean_text(str(abstract_val or ""))
    url = str(low["url"]).strip() if low.get("url") else None
    arxiv = parse_arxiv_id(low.get("arxiv_id")) or parse_arxiv_id(low.get("id"))
    if arxiv is None and url and ("arxiv.org" in url or "huggingface.co/papers" in url):
        arxiv = parse_arxiv_id(url)
    entry = Entry(
        position, where, title, abstract, arxiv_id=arxiv, url=url, listed_on=_date(low.get("date"))
    )
    return _check_entry(path, entry, kind)


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
        listed_on=_date(item.get("publishedAt")),
        published_at=_date(paper.get("publishedAt")),
        upvotes=upvotes if isinstance(upvotes, int) else None,
        keywords=[str(k) for k in kw] if isinstance(kw, list) else None,
    )
    return _check_entry(path, entry, "item")


def _has_columns(keys: Iterable[str]) -> tuple[bool, bool]:
    low = {k.strip().lower() for k in keys}
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
                    f"JSON is an error response, not a digest: {_short(str(data['error']), 100)!r}",
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
            entries.append(_record_entry(path, item, pos, pos, "item"))
    return Parsed(fmt, entries)


def parse_jsonl(path: Path, text: str) -> Parsed:
    entries: list[Entry] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=lineno) from None
        if not isinstance(rec, dict):
            raise InputError(
                path, f"line is a JSON {type(rec).__name__}, expected an object", line=lineno
            )
        has_title, has_abstract = _has_columns(rec)
        if not has_title:
            raise InputError(path, "no 'title' key", line=lineno)
        if not has_abstract:
            raise InputError(path, "no 'abstract' or 'summary' key", line=lineno)
        entries.append(_record_entry(path, rec, len(entries) + 1, lineno, "line"))
    return Parsed("jsonl", entries)


# ---------------------------------------------------------------------------
# Format: CSV / TSV
# ---------------------------------------------------------------------------


def _csv_dialect(header: str) -> str:
    counts = {d: header.count(d) for d in (",", "\t", ";")}
    return max(counts, key=lambda d: counts[d])


def _looks_like_csv_header(first_line: str) -> bool:
    if not any(d in first_line for d in (",", "\t", ";")):
        return False
    cells = next(csv.reader([first_line], delimiter=_csv_dialect(first_line)))
    return any(c.strip().lower() == "title" for c in cells)


def parse_csv(path: Path, text: str) -> Parsed:
    first = text.lstrip("\ufeff").split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_csv_dialect(first))
    columns = reader.fieldnames or []
    has_abstract = _has_columns(columns)[1]
    if not has_abstract:
        raise InputError(
            path,
            f"CSV has no abstract column (need 'abstract' or 'summary'); columns: {', '.join(columns)}",
            line=1,
            kind="row",
        )
    entries: list[Entry] = []
    try:
        for row in reader:
            rowno = reader.line_num
            if None in row:
                raise InputError(path, "more cells than header columns", line=rowno, kind="row")
            if not any((v or "").strip() for v in row.values()):
                continue
            entries.append(_record_entry(path, row, len(entries) + 1, rowno, "row"))
    except csv.Error as exc:
        raise InputError(path, f"malformed CSV: {exc}", line=reader.line_num, kind="row") from None
    return Parsed("csv", entries)


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------


def detect_format(text: str) -> str:
    """One of ``json``, ``jsonl``, ``csv``, ``page-text``, decided from the content."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        # One JSON object is a JSON document (maybe an error body); several lines of them are JSONL.
        try:
            json.loads(stripped)
            return "json"
        except json.JSONDecodeError:
            return "jsonl"
    if _looks_like_csv_header(stripped.split("\n", 1)[0]):
        return "csv"
    return "page-text"


_PARSERS: dict[str, Callable[[Path, str], Parsed]] = {
    "json": parse_json,
    "jsonl": parse_jsonl,
    "csv": parse_csv,
    "page-text": parse_page_text,
}


def parse_file(path: str | Path) -> Parsed:
    """Read and parse one digest file; raises :class:`InputError` naming the file and line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise InputError(p, "is a directory, not a digest file") from None
    except OSError as exc:
        raise InputError(p, f"cannot read: {exc.strerror}") from None
    text, note = decode(p, data)
    parsed = _PARSERS[detect_format(text)](p, text)
    if not parsed.entries:
        raise InputError(p, "no papers found")
    parsed.note = note
    return parsed


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


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


_PAPER_SCHEMA = pa.schema(
    [
        ("paper_id", pa.string()),
        ("title", pa.string()),
        ("abstract", pa.string()),
        ("arxiv_id", pa.string()),
        ("title_key", pa.string()),
        ("content_hash", pa.string()),
        ("url", pa.string()),
        ("published_at", pa.date32()),
        ("upvotes", pa.int32()),
        ("keywords", pa.list_(pa.string())),
        ("first_seen", pa.timestamp("us")),
        ("updated_at", pa.timestamp("us")),
    ]
)


def _lookup(
    store: Store, entries: Sequence[Entry], tkeys: list[str]
) -> tuple[dict[str, tuple[str, str]], dict[str, list[tuple[str, str, str | None]]]]:
    """Existing papers matching a batch: by arXiv id and by title key."""
    arxiv_ids = sorted({e.arxiv_id for e in entries if e.arxiv_id})
    by_arxiv: dict[str, tuple[str, str]] = {}
    if arxiv_ids:
        probe = pa.table({"arxiv_id": arxiv_ids})
        store.con.register("_probe", probe)
        for pid, aid, chash in store.con.execute(
            "SELECT p.paper_id, p.arxiv_id, p.content_hash FROM papers p JOIN _probe USING (arxiv_id)"
        ).fetchall():
            by_arxiv[aid] = (pid, chash)
        store.con.unregister("_probe")
    by_title: dict[str, list[tuple[str, str, str | None]]] = {}
    probe = pa.table({"title_key": sorted(set(tkeys))})
    store.con.register("_probe", probe)
    for pid, tk, chash, aid in store.con.execute(
        "SELECT p.paper_id, p.title_key, p.content_hash, p.arxiv_id FROM papers p JOIN _probe USING (title_key)"
    ).fetchall():
        by_title.setdefault(tk, []).append((pid, chash, aid))
    store.con.unregister("_probe")
    return by_arxiv, by_title


def _write_batch(
    store: Store, digest_id: str | None, entries: Sequence[Entry], report: FileReport, now: datetime
) -> None:
    tkeys = [title_key(e.title) for e in entries]
    by_arxiv, by_title = _lookup(store, entries, tkeys)
    new: dict[str, dict[str, Any]] = {}
    updates: dict[str, dict[str, Any]] = {}
    enrich: dict[str, dict[str, Any]] = {}
    links: list[tuple[int, str, date | None]] = []
    for e, tk in zip(entries, tkeys, strict=True):
        chash = content_hash(e.title, e.abstract)
        pid: str | None = None
        old_hash: str | None = None
        old_arxiv: str | None = None
        if e.arxiv_id and e.arxiv_id in by_arxiv:
            pid, old_hash = by_arxiv[e.arxiv_id]
            old_arxiv = e.arxiv_id
        else:
            for cand_pid, cand_hash, cand_arxiv in by_title.get(tk, []):
                # A title match is the same paper unless both sides know different arXiv ids.
                if e.arxiv_id is None or cand_arxiv is None or cand_arxiv == e.arxiv_id:
                    pid, old_hash, old_arxiv = cand_pid, cand_hash, cand_arxiv
                    break
        if pid is None:
            pid = _paper_id(e.arxiv_id, tk)
            row = {
                "paper_id": pid,
                "title": e.title,
                "abstract": e.abstract,
                "arxiv_id": e.arxiv_id,
                "title_key": tk,
                "content_hash": chash,
                "url": e.url,
                "published_at": e.published_at,
                "upvotes": e.upvotes,
                "keywords": e.keywords,
                "first_seen": now,
                "updated_at": now,
            }
            if pid in new:
                # Seen earlier in this batch: the later listing carries the newest text.
                row["first_seen"] = new[pid]["first_seen"]
            new[pid] = row
            # Later entries of this batch must find it.
            if e.arxiv_id:
                by_arxiv[e.arxiv_id] = (pid, chash)
            by_title.setdefault(tk, []).insert(0, (pid, chash, e.arxiv_id))
        elif pid in new:
            new[pid].update(title=e.title, abstract=e.abstract, content_hash=chash)
        else:
            if old_hash != chash:
                updates[pid] = {
                    "paper_id": pid,
                    "title": e.title,
                    "abstract": e.abstract,
                    "content_hash": chash,
                }
                if e.arxiv_id:
                    by_arxiv[e.arxiv_id] = (pid, chash)
            if (
                (e.arxiv_id and not old_arxiv)
                or e.upvotes is not None
                or e.keywords
                or e.published_at
                or e.url
            ):
                enrich[pid] = {
                    "paper_id": pid,
                    "arxiv_id": e.arxiv_id,
                    "url": e.url,
                    "published_at": e.published_at,
                    "upvotes": e.upvotes,
                    "keywords": e.keywords,
                }
        links.append((e.position, pid, e.listed_on))

    if new:
        table = pa.Table.from_pylist(list(new.values()), schema=_PAPER_SCHEMA)
        store.insert_arrow("papers", table)
        store.insert_arrow(
            "paper_versions",
            table.select(["paper_id", "content_hash", "title", "abstract"]).append_column(
                "seen_at", pa.array([now] * table.num_rows, pa.timestamp("us"))
            ),
        )
        report.new_papers += len(new)
    if updates:
        upd = pa.Table.from_pylist(list(updates.values()))
        store.con.register("_upd", upd)
        store.con.execute(
            "UPDATE papers SET title = u.title, abstract = u.abstract, content_hash = u.content_hash, "
            "updated_at = ? FROM _upd u WHERE papers.paper_id = u.paper_id",
            [now],
        )
        store.con.execute(
            "INSERT INTO paper_versions SELECT paper_id, content_hash, title, abstract, ? FROM _upd",
            [now],
        )
        store.con.unregister("_upd")
        report.updated_papers += len(updates)
    if enrich:
        enr = pa.Table.from_pylist(
            list(enrich.values()),
            schema=pa.schema(
                [
                    ("paper_id", pa.string()),
                    ("arxiv_id", pa.string()),
                    ("url", pa.string()),
                    ("published_at", pa.date32()),
                    ("upvotes", pa.int32()),
                    ("keywords", pa.list_(pa.string())),
                ]
            ),
        )
        store.con.register("_enr", enr)
        store.con.execute(
            "UPDATE papers SET arxiv_id = coalesce(papers.arxiv_id, e.arxiv_id), url = coalesce(e.url, papers.url), "
            "published_at = coalesce(e.published_at, papers.published_at), upvotes = coalesce(e.upvotes, papers.upvotes), "
            "keywords = coalesce(e.keywords, papers.keywords) FROM _enr e WHERE papers.paper_id = e.paper_id"
        )
        store.con.unregister("_enr")
    if digest_id is None:
        return
    link_table = pa.table(
        {
            "digest_id": pa.array([digest_id] * len(links), pa.string()),
            "position": pa.array([p for p, _, _ in links], pa.int32()),
            "paper_id": pa.array([pid for _, pid, _ in links], pa.string()),
            "listed_on": pa.array([d for _, _, d in links], pa.date32()),
        }
    )
    store.con.register("_links", link_table)
    added = store.scalar(
        "SELECT count(*) FROM _links l ANTI JOIN digest_papers d USING (digest_id, position)"
    )
    store.con.execute(
        "INSERT INTO digest_papers SELECT l.* FROM _links l ANTI JOIN digest_papers d USING (digest_id, position)"
    )
    store.con.unregister("_links")
    report.new_links += int(added)
    report.unchanged += len(links) - int(added)


def _chunks(entries: list[Entry], size: int) -> Iterator[list[Entry]]:
    for i in range(0, len(entries), size):
        yield entries[i : i + size]


def write_entries(
    store: Store,
    entries: list[Entry],
    *,
    digest: tuple[str, str, str] | None,
    report: FileReport,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Write parsed entries in one transaction. ``digest`` is (source, format, sha256) or None for no links."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with store.transaction():
        digest_id = None
        if digest is not None:
            source, fmt, sha = digest
            digest_id = source
            dates = Counter(e.listed_on for e in entries if e.listed_on)
            store.con.execute(
                "INSERT INTO digests VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest_id) DO NOTHING",
                [
                    digest_id,
                    source,
                    fmt,
                    dates.most_common(1)[0][0] if dates else None,
                    sha,
                    len(entries),
                    now,
                ],
            )
        for chunk in _chunks(entries, BATCH_SIZE):
            _write_batch(store, digest_id, chunk, report, now)
            if on_batch:
                on_batch(len(chunk))


def ingest_file(
    store: Store, path: str | Path, *, on_batch: Callable[[int], None] | None = None
) -> FileReport:
    """Parse and write one file; a bad file raises :class:`InputError` and writes nothing."""
    p = Path(path)
    report = FileReport(path=str(p))
    parsed = parse_file(p)
    report.format, report.entries, report.note = parsed.format, len(parsed.entries), parsed.note
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    write_entries(
        store, parsed.entries, digest=(p.name, parsed.format, sha), report=report, on_batch=on_batch
    )
    return report


def ingest(
    paths: Iterable[str | Path],
    db: Store | str | Path | None = None,
    *,
    on_file: Callable[[FileReport], None] | None = None,
) -> IngestReport:
    """Ingest digest files into the database; a bad file is reported and skipped.

    Each file lands in its own transaction. Returns an :class:`IngestReport`;
    check ``report.ok`` (the CLI exits non-zero when any file failed).
    """
    store = db if isinstance(db, Store) else Store(db)
    report = IngestReport()
    try:
        for path in paths:
            try:
                fr = ingest_file(store, path)
            except InputError as exc:
                fr = FileReport(path=str(path), error=str(exc))
            report.files.append(fr)
            if on_file:
                on_file(fr)
    finally:
        if not isinstance(db, Store):
            store.close()
    return report
