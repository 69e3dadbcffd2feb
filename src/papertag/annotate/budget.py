"""What a run would cost (``--dry-run``) and the ``--max-cost`` budget that stops it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..annotators import (
    DEFAULT_ANNOTATOR,
    Annotator,
    AnnotatorInfo,
    PaperInput,
    resolve_annotator,
)
from ..annotators.llm.prices import BATCH_DISCOUNT, estimate_cost
from ..db import Store
from .pending import Pending, paper_input, pending_papers


@dataclass
class Estimate:
    """What a run would send (``--dry-run``): nothing is sent or written."""

    annotator: str
    model: str
    papers: int
    skipped: int
    prompt_tokens: int
    completion_tokens: int
    #: None when the model has no known price (see PAPERTAG_PRICES).
    cost_usd: float | None
    #: With ``max_cost``: about how many of the papers it lets start (None: no limit or price).
    within_budget: int | None = None
    #: ``--annotator cascade``: the share it would send
    #: (:class:`papertag.annotate.cascade.CascadeSummary`).
    cascade: Any = None


def _estimate_paper(ann: AnnotatorInfo, paper: Pending) -> tuple[int, int]:
    estimate_tokens: Callable[[PaperInput], tuple[int, int]] | None = getattr(
        ann, "estimate_tokens", None
    )
    if estimate_tokens is None:
        return 0, 0
    return estimate_tokens(paper_input(paper))


def estimate(
    db: Store | str | Path | None = None,
    annotator: str | Annotator = DEFAULT_ANNOTATOR,
    *,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    max_cost: float | None = None,
    paper_ids: Iterable[str] | None = None,
    batch: bool = False,
    **options: Any,
) -> Estimate:
    """How many papers a run would send, and their estimated tokens and cost.

    With ``max_cost``, also about how many of them the budget lets start: each paper
    while the estimated spend so far plus its own likely cost (a fifth over its
    estimate, as the run reserves) fits. ``batch``: at the Batch API's price. For
    ``cascade``, the LLM's share: the learned model labels the papers in memory (nothing
    is stored) to find the doubtful ones, and ``cascade`` holds the share and the saving.
    """
    store = db if isinstance(db, Store) else Store(db)
    # Estimates need the prompt and prices, not a client: no openai import, no connection.
    ann: AnnotatorInfo | None = None
    try:
        if annotator == "cascade":
            return _estimate_cascade(
                store,
                options,
                limit=limit,
                force=force,
                retry_failed=retry_failed,
                max_cost=max_cost,
                paper_ids=list(paper_ids) if paper_ids is not None else None,
                batch=batch,
            )
        ann = resolve_annotator(annotator, options, client=False, store=store)
        todo, skipped = pending_papers(
            store,
            ann,
            force=force,
            retry_failed=retry_failed,
            limit=limit,
            paper_ids=list(paper_ids) if paper_ids is not None else None,
        )
        prompt = completion = 0
        spent, within, room = 0.0, 0, max_cost is not None
        for paper in todo:
            p, c = _estimate_paper(ann, paper)
            prompt, completion = prompt + p, completion + c
            one = estimate_cost(ann.model, p, c)
            # As the run: papers start in order, and the first that does not fit ends it.
            if room and one is not None and max_cost is not None:
                room = spent + one * RESERVE_MARGIN <= max_cost
                if room:
                    spent, within = spent + one, within + 1
        cost = 0.0 if not prompt else estimate_cost(ann.model, prompt, completion)
        if batch and cost is not None:
            cost *= BATCH_DISCOUNT
        within_budget = within if max_cost is not None and cost is not None else None
        return Estimate(
            ann.name, ann.model, len(todo), skipped, prompt, completion, cost, within_budget
        )
    finally:
        if isinstance(annotator, str) and ann is not None:
            getattr(ann, "close", lambda: None)()
        if not isinstance(db, Store):
            store.close()


def _estimate_cascade(
    store: Store,
    options: dict[str, Any],
    *,
    limit: int | None,
    paper_ids: list[str] | None,
    batch: bool,
    **run: Any,
) -> Estimate:
    from .cascade import CascadeSummary, doubtful_predicted, learned_annotator, scope, split_options

    learned = learned_annotator(store, options)
    ids = scope(store, limit, paper_ids)
    sent = doubtful_predicted(store, learned, ids)
    _, llm_opts = split_options(options)
    est = estimate(store, "llm", paper_ids=sent, batch=batch, **run, **llm_opts)
    kept = sorted(set(ids) - set(sent))
    saved = (
        estimate(store, "llm", paper_ids=kept, force=True, batch=batch, **llm_opts).cost_usd
        if kept
        else 0.0
    )
    est.annotator = "cascade"
    est.cascade = CascadeSummary(len(ids), len(sent), saved)
    return est


#: --max-cost sets aside this much over a paper's likely cost while it is in flight.
RESERVE_MARGIN = 1.2


def batch_within(
    ann: AnnotatorInfo, papers: Sequence[Pending], max_cost: float | None
) -> Sequence[Pending]:
    """The first of these papers whose likely cost at the Batch API's price (a fifth over
    its estimate, as a live run reserves) fits in ``max_cost``: what one batch may carry."""
    if max_cost is None:
        return papers
    spent = 0.0
    for i, paper in enumerate(papers):
        p, c = _estimate_paper(ann, paper)
        spent += (estimate_cost(ann.model, p, c) or 0.0) * BATCH_DISCOUNT * RESERVE_MARGIN
        if spent > max_cost:
            return papers[:i]
    return papers


class Budget:
    """--max-cost: a paper starts only if the spend so far, plus what the papers in
    flight will likely cost, plus its own likely cost, stays within the limit."""

    def __init__(self, ann: AnnotatorInfo, max_cost: float | None) -> None:
        self.ann, self.max_cost = ann, max_cost
        self.reserved: dict[str, float] = {}
        self.settled_cost = 0.0
        self.settled = 0

    def _likely(self, paper: Pending) -> float:
        p, c = _estimate_paper(self.ann, paper)
        first = estimate_cost(self.ann.model, p, c) or 0.0
        # Re-asks cost more than one attempt: once papers have settled, trust their average.
        seen = self.settled_cost / self.settled if self.settled >= 5 else first * 1.5
        return max(first, seen) * RESERVE_MARGIN

    def admit(self, papers: Sequence[Pending], spent: float) -> bool:
        """Whether a call of these papers may start; if so, their likely cost is set aside."""
        if self.max_cost is None:
            return True
        likely = {p.paper_id: self._likely(p) for p in papers}
        if spent + sum(self.reserved.values()) + sum(likely.values()) > self.max_cost:
            return False
        self.reserved.update(likely)
        return True

    def settle(self, paper: Pending, cost: float) -> None:
        self.reserved.pop(paper.paper_id, None)
        self.settled += 1
        self.settled_cost += cost
