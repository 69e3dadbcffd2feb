"""CSV/TSV digests: a header naming a title and an abstract or summary column, the
delimiter sniffed from it; rows streamed."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InputError
from .entries import Entry
from .pagetext import SENTENCE_END
from .records import column_key, has_columns, record_entry

_DELIMITERS = (",", "\t", ";", "|")
#: Column names a list of papers may have, as :func:`column_key` spells them. A first line of
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


def _cells(line: str, delimiter: str) -> list[str]:
    return [c.strip() for c in next(csv.reader([line], delimiter=delimiter), [])]


def _csv_dialect(header: str) -> str:
    """The delimiter of a CSV/TSV file, sniffed from its header: the one that splits the
    header into the most known column names (then the most cells). The header, not the
    rows: abstracts are full of commas and semicolons, column names are not."""
    header = header.lstrip("\ufeff")

    def fit(delimiter: str) -> tuple[int, int]:
        cells = _cells(header, delimiter)
        return sum(column_key(c) in _KNOWN_COLUMNS for c in cells), len(cells)

    return max(_DELIMITERS, key=fit)


def looks_like_csv_header(first_line: str) -> bool:
    line = first_line.lstrip("\ufeff")
    if not any(d in line for d in _DELIMITERS):
        return False
    cells = [c for c in _cells(line, _csv_dialect(line)) if c]
    # Column names are a few words, never a sentence or a subtitle: a title such as
    # "Name, Date, and Source: ..." is page text.
    return sum(column_key(c) in _KNOWN_COLUMNS for c in cells) >= 2 and all(
        len(c) <= 64 and len(c.split()) <= 4 and ":" not in c and not SENTENCE_END.search(c)
        for c in cells
    )


def csv_entries(path: Path, lines: Iterable[str]) -> Iterator[Entry]:
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
        columns = [column_key(c) for c in header]
        end = skipped + reader.line_num
        missing = [
            (column, need)
            for (column, need), present in zip(
                (("title", "'title'"), ("abstract", "'abstract' or 'summary'")),
                has_columns(columns),
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
            yield record_entry(path, dict(zip(columns, row, strict=False)), n, start, "row")
    except csv.Error as exc:
        reason = f"malformed CSV: {exc}"
        if "field larger than field limit" in str(exc):
            reason = f"a cell is longer than {csv.field_size_limit():,} characters; not an abstract"
        raise InputError(path, reason, line=end + 1, kind="row") from None
