"""The daily job, ``papertag run``: pull the new days, annotate, say what is new.

Meant for cron: one call does it all, its report is one object (:meth:`RunReport.as_dict`)
and :attr:`RunReport.ok` says whether anything went wrong. A day that failed, or a pull
that stopped, does not keep the papers that did land from being annotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .annotate import AnnotateReport, annotate_papers
from .annotators import DEFAULT_ANNOTATOR
from .db import Store
from .ingest.pull import DEFAULT_BASE_URL, PullReport, pull
from .review import review_queue
from .taxonomy import FIELDS


@dataclass
class RunReport:
    pull: PullReport
    annotate: AnnotateReport
    #: Labels given by this run's annotations, per field.
    labels: dict[str, int]
    #: Labels and candidates of this run's annotations waiting for review, and all of them.
    review_new: int
    review_waiting: int

    @property
    def ok(self) -> bool:
        """No day failed, the pull went through, no paper failed and nothing interrupted
        the run (a stop at ``max_cost`` is what was asked for)."""
        return self.pull.ok and not self.annotate.failed and self.annotate.stopped != "interrupted"

    def as_dict(self) -> dict[str, Any]:
        a = self.annotate
        return {
            "ok": self.ok,
            "pull": self.pull.as_dict(),
            "annotate": {
                "annotator": a.annotator,
                "model": a.model,
                "annotated": a.done,
                "failed": a.failed,
                "skipped": a.skipped,
                "stopped": a.stopped,
            },
            "labels": self.labels,
            "review": {"new": self.review_new, "waiting": self.review_waiting},
        }


def run(
    db: Store | str | Path | None = None,
    *,
    since: date | None = None,
    until: date | None = None,
    base_url: str = DEFAULT_BASE_URL,
    annotator: str = DEFAULT_ANNOTATOR,
    annotate_options: dict[str, Any] | None = None,
    pull_options: dict[str, Any] | None = None,
) -> RunReport:
    """Pull the days :func:`papertag.ingest.pull.pull` would, then annotate every paper that
    lacks an annotation for ``annotator``'s key (the new ones, and any an earlier run
    left), with :func:`papertag.annotate_papers`'s ``annotate_options`` (``model``,
    ``limit``, ``max_cost``, callbacks...). ``pull_options`` go to the pull (callbacks,
    pace, the time it sees)."""
    store = db if isinstance(db, Store) else Store(db)
    try:
        pulled = pull(store, since=since, until=until, base_url=base_url, **(pull_options or {}))
        done = annotate_papers(store, annotator, **(annotate_options or {}))
        labels = dict.fromkeys(FIELDS, 0) | {
            str(f): int(n)
            for f, n in store.con.execute(
                "SELECT l.field, count(*) FROM annotation_labels l JOIN annotations a "
                "USING (annotation_id) WHERE a.run_id = ? AND l.kind = 'label' GROUP BY l.field",
                [done.run_id],
            ).fetchall()
        }
        ours = {
            str(a)
            for (a,) in store.con.execute(
                "SELECT annotation_id FROM annotations WHERE run_id = ?", [done.run_id]
            ).fetchall()
        }
        queue = review_queue(store)
        return RunReport(
            pulled, done, labels, sum(i.annotation_id in ours for i in queue), len(queue)
        )
    finally:
        if not isinstance(db, Store):
            store.close()
