"""Feeds as digests: Atom (the arXiv API's answers) and RSS (arXiv's daily lists).

A file that starts like markup (``<?xml``, ``<!DOCTYPE``, a tag) comes here, read whole
(a feed is one document, like a JSON one). Atom and RSS become entries; anything else is
refused in one line saying what it looks like (HTML, some other XML), so markup never
becomes a paper.

XML is parsed with the standard library's ElementTree, after refusing any DOCTYPE:
entities are declared only there, so without one nothing can expand without bound
("billion laughs") or point outside the file. Feeds have no DOCTYPE.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import date
from email.utils import parsedate_to_datetime
from pathlib import Path
from xml.etree import ElementTree as ET

from ..errors import InputError
from .entries import Entry, Parsed, check_entry, parse_date, short
from .identity import clean_text, parse_arxiv_id

#: What may come before the root element besides whitespace: the XML declaration,
#: processing instructions and comments. A declaration (``<!DOCTYPE``) is refused.
_PROLOG_ITEM = re.compile(r"\s*(?:<\?.*?\?>|<!--.*?-->)", re.S)
_ROOT = re.compile(r"<([A-Za-z_][\w.:-]*)")
_HTML_ROOTS = frozenset({"html", "head", "body", "div", "p", "table", "span"})
#: Tags of the HTML an RSS description or an Atom ``type="html"`` text may carry. Only
#: these are taken out: an abstract's own "<" (as in "a < b") is text, not a tag.
_HTML_TAG = re.compile(
    r"</?(?:(p|br|div|ul|ol|li)|a|b|i|u|em|strong|sub|sup|span|code|tt|small|big)\b[^<>]*>",
    re.IGNORECASE,
)
#: arXiv's RSS puts the id and the announcement type before the abstract.
_ARXIV_RSS_PREFIX = re.compile(
    r"^\s*arXiv:(\S+)\s+Announce Type:\s*\S+\s+Abstract:\s*", re.IGNORECASE
)


def parse_markup(path: Path, text: str) -> Parsed:
    """An Atom or RSS feed's entries; raises :class:`InputError` for anything else."""
    # XML allows nothing before its declaration; a feed pasted after a blank line is still
    # read, and errors still name the file's own lines.
    body = text.lstrip("\ufeff \t\r\n")
    skipped_lines = text.count("\n", 0, len(text) - len(body))
    kind = _root_name(path, body)
    local = kind.rsplit(":", 1)[-1]
    if local.lower() in _HTML_ROOTS:
        raise _not_a_digest(path, "HTML")
    if local not in ("feed", "rss", "RDF"):
        raise InputError(
            path, f"not a digest: looks like XML with root <{kind}>, not an Atom or RSS feed"
        )
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(": line ")[0]
        raise InputError(
            path, f"invalid XML: {reason} (column {column + 1})", line=line + skipped_lines
        ) from None
    if _local(root.tag) == "feed":
        return Parsed("atom", list(_atom_entries(path, root)))
    return Parsed("rss", list(_rss_entries(path, root)))


def _not_a_digest(path: Path, looks_like: str) -> InputError:
    return InputError(
        path,
        f"not a digest: looks like {looks_like} (a saved web page?); papertag reads a page's "
        "text, HF API JSON, JSONL/JSON, CSV, and Atom/RSS feeds",
    )


def _root_name(path: Path, text: str) -> str:
    """The root element's name, once the prolog is known to declare nothing."""
    pos = 0
    while m := _PROLOG_ITEM.match(text, pos):
        pos = m.end()
    rest = text[pos : pos + 4096].lstrip()
    if rest.startswith("<!"):
        if re.match(r"<!doctype\s+html\b", rest, re.IGNORECASE):
            raise _not_a_digest(path, "HTML")
        raise InputError(
            path,
            "XML with a DOCTYPE (entity declarations) is refused: entities can expand without "
            "bound or reach outside the file, and feeds need none",
        )
    m = _ROOT.match(rest)
    if m is None:
        raise InputError(path, f"not a digest: starts like markup ({short(rest, 40)!r})")
    return m.group(1)


def _local(tag: str) -> str:
    """A tag without its namespace: Atom with or without xmlns, RSS 1.0 or 2.0 alike."""
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _text(el: ET.Element | None) -> str:
    return "".join(el.itertext()) if el is not None else ""


def _html_text(text: str) -> str:
    """Text of a field that may hold HTML (tags out, entities decoded)."""
    # A block tag separates words; an inline one sits inside a word ("x<sup>2</sup>").
    return html.unescape(_HTML_TAG.sub(lambda m: " " if m.group(1) else "", text))


def _arxiv(*candidates: str | None) -> str | None:
    """An arXiv id from the first candidate that is an arXiv URL or OAI id: other feeds'
    ids may hold digits that look like one."""
    for value in candidates:
        if value and "arxiv" in value.lower():
            found = parse_arxiv_id(value)
            if found:
                return found
    return None


def _atom_text(el: ET.Element | None) -> str:
    if el is not None and el.get("type") == "html":
        return _html_text(_text(el))
    return _text(el)


def _atom_entries(path: Path, feed: ET.Element) -> Iterator[Entry]:
    """Entries of an Atom feed in the arXiv API's shape: ``id`` an abs URL, ``summary`` the
    abstract, ``published`` the first version's date, ``link rel="alternate"`` the page."""
    entries = [el for el in feed if _local(el.tag) == "entry"]
    if not entries:
        raise InputError(path, "Atom feed has no entries: no papers")
    for pos, el in enumerate(entries, start=1):
        entry_id = _text(_child(el, "id")).strip()
        summary = _atom_text(_child(el, "summary")) or _atom_text(_child(el, "content"))
        if "arxiv.org/api/errors" in entry_id:
            # The arXiv API answers a bad query with a feed of one "Error" entry.
            raise InputError(
                path, f"arXiv API error response, not a digest: {short(clean_text(summary))!r}"
            )
        url = next(
            (
                link.get("href")
                for link in el
                if _local(link.tag) == "link" and link.get("rel", "alternate") == "alternate"
            ),
            None,
        )
        if url is None and entry_id.startswith("http"):
            url = entry_id
        published = parse_date(_text(_child(el, "published")).strip())
        # arXiv's announcement feeds (rss.arxiv.org/atom/...) mark entries with an
        # announce_type; there `published` is the day of the list, not of the paper.
        announced = _child(el, "announce_type") is not None
        entry = Entry(
            pos,
            pos,
            clean_text(_atom_text(_child(el, "title"))),
            clean_text(summary),
            arxiv_id=_arxiv(entry_id, url),
            url=url,
            listed_on=published if announced else None,
            published_at=None if announced else published,
        )
        yield check_entry(path, entry, "entry")


def _rss_date(value: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).date()  # RSS 2.0: RFC 822 dates
    except (TypeError, ValueError):
        return parse_date(value)  # RSS 1.0's dc:date is ISO 8601


def _rss_entries(path: Path, root: ET.Element) -> Iterator[Entry]:
    """Items of an RSS 2.0 (or 1.0) feed in arXiv's shape: ``description`` holds the
    abstract after "arXiv:<id> Announce Type: <type> Abstract:", ``pubDate`` the day."""
    channel = _child(root, "channel")
    channel_date = _rss_date(_text(_child(channel, "pubDate"))) if channel is not None else None
    items = [el for el in root.iter() if _local(el.tag) == "item"]
    if not items:
        raise InputError(path, "RSS feed has no items: no papers")
    for pos, el in enumerate(items, start=1):
        description = clean_text(_html_text(_text(_child(el, "description"))))
        prefix = _ARXIV_RSS_PREFIX.match(description)
        if prefix:
            description = description[prefix.end() :]
        link = _text(_child(el, "link")).strip() or el.get(
            "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}about"
        )
        guid = _text(_child(el, "guid")).strip()
        day = _rss_date(_text(_child(el, "pubDate")) or _text(_child(el, "date")))
        entry = Entry(
            pos,
            pos,
            clean_text(_text(_child(el, "title"))),
            description,
            arxiv_id=_arxiv(f"arXiv:{prefix.group(1)}" if prefix else None, guid, link),
            url=link or None,
            listed_on=day or channel_date,
        )
        yield check_entry(path, entry, "item")
