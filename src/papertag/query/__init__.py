"""Reading the annotations: SQL (:mod:`.sql`), one paper in full (:mod:`.show`), export
files (:mod:`.export`), scores against gold (:mod:`.evaluate`) and the HTML report
(:mod:`.report`, imported on first use: it needs plotly).
"""

from .evaluate import evaluate
from .export import ExportFormat, ExportResult, export
from .sql import QueryResult, run_script, run_sql, stats

__all__ = [
    "ExportFormat",
    "ExportResult",
    "QueryResult",
    "evaluate",
    "export",
    "run_script",
    "run_sql",
    "stats",
]
