"""Checking a digest's bytes before it is parsed: its checksum and encoding, in one pass.

Empty, binary and undecodable content is refused; text that is not UTF-8 is read as
Windows-1252/Latin-1, with a note saying so.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

#: Bytes read at a time while checking a file's encoding.
_CHUNK = 1 << 20

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
class Scan:
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

    def finish(self) -> Scan:
        """The encoding (UTF-8, else a legacy one to check with :func:`_legacy_encoding`)."""
        if not self._nonblank:
            raise InputError(self.path, "empty file")
        if self._bad is None and self._pending:
            self._bad = self._offset - len(self._pending)  # it ends inside a UTF-8 sequence
        if self._bad is None:
            text = "".join(self._text).removeprefix("\ufeff") if self._text is not None else None
            return Scan("utf-8-sig", None, self._sha.hexdigest(), text)
        encoding, note = _legacy_encoding(self.path, self._head, self._bad)
        return Scan(encoding, note, self._sha.hexdigest())


def scan_file(path: Path) -> Scan:
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


def scan_bytes(path: Path, data: bytes) -> Scan:
    """Check content already in memory (an API's answer) as :func:`scan_file` checks a file."""
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
