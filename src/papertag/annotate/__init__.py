"""Annotate: run an annotator over the papers that lack its annotation.

:mod:`.pending` picks the papers, :mod:`.run` calls the annotator on a thread pool,
:mod:`.writer` stores results from one thread, :mod:`.journal` and :mod:`.recovery` keep
paid answers across a crash, :mod:`.budget` estimates the cost and enforces ``--max-cost``.
"""

from .budget import Estimate, estimate
from .run import AnnotateReport, annotate_papers

__all__ = ["AnnotateReport", "Estimate", "annotate_papers", "estimate"]
