"""``--annotator cascade``: the learned annotator labels every paper; the LLM only the doubtful.

A paper is doubtful when the learned model gave one of its labels a confidence in the
review band (``[DROP_THRESHOLD, ACCEPT_THRESHOLD)``: a person would be asked about it),
or left a field with no label at or above the accept threshold. Those papers go to the
LLM, live or through the Batch API; the rest keep the learned model's labels, for free.
Both annotations are kept, and ``final_labels`` takes the LLM's where it ran (a
person's decision still wins over both).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..annotators import PaperInput, get_annotator
from ..db import Store, using
from ..errors import AnnotationError, ConfigError
from ..schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from ..taxonomy import FIELDS

#: The options that are the learned annotator's in a cascade (the rest are the LLM's).
LEARNED_OPTIONS = {"learned_model": "model"}


def needs_llm(labels: Iterable[tuple[str, float]]) -> bool:
    """Whether a paper whose learned labels are these (field, confidence) pairs goes to
    the LLM: a label in the review band, or a field without a confident label."""
    confident: set[str] = set()
    for field_name, confidence in labels:
        if DROP_THRESHOLD <= confidence < ACCEPT_THRESHOLD:
            return True
        if confidence >= ACCEPT_THRESHOLD:
            confident.add(field_name)
    return len(confident) < len(FIELDS)


@dataclass
class CascadeSummary:
    """What the cascade did (or, for ``--dry-run``, would do)."""

    #: Papers in scope (all papers, or those --limit and the ids chose).
    papers: int
    #: Papers the learned annotator left doubtful: the ones sent to the LLM.
    sent: int
    #: Estimated LLM cost of the papers not sent (None: the model has no known price).
    saved_usd: float | None

    @property
    def share(self) -> float:
        return self.sent / self.papers if self.papers else 0.0


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the learned annotator's options, the LLM's) out of a cascade's options."""
    learned = {LEARNED_OPTIONS[k]: v for k, v in options.items() if k in LEARNED_OPTIONS}
    llm = {k: v for k, v in options.items() if k not in LEARNED_OPTIONS}
    return learned, llm


def scope(store: Store, limit: int | None, paper_ids: Sequence[str] | None) -> list[str]:
    """The papers a run with --limit and these ids covers, in ingest order."""
    where, params = "TRUE", []
    if paper_ids is not None:
        where = "paper_id IN (SELECT unnest(?::VARCHAR[]))"
        params.append(list(paper_ids))
    limit_sql = f"LIMIT {int(limit)}" if limit is not None else ""
    rows = store.con.execute(
        f"SELECT paper_id FROM papers WHERE {where} ORDER BY first_seen, paper_id {limit_sql}",
        params,
    ).fetchall()
    return [r[0] for r in rows]


def doubtful_stored(store: Store, learned: Any, paper_ids: Sequence[str]) -> list[str]:
    """Of these papers, those whose current learned annotation is doubtful (a paper
    the learned annotator could not label at all is doubtful too)."""
    rows = store.con.execute(
        "SELECT s.paper_id, l.field, l.confidence FROM annotation_status s "
        "LEFT JOIN annotation_labels l ON l.annotation_id = s.annotation_id AND l.kind = 'label' "
        "WHERE s.current AND s.annotator = ? AND s.model = ? "
        "AND s.paper_id IN (SELECT unnest(?::VARCHAR[]))",
        [learned.name, learned.model, list(paper_ids)],
    ).fetchall()
    labels: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for paper_id, field_name, confidence in rows:
        got = labels[paper_id]
        if field_name is not None:
            got.append((field_name, float(confidence)))
    return [p for p in paper_ids if p not in labels or needs_llm(labels[p])]


def doubtful_predicted(store: Store, learned: Any, paper_ids: Sequence[str]) -> list[str]:
    """As :func:`doubtful_stored`, from the learned model's answers computed now and
    kept nowhere (``--dry-run``)."""
    rows = store.con.execute(
        "SELECT paper_id, title, abstract FROM papers WHERE paper_id IN "
        "(SELECT unnest(?::VARCHAR[]))",
        [list(paper_ids)],
    ).fetchall()
    text = {pid: (title, abstract) for pid, title, abstract in rows}
    papers = [PaperInput(p, *text[p]) for p in paper_ids if p in text]
    results = learned.annotate_many(papers)
    out = []
    for paper, result in zip(papers, results, strict=True):
        if isinstance(result, AnnotationError):
            out.append(paper.paper_id)
            continue
        labels = [(f, lab.confidence) for f in FIELDS for lab in result.labels(f)]
        if needs_llm(labels):
            out.append(paper.paper_id)
    return out


def learned_annotator(store: Store, options: dict[str, Any]) -> Any:
    learned, _ = split_options(options)
    return get_annotator("learned", store=store, **learned)


def run_cascade(
    db: Store | Path,
    options: dict[str, Any],
    *,
    limit: int | None,
    paper_ids: Sequence[str] | None,
    run: Callable[..., Any],
    llm_cost: Callable[[list[str]], float | None],
) -> Any:
    """The learned annotator over the papers in scope, then the LLM over the doubtful.

    ``run(annotator, paper_ids, options)`` is one annotate run; ``llm_cost(ids)`` the
    LLM's estimated cost for these papers. Returns the LLM run's report, with
    ``.cascade`` (a :class:`CascadeSummary`) and the learned run's counts in ``.learned``.
    """
    learned_opts, llm_opts = split_options(options)
    if not llm_opts.get("model"):
        raise ConfigError(
            "--annotator cascade needs --model NAME for its LLM (e.g. gpt-4o-mini); "
            "--learned-model chooses the learned annotator's model"
        )
    # Given a path, the file is open only for these queries and as each run needs it, so
    # others can read the database during the LLM run, as during a plain one.
    with using(db) as store:
        ids = scope(store, limit, paper_ids)
    learned_report = run("learned", ids, learned_opts)
    with using(db) as store:
        sent = doubtful_stored(store, learned_annotator(store, options), ids)
    report = run("llm", sent, llm_opts)
    kept = sorted(set(ids) - set(sent))
    report.cascade = CascadeSummary(len(ids), len(sent), llm_cost(kept) if kept else 0.0)
    report.learned = learned_report
    return report
