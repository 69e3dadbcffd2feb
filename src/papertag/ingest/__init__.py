"""Ingest: read digests in any supported format and write each paper once.

:mod:`.formats` detects a file's format (:mod:`.scan` checks its bytes; :mod:`.pagetext`,
:mod:`.jsonfmt`, :mod:`.delimited` and :mod:`.feeds` parse it), :mod:`.identity` keys a
paper, :mod:`.papers` and :mod:`.digests` match papers and digests to what the database
holds, :mod:`.write` writes them in batches, :mod:`.run` ingests files, :mod:`.pull`
fetches new days from the daily-papers API.
"""

from .entries import Entry, Parsed
from .formats import Digest, parse_file
from .identity import clean_text, content_hash, parse_arxiv_id, title_key
from .report import FileReport, IngestReport
from .run import ingest_digests, ingest_file
from .write import write_entries

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
