"""A paper's identity: normalised text, the arXiv id, the title key and the content hash.

A paper is one row however many digests list it: it is keyed on its arXiv id when known,
otherwise on a normalised title.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

# ---------------------------------------------------------------------------
# Normalisation and identity
# ---------------------------------------------------------------------------

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Bytes of the _CONTROL characters that str.split() does not already treat as whitespace;
#: deleting every other byte leaves them, so a non-empty result means "has control characters".
_NOT_CONTROL_BYTES = bytes(
    b for b in range(256) if not (b < 0x09 or 0x0E <= b <= 0x1B or b == 0x7F)
)
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))
#: ASCII byte -> its title-key byte: lower case; punctuation and controls (not \w or \s) -> space.
_ASCII_KEY = bytes(
    ord(chr(b).lower()) if chr(b).isalnum() or chr(b) == "_" or chr(b).isspace() else 0x20
    for b in range(128)
) + bytes(range(128, 256))
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ARXIV_NEW = re.compile(r"(?<![\d.])(\d{4}\.\d{4,5})(?:v\d+)?(?![\d])")
_ARXIV_OLD = re.compile(r"\b([a-z][a-z\-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?\b")


def clean_text(text: str) -> str:
    """Collapse whitespace (arXiv line wraps) and drop stray control characters."""
    if text.isascii():
        raw = text.encode("ascii")
        if (
            not raw.translate(None, _PRINTABLE_ASCII)
            and b"  " not in raw
            and raw[:1] != b" "
            and raw[-1:] != b" "
        ):
            return text  # printable ASCII, single spaces only: already clean
    # str.split() and the regex \s agree on what whitespace is.
    out = " ".join(text.split())
    try:
        raw = out.encode()
    except UnicodeEncodeError:
        # Lone surrogates (a JSON "\ud83d" escape cut in half) cannot be stored.
        out = _SURROGATE.sub("\ufffd", out)
        raw = out.encode()
    if raw.translate(None, _NOT_CONTROL_BYTES):
        out = " ".join(_CONTROL.sub(" ", out).split())
    return out


def title_key(title: str) -> str:
    """Normalised title used for identity: case, whitespace and punctuation folded."""
    if title.isascii():
        # The same as below for ASCII (NFKC changes nothing, casefold is lower()), faster.
        return " ".join(title.encode().translate(_ASCII_KEY).decode().split())
    folded = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(_PUNCT.sub(" ", folded).split())


def parse_arxiv_id(value: Any) -> str | None:
    """An arXiv id (without version) from an id, ``arXiv:`` string or URL, else None."""
    if value is None:
        return None
    text = str(value).strip()
    m = _ARXIV_NEW.search(text) or _ARXIV_OLD.search(text)
    return m.group(1) if m else None


def content_hash(title: str, abstract: str) -> str:
    return hashlib.sha256(f"{title}\n{abstract}".encode()).hexdigest()[:16]


def make_paper_id(arxiv_id: str | None, tkey: str) -> str:
    key = f"arxiv:{arxiv_id}" if arxiv_id else f"title:{tkey}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------
