"""JSON digests: a daily-papers API answer (every schema generation) or a list of
records, read whole; and JSON Lines, a record a line, streamed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import object_lines
from .entries import Entry, Parsed, check_entry, parse_date, short
from .identity import clean_text, parse_arxiv_id
from .records import has_columns, lower_keys, record_entry


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
            if all(has_columns(data)):
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
            has_title, has_abstract = has_columns(item)
            if not has_title or not has_abstract:
                raise InputError(
                    path,
                    "object has no 'title' and 'abstract'/'summary' keys (nor an HF 'paper' object)",
                    line=pos,
                    kind="item",
                )
            entries.append(record_entry(path, lower_keys(item), pos, pos, "item"))
    return Parsed(fmt, entries)


def jsonl_entries(path: Path, lines: Iterable[str]) -> Iterator[Entry]:
    for n, (lineno, rec) in enumerate(object_lines(path, lines), start=1):
        low = lower_keys(rec)
        if "title" not in low:
            raise InputError(path, "no 'title' key", line=lineno)
        if "abstract" not in low and "summary" not in low:
            raise InputError(path, "no 'abstract' or 'summary' key", line=lineno)
        yield record_entry(path, low, n, lineno, "line")
