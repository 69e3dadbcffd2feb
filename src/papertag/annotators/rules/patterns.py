"""Reading the taxonomy's regexes as text: where their literal start ends, and how they
divide into alternatives that each start with a literal word (the words the matching pass
looks up)."""

from __future__ import annotations

import re
from collections.abc import Iterator

#: A word of the lower-cased text, and of a pattern's literal start.
WORD = re.compile(r"[a-z0-9]+")
_SPECIAL = set(".^$*+?{}[]|()")
_QUANT = set("?*{")


def lower_pattern(pattern: str) -> str:
    """Lower-case a regex without touching escapes such as ``\\W`` or ``\\S``."""
    return re.sub(
        r"\\.|[A-Z]", lambda m: m.group() if len(m.group()) == 2 else m.group().lower(), pattern
    )


def _structure(pattern: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """Walk a regex, skipping escapes and character classes.

    Yields (index, char, depth) for each character outside a class, ``depth`` being
    the group nesting after that character.
    """
    depth = 0
    in_class = False
    i = start
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        else:
            depth += (c == "(") - (c == ")")
            yield i, c, depth
        i += 1


def _split_top(pattern: str) -> list[str]:
    """Split at ``|`` outside groups and character classes."""
    parts: list[str] = []
    start = 0
    for i, c, depth in _structure(pattern):
        if c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
    parts.append(pattern[start:])
    return parts


def _group_end(pattern: str, open_at: int) -> int:
    """Index of the ``)`` closing the group opened at ``open_at`` (-1 if none)."""
    for i, c, depth in _structure(pattern, open_at):
        if c == ")" and depth == 0:
            return i
    return -1


def expand_pattern(pattern: str, _depth: int = 0) -> list[str]:
    """Rewrite a pattern as alternatives that each start with their own literal text.

    ``(?:a|b)c|d`` becomes ``["ac", "bc", "d"]`` and ``fp(?:8|16)`` becomes
    ``["fp8", "fp16"]``: the first group at or right after the leading literal text is
    multiplied out, so that every alternative starts with a whole literal word. A leading
    ``\\b`` is dropped (every pattern implicitly starts at a word boundary). Groups with a
    quantifier, and anything else that cannot be expanded, are left as they are.
    """
    while pattern.startswith("\\b"):
        pattern = pattern[2:]
    top = _split_top(pattern)
    if len(top) > 1:
        return [p for part in top for p in expand_pattern(part, _depth + 1)]
    if _depth >= 8:
        return [pattern]
    lit_end = _literal_end(pattern)
    if pattern.startswith("(?:", lit_end):
        end = _group_end(pattern, lit_end)
        rest = pattern[end + 1 :] if end > 0 else ""
        if end > 0 and not (rest and rest[0] in "?*+{"):
            head = pattern[:lit_end]
            return [
                p
                for alt in _split_top(pattern[lit_end + 3 : end])
                for p in expand_pattern(head + alt + rest, _depth + 1)
            ]
    return [pattern]


def _literal_end(pattern: str) -> int:
    """Where the leading literal text of ``pattern`` ends (an index into the pattern)."""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern) and not pattern[i + 1].isalnum():
                step = 2
            else:
                break
        elif c in _SPECIAL:
            break
        else:
            step = 1
        if i + step < len(pattern) and pattern[i + step] in _QUANT:
            break  # this character is optional
        i += step
    return i


#: The start of a pattern's remainder after a word of 1 or 2 letters must not continue the
#: word (such words are looked up as whole words).
_SHORT_WORD_END = re.compile(
    r"$|[^a-z0-9\\\[(?*+{]|\\[^a-zA-Z0-9]|\\[bsW]|\[[^\]a-z0-9]*\]|\(\?!\[a-z0-9\]\)"
)


def short_word_ends(rest: str) -> bool:
    """Whether a pattern's remainder after a 1–2 letter word surely ends that word."""
    m = _SHORT_WORD_END.match(rest)
    return m is not None and rest[m.end() : m.end() + 1] not in ("?", "*", "{")


def literal_prefix(pattern: str) -> str:
    """The literal text every match of ``pattern`` starts with (may be empty)."""
    raw = pattern[: _literal_end(pattern)]
    return re.sub(r"\\(.)", r"\1", raw)


def start_word(alt: str) -> str:
    """The literal word an alternative starts with ("" if it starts with anything else)."""
    run = WORD.match(literal_prefix(alt))
    return run.group() if run is not None and alt.startswith(run.group()) else ""
