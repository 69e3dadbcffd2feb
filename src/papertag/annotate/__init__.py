"""Annotate: run an annotator over the papers that lack its annotation.

:mod:`.run` chooses the engine and holds the run's lock, :mod:`.pending` picks the papers,
:mod:`.engine` calls the annotator on a thread pool (:mod:`.work`: one call),
:mod:`.writer` stores results from one thread, :mod:`.journal` and :mod:`.recovery` keep
paid answers across a crash, :mod:`.budget` estimates the cost and enforces ``--max-cost``.
"""

from .budget import Estimate, estimate
from .report import AnnotateReport
from .run import annotate_papers

__all__ = ["AnnotateReport", "Estimate", "annotate_papers", "estimate"]
