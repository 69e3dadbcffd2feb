"""Files papertag writes for a user (never replace one unasked, never leave half of one),
and the labelled JSON Lines files it reads."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputError


def check_out_path(path: Path, *, overwrite: bool) -> None:
    """Refuse an output path that cannot be written, or exists and may not be replaced."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: directory {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; pass --force to replace it")


def temp_beside(path: Path) -> Path:
    """Where to write before moving into place: same directory, so the move is atomic."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def json_objects(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file; an unreadable
    file, a line that is not JSON or not an object is an :class:`InputError` naming the
    file and line (``what`` names the file in the message: "gold file")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(path, f"cannot read {what}: {reason}") from None
    yield from object_lines(path, text.splitlines())


def object_lines(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not JSON or not an
    object is an :class:`InputError` naming the file and line."""
    for lineno, line in enumerate(lines, start=1):
        if not line or line.isspace():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError(
                path, f"line is a JSON {type(obj).__name__}, expected an object", line=lineno
            )
        yield lineno, obj
