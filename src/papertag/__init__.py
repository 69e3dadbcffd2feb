"""papertag: turn research-paper digests into a queryable, human-checked label database.

The pipeline runs one way: :func:`ingest` digests into the store, :func:`annotate`
their abstracts, then query the views in SQL, :func:`export` them, draw a
:func:`write_report` and :func:`evaluate` against gold.
"""

from .annotate import AnnotateReport, annotate
from .annotators import Annotator, PaperInput, get_annotator
from .errors import (
    AnnotationError,
    ConfigError,
    DatabaseBusy,
    InputError,
    PapertagError,
    QueryError,
    StoreError,
    ValidationFailed,
)
from .evaluate import EvalResult, evaluate
from .export import ExportFormat, ExportResult, export
from .ingest import IngestReport, ingest
from .query import run_sql, stats
from .report import ReportResult, write_report
from .schema import Annotation, Candidate, Label, validate_annotation
from .store import Store, open_store
from .taxonomy import Taxonomy, load_taxonomy

__version__ = "0.1.0"

__all__ = [
    "AnnotateReport",
    "Annotation",
    "AnnotationError",
    "Annotator",
    "Candidate",
    "ConfigError",
    "DatabaseBusy",
    "EvalResult",
    "ExportFormat",
    "ExportResult",
    "IngestReport",
    "InputError",
    "Label",
    "PaperInput",
    "PapertagError",
    "QueryError",
    "ReportResult",
    "Store",
    "StoreError",
    "Taxonomy",
    "ValidationFailed",
    "__version__",
    "annotate",
    "evaluate",
    "export",
    "get_annotator",
    "ingest",
    "load_taxonomy",
    "open_store",
    "run_sql",
    "stats",
    "validate_annotation",
    "write_report",
]
