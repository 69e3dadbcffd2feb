"""What an ingest did: a report a file (its format, counts, error), and all of them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FileReport:
    path: str
    format: str | None = None
    entries: int = 0
    new_papers: int = 0
    updated_papers: int = 0
    new_links: int = 0
    unchanged: int = 0
    error: str | None = None
    note: str | None = None


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.error]

    @property
    def ok(self) -> bool:
        return not self.failed

    def total(self, attr: str) -> int:
        return sum(int(getattr(f, attr)) for f in self.files if not f.error)
