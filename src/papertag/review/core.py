"""Human review of doubtful labels: the queue, decisions and their undo, conflicts
(spreadsheets: :mod:`.sheets`).

The review queue is every current label and runner-up candidate whose confidence lies in
``[drop, accept)`` (defaults :data:`~papertag.schema.DROP_THRESHOLD` and
:data:`~papertag.schema.ACCEPT_THRESHOLD`) that no person has decided yet, plus every
*disputed* one at or above ``accept``: a (paper, field, label) that some of the paper's
current annotator keys (annotator, model) assign as a label and another does not. Nothing
below ``drop`` is queued. The items whose decision teaches most come first: those nearest
the decision boundary and those the annotators disagree on (see :func:`review_queue`). A decision is
keyed to (paper, field, label), not to the annotation, so it survives re-annotation; the
annotation it was made on is recorded too. Decisions are rows of the append-only
``review_decisions`` table, each written and committed at once; undo appends a reversal.
The ``final_labels`` view applies them.

Every function takes an open :class:`~papertag.db.Store`; the terminal app
(:mod:`papertag.review.app`) and the CLI are thin layers over this module.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..db import Store, utc_now
from ..errors import ConfigError, ReviewError
from ..schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from ..taxonomy import FIELDS, Taxonomy, load_taxonomy

Action = Literal["accept", "reject", "change", "add", "skip"]
ACTIONS: tuple[str, ...] = ("accept", "reject", "change", "add", "skip")
#: Words the decision column of a review spreadsheet may hold (blank means "not decided").
DECISION_WORDS: tuple[str, ...] = ACTIONS


def default_reviewer() -> str:
    """The user name of whoever runs papertag (``$USER`` when the system has none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


def _check_thresholds(accept: float, drop: float) -> None:
    if not 0.0 <= drop <= accept <= 1.0:
        raise ConfigError(
            f"thresholds must satisfy 0 <= drop <= accept <= 1; got drop {drop}, accept {accept}"
        )


# ---------------------------------------------------------------------- queue
@dataclass(frozen=True)
class QueueItem:
    """One doubtful label or candidate awaiting a person's decision."""

    paper_id: str
    field: str
    label: str
    kind: str  # 'label' (assigned by the model) or 'candidate' (runner-up)
    confidence: float
    evidence: str
    note: str | None
    annotation_id: str
    annotator: str
    model: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.paper_id, self.field, self.label)


# The queue puts first the items whose decision teaches most: those nearest the decision
# boundary, by their distance abs(confidence - 0.5) (0 at the boundary, 0.5 at certainty),
# and those the annotators disagree on. A disputed item's distance counts DISPUTE_BONUS less,
# floored at 0: a disagreement means one of the annotators is wrong whatever its confidence,
# so a person's verdict there corrects at least one of them. A disputed 0.95 (0.45 - 0.25)
# thus ranks with an undisputed 0.70, and a disputed label between 0.25 and 0.75 with the
# most uncertain of all; on equal distance the disputed item comes first. The distance is
# rounded to 6 places so that equal ones compare equal despite float arithmetic.
DISPUTE_BONUS = 0.25

_QUEUE_SQL = f"""
WITH items AS (
    SELECT paper_id, field, label, 'label' AS kind, confidence, evidence, note,
           annotation_id, annotator, model
    FROM labels WHERE current
    UNION ALL
    SELECT paper_id, field, label, 'candidate' AS kind, confidence, evidence, note,
           annotation_id, annotator, model
    FROM candidates WHERE current
),
-- A disagreement is a fact about the paper, so it is found over every current annotation,
-- whatever the field and annotator filters: a (paper, field, label) assigned as a label by
-- some but not all of the paper's current annotator keys (there are then two or more).
paper_keys AS (
    SELECT paper_id, count(DISTINCT (annotator, model)) AS n_keys
    FROM annotation_status WHERE current
    GROUP BY paper_id
),
disputed AS (
    SELECT l.paper_id, l.field, l.label
    FROM labels l JOIN paper_keys k USING (paper_id)
    WHERE l.current
    GROUP BY l.paper_id, l.field, l.label, k.n_keys
    HAVING count(DISTINCT (l.annotator, l.model)) < k.n_keys
),
scored AS (
    SELECT i.*, d.paper_id IS NOT NULL AS disputed,
           round(CASE WHEN d.paper_id IS NULL THEN abs(i.confidence - 0.5)
                      ELSE greatest(abs(i.confidence - 0.5) - {DISPUTE_BONUS}, 0) END,
                 6) AS distance
    FROM items i
    LEFT JOIN disputed d ON d.paper_id = i.paper_id AND d.field = i.field AND d.label = i.label
),
doubtful AS (
    SELECT *,
           -- A paper's place in the queue counts its decided items too, so a half-reviewed
           -- paper keeps its place and the next session resumes with it.
           min(distance) OVER (PARTITION BY paper_id) AS paper_distance,
           bool_or(disputed) OVER (PARTITION BY paper_id) AS paper_disputed,
           count(DISTINCT (field, label)) OVER (PARTITION BY paper_id) AS paper_items
    FROM scored
    -- A disputed item is queued at or above accept too: a person's verdict there teaches most.
    WHERE confidence >= $drop AND (confidence < $accept OR disputed)
      AND ($field IS NULL OR field = $field)
      AND ($annotator IS NULL OR annotator = $annotator)
),
open_items AS (
    SELECT * FROM doubtful d
    WHERE NOT EXISTS (
          SELECT 1 FROM review_verdicts v
          WHERE v.paper_id = d.paper_id AND v.field = d.field AND v.label = d.label)
    -- Several annotators may doubt the same label: review it once, as its most uncertain copy.
    QUALIFY row_number() OVER (
        PARTITION BY paper_id, field, label
        ORDER BY abs(confidence - 0.5), annotator, model) = 1
),
skipped AS (
    -- A skip (not undone) sends its item to the end of the queue, in every later session too.
    SELECT paper_id, field, label, max(decision_id) AS skipped_at
    FROM review_decisions
    WHERE action = 'skip'
      AND decision_id NOT IN (
          SELECT reverts FROM review_decisions WHERE action = 'undo' AND reverts IS NOT NULL)
    GROUP BY paper_id, field, label
)
SELECT o.paper_id, o.field, o.label, kind, confidence, evidence, note, annotation_id, annotator,
       model
FROM open_items o
LEFT JOIN skipped s ON s.paper_id = o.paper_id AND s.field = o.field AND s.label = o.label
-- The paper with the item nearest the boundary first (on a tie, one with a disagreement),
-- with all of its queued labels together (one reading of the abstract settles them all);
-- within a paper, field by field, the nearest first, a disputed item before an agreement
-- as near. Skipped items after all others, the earliest skipped first.
ORDER BY s.skipped_at NULLS FIRST, paper_distance, paper_disputed DESC, paper_items DESC,
         o.paper_id,
         CASE o.field WHEN 'technique' THEN 0 WHEN 'modality' THEN 1 ELSE 2 END,
         distance, disputed DESC, abs(confidence - 0.5), o.label
"""


def review_queue(
    store: Store,
    *,
    accept: float = ACCEPT_THRESHOLD,
    drop: float = DROP_THRESHOLD,
    field: str | None = None,
    annotator: str | None = None,
    limit: int | None = None,
) -> list[QueueItem]:
    """The labels and candidates awaiting review, the most useful decisions first.

    An item is a current label or candidate with ``drop <= confidence < accept`` that no
    person has decided, or a *disputed* one with ``confidence >= drop`` (at or above
    ``accept`` too): some of its paper's current annotator keys (annotator, model) assign it
    as a label and another does not. Each (paper, field, label) is queued once, as its
    copy nearest 0.5. Order: by distance from the boundary, ``abs(confidence - 0.5)``,
    less :data:`DISPUTE_BONUS` (floored at 0) when disputed, nearest first and a disputed
    item first on equal distance; the paper with the nearest item first, its items
    together, field by field; skipped items last, the earliest skipped first. ``field`` and
    ``annotator`` choose which items are shown; disagreements are found among all current
    annotations of the paper.
    """
    _check_thresholds(accept, drop)
    if field is not None and field not in FIELDS:
        raise ConfigError(f"unknown field {field!r}; use one of: {', '.join(FIELDS)}")
    if limit is not None and limit < 0:
        raise ConfigError("--limit must be 0 or more")
    sql = _QUEUE_SQL + (f" LIMIT {int(limit)}" if limit is not None else "")
    rows = store.con.execute(
        sql, {"accept": accept, "drop": drop, "field": field, "annotator": annotator}
    ).fetchall()
    return [QueueItem(*row) for row in rows]


def is_decided(store: Store, paper_id: str, field: str, label: str) -> bool:
    """Whether a person's verdict on this (paper, field, label) stands."""
    return bool(
        store.scalar(
            "SELECT count(*) FROM review_verdicts WHERE paper_id = ? AND field = ? AND label = ?",
            [paper_id, field, label],
        )
    )


# ------------------------------------------------------------------ decisions
@dataclass(frozen=True)
class Decision:
    """One row of ``review_decisions``."""

    decision_id: int
    paper_id: str
    field: str
    label: str
    action: str
    previous_value: str | None
    new_value: str | None
    reviewer: str
    decided_at: datetime
    annotation_id: str | None
    confidence: float | None
    reverts: int | None
    source: str
    #: The person's words: what an 'other' label is (required then), or any comment.
    note: str | None = None


_DECISION_COLUMNS = (
    "decision_id, paper_id, field, label, action, previous_value, new_value, reviewer, "
    "decided_at, annotation_id, confidence, reverts, source, note"
)


def _check_ids(taxonomy: Taxonomy, field_name: str, *labels: str) -> None:
    if field_name not in FIELDS:
        raise ReviewError(f"unknown field {field_name!r}; use one of: {', '.join(FIELDS)}")
    allowed = taxonomy.ids(field_name)
    for label in labels:
        if label not in allowed:
            raise ReviewError(
                f"{label!r} is not a {field_name} id; use one of: {', '.join(allowed)}"
            )


def insert_decision(store: Store, values: Sequence[Any]) -> Decision:
    row = store.con.execute(
        "INSERT INTO review_decisions (paper_id, field, label, action, previous_value, new_value, "
        "reviewer, decided_at, annotation_id, confidence, reverts, source, note) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_DECISION_COLUMNS}",
        list(values),
    ).fetchone()
    if row is None:  # DuckDB always returns the inserted row; this keeps mypy honest.
        raise ReviewError("the decision was not recorded")
    return Decision(*row)


def decision_values(
    paper_id: str,
    field_name: str,
    label: str,
    action: str,
    new_label: str | None,
    reviewer: str,
    annotation_id: str | None,
    confidence: float | None,
    source: str,
    now: datetime,
    note: str | None = None,
) -> tuple[Any, ...]:
    note = (note or "").strip() or None
    if action == "add":
        # The row is about the added label; it did not exist before.
        return (paper_id, field_name, label, "add", None, label, reviewer, now, annotation_id,
                confidence, None, source, note)  # fmt: skip
    # A skip leaves the label as it was; it only sends the item to the end of the queue.
    new_value = {"accept": label, "reject": None, "change": new_label, "skip": label}[action]
    return (paper_id, field_name, label, action, label, new_value, reviewer, now, annotation_id,
            confidence, None, source, note)  # fmt: skip


#: The label id whose meaning a person must spell out in a note (the taxonomy's catch-all).
OTHER = "other"


def other_needs_note(field_name: str, action: str, label: str, new_label: str | None,
                     note: str | None) -> str | None:  # fmt: skip
    """Why a decision that sets ``other`` lacks its note, or None if it needs none or has one."""
    sets = new_label if action == "change" else label if action == "add" else None
    if sets == OTHER and not (note and note.strip()):
        return f"{action} to {OTHER!r} needs a note: a few words saying what the {field_name} is"
    return None


def _validate_decision(
    store: Store,
    taxonomy: Taxonomy,
    paper_id: str,
    field_name: str,
    label: str,
    action: str,
    new_label: str | None,
    note: str | None = None,
) -> None:
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action!r}; use one of: {', '.join(ACTIONS)}")
    if not store.scalar("SELECT count(*) FROM papers WHERE paper_id = ?", [paper_id]):
        raise ReviewError(f"unknown paper_id {paper_id!r}")
    if action == "change":
        if not new_label:
            raise ReviewError("change needs the new label id")
        if new_label == label:
            raise ReviewError(f"change: {label!r} is already the label; accept it instead")
        _check_ids(taxonomy, field_name, label, new_label)
    elif new_label:
        raise ReviewError(f"{action} takes no new label (got {new_label!r}); use change")
    else:
        _check_ids(taxonomy, field_name, label)
    if (missing := other_needs_note(field_name, action, label, new_label, note)) is not None:
        raise ReviewError(missing)


def record_decision(
    store: Store,
    paper_id: str,
    field: str,
    label: str,
    action: str,
    *,
    new_label: str | None = None,
    reviewer: str | None = None,
    annotation_id: str | None = None,
    confidence: float | None = None,
    source: str = "api",
    note: str | None = None,
) -> Decision:
    """Record one decision and commit it at once.

    ``action`` is ``accept``, ``reject``, ``change`` (to ``new_label``) or ``add`` (``label``
    is the label a person adds). ``annotation_id`` and ``confidence`` say what the reviewer
    was shown; the decision itself is keyed to (paper, field, label). ``note`` is the
    person's words, required when the label set is ``other`` (what it is).
    """
    taxonomy = load_taxonomy()
    _validate_decision(store, taxonomy, paper_id, field, label, action, new_label, note)
    values = decision_values(
        paper_id,
        field,
        label,
        action,
        new_label,
        reviewer or default_reviewer(),
        annotation_id,
        confidence,
        source,
        utc_now(),
        note,
    )
    with store.transaction():
        return insert_decision(store, values)


def decide(
    store: Store,
    item: QueueItem,
    action: str,
    *,
    new_label: str | None = None,
    reviewer: str | None = None,
    source: str = "api",
    note: str | None = None,
) -> Decision:
    """Accept, reject or change a queued item (see :func:`record_decision`)."""
    if action == "add":
        raise ReviewError("add is not a decision on a queued label; use add_label")
    return record_decision(
        store,
        item.paper_id,
        item.field,
        item.label,
        action,
        new_label=new_label,
        reviewer=reviewer,
        annotation_id=item.annotation_id,
        confidence=item.confidence,
        source=source,
        note=note,
    )


def add_label(
    store: Store,
    paper_id: str,
    field: str,
    label: str,
    *,
    reviewer: str | None = None,
    annotation_id: str | None = None,
    source: str = "api",
    note: str | None = None,
) -> Decision:
    """Record that a person adds a label the model missed (``other`` needs a ``note``)."""
    return record_decision(
        store,
        paper_id,
        field,
        label,
        "add",
        reviewer=reviewer,
        annotation_id=annotation_id,
        source=source,
        note=note,
    )


def get_decision(store: Store, decision_id: int) -> Decision:
    row = store.con.execute(
        f"SELECT {_DECISION_COLUMNS} FROM review_decisions WHERE decision_id = ?", [decision_id]
    ).fetchone()
    if row is None:
        raise ReviewError(f"no review decision {decision_id}")
    return Decision(*row)


def undo_decision(
    store: Store, decision_id: int, *, reviewer: str | None = None, source: str = "api"
) -> Decision:
    """Append a reversal of decision ``decision_id``; nothing is deleted."""
    target = get_decision(store, decision_id)
    if target.action == "undo":
        raise ReviewError(f"decision {decision_id} is itself an undo; record the decision again")
    with store.transaction():
        if store.scalar(
            "SELECT count(*) FROM review_decisions WHERE action = 'undo' AND reverts = ?",
            [decision_id],
        ):
            raise ReviewError(f"decision {decision_id} is already undone")
        return insert_decision(
            store,
            (
                target.paper_id,
                target.field,
                target.label,
                "undo",
                target.new_value,
                target.previous_value,
                reviewer or default_reviewer(),
                utc_now(),
                target.annotation_id,
                target.confidence,
                decision_id,
                source,
                None,
            ),
        )


def decisions(store: Store, paper_id: str | None = None) -> list[Decision]:
    """Every decision (of one paper, if given), oldest first."""
    rows = store.con.execute(
        f"SELECT {_DECISION_COLUMNS} FROM review_decisions "
        "WHERE $paper IS NULL OR paper_id = $paper ORDER BY decision_id",
        {"paper": paper_id},
    ).fetchall()
    return [Decision(*r) for r in rows]


# -------------------------------------------------------------- paper context
@dataclass(frozen=True)
class PaperLabel:
    """A label of a paper as it stands: the model's current label, or a person's verdict."""

    field: str
    label: str
    confidence: float | None
    kind: str  # 'label', 'candidate' or 'person'
    annotator: str | None
    decided_by: str | None  # 'model' / 'person' when the label is in final_labels, else None


@dataclass(frozen=True)
class PaperContext:
    paper_id: str
    title: str
    abstract: str
    labels: list[PaperLabel] = field(default_factory=list)


def paper_context(store: Store, paper_id: str) -> PaperContext:
    """Title, abstract and every current label/candidate of a paper, with person verdicts."""
    row = store.con.execute(
        "SELECT title, abstract FROM papers WHERE paper_id = ?", [paper_id]
    ).fetchone()
    if row is None:
        raise ReviewError(f"unknown paper_id {paper_id!r}")
    rows = store.con.execute(
        """
        WITH model AS (
            SELECT field, label, max(confidence) AS confidence, min(kind) AS kind,
                   min(annotator) AS annotator
            FROM (SELECT field, label, confidence, 'label' AS kind, annotator
                  FROM labels WHERE current AND paper_id = $p
                  UNION ALL
                  SELECT field, label, confidence, 'candidate', annotator
                  FROM candidates WHERE current AND paper_id = $p)
            GROUP BY field, label
        ),
        person AS (SELECT field, label, included FROM review_verdicts WHERE paper_id = $p),
        final AS (SELECT DISTINCT field, label, decided_by FROM final_labels WHERE paper_id = $p)
        SELECT j.*, f.decided_by
        FROM (SELECT coalesce(m.field, v.field) AS field, coalesce(m.label, v.label) AS label,
                     m.confidence, coalesce(m.kind, 'person') AS kind, m.annotator
              FROM model m FULL JOIN person v ON v.field = m.field AND v.label = m.label) j
        LEFT JOIN final f USING (field, label)
        ORDER BY list_position(['technique', 'modality', 'target_metric'], j.field),
                 j.confidence DESC NULLS FIRST, j.label
        """,
        {"p": paper_id},
    ).fetchall()
    return PaperContext(paper_id, row[0], row[1], [PaperLabel(*r) for r in rows])


def evidence_span(text: str, evidence: str) -> tuple[int, int] | None:
    """Where ``evidence`` occurs in ``text``, matching up to whitespace and case (as validated)."""
    words = evidence.split()
    if not words:
        return None
    m = re.search(r"\s+".join(re.escape(w) for w in words), text, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None


# ------------------------------------------------------------------ conflicts
@dataclass(frozen=True)
class Conflict:
    """A current annotation that disagrees with a person's standing verdict (the person wins)."""

    paper_id: str
    field: str
    label: str
    person_says: str  # 'keep' or 'drop'
    reviewer: str
    decided_at: datetime
    annotator: str  # of the newer annotation that disagrees
    model: str
    annotation_id: str
    model_confidence: float | None  # None: the annotation does not offer the label at all


def conflicts(
    store: Store, *, accept: float = ACCEPT_THRESHOLD, drop: float = DROP_THRESHOLD
) -> list[Conflict]:
    """Verdicts that a current annotation made after the decision contradicts.

    A person kept a label the annotation no longer offers (or offers below ``drop``), or
    dropped one it now gives at ``accept`` or above. ``final_labels`` keeps the person's word.
    """
    _check_thresholds(accept, drop)
    rows = store.con.execute(
        """
        SELECT v.paper_id, v.field, v.label, CASE WHEN v.included THEN 'keep' ELSE 'drop' END,
               v.reviewer, v.decided_at, s.annotator, s.model, s.annotation_id, m.confidence
        FROM review_verdicts v
        JOIN annotation_status s
          ON s.paper_id = v.paper_id AND s.current AND s.created_at > v.decided_at
        LEFT JOIN annotation_labels m
          ON m.annotation_id = s.annotation_id AND m.field = v.field AND m.label = v.label
        WHERE (v.included AND (m.label IS NULL OR m.confidence < $drop))
           OR (NOT v.included AND m.kind = 'label' AND m.confidence >= $accept)
        ORDER BY v.paper_id, v.field, v.label, s.annotator, s.model
        """,
        {"accept": accept, "drop": drop},
    ).fetchall()
    return [Conflict(*r) for r in rows]


def summarize(decided: Iterable[Decision]) -> dict[str, int]:
    """Counts per action of decisions, undos netted out: what a session leaves behind."""
    items = list(decided)
    undone = {d.reverts for d in items if d.action == "undo"}
    counts: dict[str, int] = {}
    for d in items:
        if d.action != "undo" and d.decision_id not in undone:
            counts[d.action] = counts.get(d.action, 0) + 1
    return counts
