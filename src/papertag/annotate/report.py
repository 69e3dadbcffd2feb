"""A run's report, and its row in ``annotation_runs``, which its results refer to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..annotators import AnnotatorInfo
from ..db import Store, utc_now


@dataclass
class AnnotateReport:
    annotator: str
    model: str
    prompt_version: str
    taxonomy_version: str
    run_id: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: HTTP exchanges made (replays of stored answers not counted) and their usage.
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Prompt tokens the provider served from its prompt cache (part of prompt_tokens).
    cached_tokens: int = 0
    cost_usd: float = 0.0
    #: False when the model has no known price (cost_usd is then 0 but means "unknown").
    cost_known: bool = False
    #: Answers reused from a run that was killed before storing them.
    replayed: int = 0
    #: Journal rows of a killed run moved into llm_calls at start.
    recovered: int = 0
    #: 429 answers seen.
    throttled: int = 0
    #: Why the run stopped early: "interrupted" (Ctrl-C) or "max-cost"; None if it finished.
    stopped: str | None = None
    #: Papers left for a later run (not started, or cut off by the stop).
    left: int = 0
    #: Papers whose result is not in the database yet, because another process had it open:
    #: during a run, what waits for the next turn; at its end, what could not be stored (an
    #: LLM's answers stay in the journal, for the next run to store without asking again).
    unstored: int = 0
    #: What the Batch API side did (``--batch``, or batches of an earlier run collected):
    #: a :class:`papertag.annotate.batch.BatchReport`.
    batch: Any = None
    #: ``--annotator cascade``: the share sent to the LLM and the cost saved
    #: (:class:`papertag.annotate.cascade.CascadeSummary`), and the learned annotator's run.
    cascade: Any = None
    learned: Any = None

    def add(self, other: AnnotateReport) -> AnnotateReport:
        """Another run of the same command counted in (a --batch run's live runs): this
        one's identity, both runs' counts, the later run's stop."""
        for name in (
            "total",
            "done",
            "skipped",
            "failed",
            "calls",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cost_usd",
            "replayed",
            "recovered",
            "throttled",
            "seconds",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures
        self.stopped, self.left = other.stopped, other.left
        return self


def start_run(store: Store, ann: AnnotatorInfo, run_id: str) -> None:
    """The run's row in ``annotation_runs``, which its results refer to."""
    store.con.execute(
        "INSERT INTO annotation_runs (run_id, annotator, model, prompt_version, taxonomy_version, started_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, utc_now()],
    )


def finish_run(store: Store, report: AnnotateReport, *, finished: bool = True) -> None:
    """The run's counts in ``annotation_runs``; ``finished`` also stamps its end."""
    store.con.execute(
        "UPDATE annotation_runs SET finished_at = ?, done = ?, skipped = ?, failed = ? WHERE run_id = ?",
        [
            utc_now() if finished else None,
            report.done,
            report.skipped,
            report.failed,
            report.run_id,
        ],
    )
