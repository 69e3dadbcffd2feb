"""Ingest: read digests in any supported format and write each paper once.

:mod:`.formats` detects and parses a file, :mod:`.feeds` reads Atom/RSS, :mod:`.identity`
keys a paper, :mod:`.write` stores papers and their digests, :mod:`.pull` fetches new days
from the daily-papers API.
"""

from .entries import Entry, Parsed
from .formats import Digest, parse_file
from .identity import clean_text, content_hash, parse_arxiv_id, title_key
from .write import FileReport, IngestReport, ingest_digests, ingest_file, write_entries

__all__ = [
    "Digest",
    "Entry",
    "FileReport",
    "IngestReport",
    "Parsed",
    "clean_text",
    "content_hash",
    "ingest_digests",
    "ingest_file",
    "parse_arxiv_id",
    "parse_file",
    "title_key",
    "write_entries",
]
