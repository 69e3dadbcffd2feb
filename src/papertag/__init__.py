"""papertag: turn research-paper digests into a queryable, human-checked label database.

The pipeline runs one way, a subpackage a stage: :func:`ingest_digests` into the
database (``papertag.ingest``, ``papertag.db``), :func:`annotate_papers` their abstracts
(``papertag.annotate`` runs the ``papertag.annotators``), :func:`review_queue` the doubtful
labels (``papertag.review``), then query the views in SQL, :func:`export` them, draw a
:func:`write_report` and :func:`evaluate` against gold (``papertag.query``); :func:`train` the learned annotator's model on labelled
papers and review decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .annotate import AnnotateReport, annotate_papers
from .annotators import Annotator, PaperInput, get_annotator
from .db import Store
from .errors import (
    AnnotationError,
    BadRow,
    ConfigError,
    DatabaseBusy,
    InputError,
    PapertagError,
    QueryError,
    ReviewError,
    ReviewImportError,
    StoreError,
    ValidationFailed,
)
from .ingest import IngestReport, ingest_digests
from .query import ExportFormat, ExportResult, evaluate, export, run_sql, stats
from .review import (
    Conflict,
    Decision,
    ImportReport,
    QueueItem,
    add_label,
    conflicts,
    decide,
    export_sheet,
    import_sheet,
    record_decision,
    review_queue,
    undo_decision,
)
from .schema import Annotation, Candidate, Label, validate_annotation
from .scoring import EvalResult
from .taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from .annotators.learned.pipeline import TrainResult, train
    from .query.report import ReportResult, write_report

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The report draws with plotly (a tenth of a second to import): load it on first use,
    # so commands that never draw (annotate above all) start without it (PEP 562).
    if name in ("ReportResult", "write_report"):
        from .query import report

        return getattr(report, name)
    if name in ("TrainResult", "train"):
        # Training needs numpy and scikit-learn: loaded by the first call that trains.
        from .annotators.learned import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'papertag' has no attribute {name!r}")


__all__ = [
    "AnnotateReport",
    "Annotation",
    "AnnotationError",
    "Annotator",
    "BadRow",
    "Candidate",
    "ConfigError",
    "Conflict",
    "DatabaseBusy",
    "Decision",
    "EvalResult",
    "ExportFormat",
    "ExportResult",
    "ImportReport",
    "IngestReport",
    "InputError",
    "Label",
    "PaperInput",
    "PapertagError",
    "QueryError",
    "QueueItem",
    "ReportResult",
    "ReviewError",
    "ReviewImportError",
    "Store",
    "StoreError",
    "Taxonomy",
    "TrainResult",
    "ValidationFailed",
    "__version__",
    "add_label",
    "annotate_papers",
    "conflicts",
    "decide",
    "evaluate",
    "export",
    "export_sheet",
    "get_annotator",
    "import_sheet",
    "ingest_digests",
    "load_taxonomy",
    "record_decision",
    "review_queue",
    "run_sql",
    "stats",
    "train",
    "undo_decision",
    "validate_annotation",
    "write_report",
]
