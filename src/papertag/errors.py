"""papertag's exceptions, one tree rooted at :class:`PapertagError`.

::

    PapertagError                 anything papertag raises on purpose
    ├── InputError                a file or row we cannot ingest (path, line, reason)
    ├── FetchError                a day of the daily-papers API that could not be fetched
    │   └── Unreachable           the API's host cannot be reached, or keeps failing: a pull stops
    ├── StoreError                the database cannot be opened or written
    │   └── DatabaseBusy          another papertag process holds the database
    ├── ConfigError               bad option or environment (unknown annotator, threshold out of range)
    ├── QueryError                SQL that DuckDB rejected
    ├── ProviderError             the model server refuses every request (bad key, unknown model): stops the run
    ├── ReviewError               a review decision that cannot be recorded (unknown id, nothing to undo)
    │   └── ReviewImportError     a review spreadsheet with bad rows (each row number and reason); nothing applied
    └── AnnotationError           one paper could not be annotated (paper_id, reason, attempts, last_completion)
        └── ValidationFailed      the annotator's answer broke the schema

The CLI turns each of these into one line on stderr and a non-zero exit; nothing
else should reach a user as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PapertagError(Exception):
    """Base class of every error papertag raises on purpose."""


class InputError(PapertagError):
    """A file (or one of its rows) that cannot be ingested."""

    def __init__(
        self, path: str | Path, reason: str, *, line: int | None = None, kind: str = "line"
    ) -> None:
        self.path = str(path)
        self.reason = reason
        self.line = line
        self.kind = kind
        where = f"{self.path}: {kind} {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class FetchError(PapertagError):
    """A day of the daily-papers API that could not be fetched (a 4xx answer)."""


class Unreachable(FetchError):
    """The API's host cannot be reached (DNS, connection) or keeps failing after retries:
    every other day would fail the same way, so a pull stops."""


class StoreError(PapertagError):
    """The database file cannot be opened, migrated or written."""


class DatabaseBusy(StoreError):
    """Another process has the database open in a way that excludes this one (DuckDB lets
    one process write a file, or several read it), still after waiting for it a while."""


class RunInProgress(DatabaseBusy):
    """Another ``annotate`` run is going on with the same database: one at a time, so that
    no paper is paid for twice."""


class ConfigError(PapertagError):
    """An option, environment variable or setting that papertag cannot use."""


class QueryError(PapertagError):
    """SQL that DuckDB rejected; the message is DuckDB's own."""


class ProviderError(PapertagError):
    """The model server refused the request itself (401/403/404/400/422); retrying cannot help."""


class ReviewError(PapertagError):
    """A review decision that cannot be recorded: unknown paper, field or label id, nothing to undo."""


@dataclass(frozen=True)
class BadRow:
    """One spreadsheet row that cannot be applied; ``row`` is the spreadsheet's row number."""

    row: int
    reason: str


class ReviewImportError(ReviewError):
    """A review spreadsheet with bad rows; nothing from it was applied."""

    def __init__(self, path: str | Path, rows: list[BadRow]) -> None:
        self.path = str(path)
        self.rows = rows
        n = len(rows)
        lines = [f"{self.path}: {n} bad row{'s' if n != 1 else ''}; nothing was applied"]
        lines += [f"{self.path}: row {r.row}: {r.reason}" for r in rows]
        super().__init__("\n".join(lines))


class AnnotationError(PapertagError):
    """One paper could not be annotated; carries what is needed to debug it."""

    def __init__(
        self,
        reason: str,
        *,
        paper_id: str | None = None,
        attempts: int = 1,
        last_completion: str | None = None,
        retryable: bool = False,
    ) -> None:
        self.reason = reason
        # True when asking again may succeed (server or network fault), False when it
        # would only repeat the answer (validation failure, refusal, cut-off answer).
        self.retryable = retryable
        self.paper_id = paper_id
        self.attempts = attempts
        self.last_completion = last_completion
        super().__init__(reason)


class ValidationFailed(AnnotationError):
    """The annotator's answer did not pass :class:`papertag.schema.Annotation` validation."""
