"""Review: a person decides the doubtful labels, in the terminal app (:mod:`.app`), a
spreadsheet (:mod:`.sheets`) or from code (:mod:`.core`); every decision is recorded.

The terminal app is not imported here: it needs textual, which only ``papertag review``
loads.
"""

from .core import (
    Conflict,
    Decision,
    QueueItem,
    add_label,
    conflicts,
    decide,
    decisions,
    is_decided,
    record_decision,
    review_queue,
    undo_decision,
)
from .sheets import SHEET_COLUMNS, ImportReport, export_sheet, import_sheet, read_sheet

__all__ = [
    "SHEET_COLUMNS",
    "Conflict",
    "Decision",
    "ImportReport",
    "QueueItem",
    "add_label",
    "conflicts",
    "decide",
    "decisions",
    "export_sheet",
    "import_sheet",
    "is_decided",
    "read_sheet",
    "record_decision",
    "review_queue",
    "undo_decision",
]
