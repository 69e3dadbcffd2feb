"""Why a paper has its labels: everything the database knows about one paper.

:func:`find_paper` resolves what a person types (a paper id, an arXiv id, or words of the
title); :func:`paper_details` gathers the paper's text, every annotation of it (current
first) with its labels, candidates and evidence, the LLM calls behind them, and the
review decisions about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..db import Store
from ..errors import ConfigError
from ..ingest import parse_arxiv_id


@dataclass(frozen=True)
class ShownLabel:
    field: str
    label: str
    kind: str  # 'label' or 'candidate'
    rank: int
    confidence: float
    evidence: str
    note: str | None


@dataclass
class ShownAnnotation:
    annotation_id: str
    annotator: str
    model: str
    prompt_version: str
    taxonomy_version: str
    created_at: datetime
    current: bool
    labels: list[ShownLabel] = field(default_factory=list)


@dataclass(frozen=True)
class ShownCall:
    call_id: int
    annotation_id: str | None
    model: str
    status: int | None
    attempt: int
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    started_at: datetime
    error: str | None


@dataclass(frozen=True)
class ShownDecision:
    decision_id: int
    field: str
    label: str
    action: str
    new_value: str | None
    reviewer: str
    decided_at: datetime
    note: str | None


@dataclass
class PaperDetails:
    paper_id: str
    title: str
    abstract: str
    arxiv_id: str | None
    url: str | None
    digests: list[str]
    annotations: list[ShownAnnotation]
    calls: list[ShownCall]
    decisions: list[ShownDecision]


def find_paper(store: Store, query: str) -> str:
    """The paper_id of the one paper ``query`` names: its paper id, its arXiv id (or arXiv
    URL), or words that all occur in its title. Several or none is a :class:`ConfigError`."""
    text = query.strip()
    if not text:
        raise ConfigError("give a paper id, an arXiv id or words of the title")
    row = store.con.execute("SELECT paper_id FROM papers WHERE paper_id = ?", [text]).fetchone()
    if row is not None:
        return str(row[0])
    arxiv = parse_arxiv_id(text)
    if arxiv is not None:
        row = store.con.execute(
            "SELECT paper_id FROM papers WHERE arxiv_id = ?", [arxiv]
        ).fetchone()
        if row is not None:
            return str(row[0])
    words = text.lower().split()
    rows = store.con.execute(
        "SELECT paper_id, title FROM papers "
        "WHERE list_bool_and([contains(lower(title), w) FOR w IN ?::VARCHAR[]]) "
        "ORDER BY first_seen, paper_id LIMIT 6",
        [words],
    ).fetchall()
    if not rows:
        raise ConfigError(f"no paper matches {text!r} (by paper id, arXiv id or title words)")
    if len(rows) > 1:
        shown = "; ".join(f"{pid} {title[:60]!r}" for pid, title in rows[:5])
        more = ", and more" if len(rows) > 5 else ""
        raise ConfigError(
            f"{text!r} matches several papers: {shown}{more}; give more words or an id"
        )
    return str(rows[0][0])


def paper_details(store: Store, query: str) -> PaperDetails:
    """Everything about the paper ``query`` names (see :func:`find_paper`)."""
    pid = find_paper(store, query)
    title, abstract, arxiv_id, url = _one(
        store, "SELECT title, abstract, arxiv_id, url FROM papers WHERE paper_id = ?", pid
    )
    digests = [
        str(r[0])
        for r in store.con.execute(
            "SELECT DISTINCT digest_id FROM digest_papers WHERE paper_id = ? ORDER BY 1", [pid]
        ).fetchall()
    ]
    annotations: dict[str, ShownAnnotation] = {}
    for row in store.con.execute(
        "SELECT annotation_id, annotator, model, prompt_version, taxonomy_version, created_at, "
        "current FROM annotation_status WHERE paper_id = ? "
        "ORDER BY current DESC, created_at DESC, annotation_id",
        [pid],
    ).fetchall():
        aid, annotator, model, prompt, taxonomy, created, current = row
        annotations[aid] = ShownAnnotation(
            aid, annotator, model, prompt, taxonomy, created, bool(current)
        )
    for aid, *rest in store.con.execute(
        "SELECT l.annotation_id, l.field, l.label, l.kind, l.rank, l.confidence, l.evidence, l.note "
        "FROM annotation_labels l JOIN annotations a USING (annotation_id) WHERE a.paper_id = ? "
        "ORDER BY list_position(['technique', 'modality', 'target_metric'], l.field), "
        "l.kind DESC, l.rank",
        [pid],
    ).fetchall():
        annotations[aid].labels.append(ShownLabel(*rest))
    calls = [
        ShownCall(*r)
        for r in store.con.execute(
            "SELECT call_id, annotation_id, model, status, attempt, prompt_tokens, "
            "completion_tokens, cost_usd, started_at, error FROM llm_calls WHERE paper_id = ? "
            "ORDER BY call_id",
            [pid],
        ).fetchall()
    ]
    decisions = [
        ShownDecision(*r)
        for r in store.con.execute(
            "SELECT decision_id, field, label, action, new_value, reviewer, decided_at, note "
            "FROM review_decisions WHERE paper_id = ? ORDER BY decision_id",
            [pid],
        ).fetchall()
    ]
    return PaperDetails(
        pid, title, abstract, arxiv_id, url, digests, list(annotations.values()), calls, decisions
    )


def _one(store: Store, sql: str, *params: Any) -> tuple[Any, ...]:
    row = store.con.execute(sql, list(params)).fetchone()
    if row is None:
        raise ConfigError("the paper disappeared while it was read")
    return tuple(row)
