"""Files papertag writes for a user: never replace one unasked, never leave half of one."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


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
