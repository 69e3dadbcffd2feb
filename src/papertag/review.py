"""Human review of doubtful labels: the queue, decisions and their undo, conflicts, spreadsheets.

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

Every function takes an open :class:`~papertag.store.Store`; the terminal app
(:mod:`papertag.review_app`) and the CLI are thin layers over this module.
"""

from __future__ import annotations

import csv
import getpass
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .errors import BadRow, ConfigError, InputError, ReviewError, ReviewImportError
from .files import check_out_path, temp_beside
from .schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from .store import Store
from .taxonomy import FIELDS, Taxonomy, load_taxonomy

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


def _now() -> datetime:
    # Same clock as annotations.created_at: naive UTC.
    return datetime.now(UTC).replace(tzinfo=None)


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


def _insert(store: Store, values: Sequence[Any]) -> Decision:
    row = store.con.execute(
        "INSERT INTO review_decisions (paper_id, field, label, action, previous_value, new_value, "
        "reviewer, decided_at, annotation_id, confidence, reverts, source, note) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_DECISION_COLUMNS}",
        list(values),
    ).fetchone()
    if row is None:  # DuckDB always returns the inserted row; this keeps mypy honest.
        raise ReviewError("the decision was not recorded")
    return Decision(*row)


def _decision_values(
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
    values = _decision_values(
        paper_id,
        field,
        label,
        action,
        new_label,
        reviewer or default_reviewer(),
        annotation_id,
        confidence,
        source,
        _now(),
        note,
    )
    with store.transaction():
        return _insert(store, values)


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
        return _insert(
            store,
            (
                target.paper_id,
                target.field,
                target.label,
                "undo",
                target.new_value,
                target.previous_value,
                reviewer or default_reviewer(),
                _now(),
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


# ---------------------------------------------------------------- spreadsheets
#: Columns of an exported review sheet, in order. ``decision`` and ``new_label`` are the
#: reviewer's; the rest is context, and paper_id/field/label/annotation_id identify the row.
SHEET_COLUMNS: tuple[str, ...] = (
    "paper_id",
    "title",
    "field",
    "label",
    "confidence",
    "decision",
    "new_label",
    "note",
    "evidence",
    "definition",
    "other_labels",
    "kind",
    "annotation_id",
    "abstract",
)
_REQUIRED_COLUMNS = ("paper_id", "field", "label", "annotation_id", "decision", "new_label")


def _sheet_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".csv"):
        raise ConfigError(f"{path}: use a .xlsx or .csv file name (got {suffix or 'no suffix'!r})")
    return suffix[1:]


def _other_labels(ctx: PaperContext, item: QueueItem) -> str:
    return "; ".join(
        f"{pl.field}: {pl.label}" + (f" {pl.confidence:.2f}" if pl.confidence is not None else "")
        for pl in ctx.labels
        if (pl.field, pl.label) != (item.field, item.label) and pl.kind != "candidate"
    )


def export_sheet(
    store: Store,
    path: str | Path,
    *,
    accept: float = ACCEPT_THRESHOLD,
    drop: float = DROP_THRESHOLD,
    field: str | None = None,
    annotator: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
) -> int:
    """Write the review queue to ``path`` (.xlsx or .csv), one row per item; returns the count.

    An existing file (perhaps a sheet with decisions typed in) is replaced only with
    ``overwrite``; the sheet is written beside it and moved into place, so a failed export
    leaves whatever was there.

    Fill in ``decision`` (accept, reject, change, add, skip) and, for change and add,
    ``new_label``; a row may be added per missing label (paper_id, field, decision ``add``,
    new_label). ``note`` is free, and required when new_label is ``other`` (what it is).
    Then :func:`import_sheet`.
    """
    out = Path(path)
    fmt = _sheet_format(out)
    check_out_path(out, overwrite=overwrite)
    taxonomy = load_taxonomy()
    items = review_queue(
        store, accept=accept, drop=drop, field=field, annotator=annotator, limit=limit
    )
    contexts: dict[str, PaperContext] = {}
    rows: list[list[Any]] = []
    for item in items:
        ctx = contexts.get(item.paper_id)
        if ctx is None:
            ctx = contexts[item.paper_id] = paper_context(store, item.paper_id)
        rows.append(
            [
                item.paper_id,
                ctx.title,
                item.field,
                item.label,
                round(item.confidence, 3),
                "",
                "",
                "",
                item.evidence,
                taxonomy.definition(item.field, item.label),
                _other_labels(ctx, item),
                item.kind,
                item.annotation_id,
                ctx.abstract,
            ]
        )
    tmp = temp_beside(out)
    try:
        if fmt == "csv":
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(SHEET_COLUMNS)
                writer.writerows(rows)
        else:
            _write_xlsx(tmp, rows, taxonomy)
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def _write_xlsx(path: Path, rows: list[list[Any]], taxonomy: Taxonomy) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    wb = Workbook()
    ws = wb.active
    if ws is None:  # a new Workbook always has one sheet; this keeps mypy honest.
        ws = wb.create_sheet()
    ws.title = "review"
    ws.append(list(SHEET_COLUMNS))
    for row in rows:
        ws.append(row)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    ws.freeze_panes = "A2"
    widths = {"paper_id": 14, "title": 40, "field": 13, "label": 22, "confidence": 10,
              "decision": 10, "new_label": 22, "note": 30, "evidence": 50, "definition": 50,
              "other_labels": 40, "kind": 10, "annotation_id": 18, "abstract": 80}  # fmt: skip
    for i, name in enumerate(SHEET_COLUMNS, start=1):
        ws.column_dimensions[get_column_letter(i)].width = widths[name]
    for row_cells in ws.iter_rows(min_row=2):
        for cell in row_cells:
            cell.alignment = Alignment(vertical="top", wrap_text=False)
    # A drop-down of the decision words; typing something else is still caught on import.
    col = get_column_letter(SHEET_COLUMNS.index("decision") + 1)
    dv = DataValidation(
        type="list", formula1='"' + ",".join(DECISION_WORDS) + '"', allow_blank=True
    )
    dv.add(f"{col}2:{col}{max(len(rows) + 200, 2)}")
    ws.add_data_validation(dv)
    ids = wb.create_sheet("label ids")
    ids.append(["field", "id", "definition"])
    for cell in ids[1]:
        cell.font = Font(bold=True)
    for f in FIELDS:
        for label_id in taxonomy.ids(f):
            ids.append([f, label_id, taxonomy.definition(f, label_id)])
    ids.column_dimensions["A"].width = 14
    ids.column_dimensions["B"].width = 26
    ids.column_dimensions["C"].width = 100
    wb.save(path)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def read_sheet(path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """The data rows of a review sheet as (spreadsheet row number, {column: text})."""
    src = Path(path)
    fmt = _sheet_format(src)
    if not src.exists():
        raise InputError(src, "no such file")
    raw: list[list[Any]]
    try:
        if fmt == "csv":
            with src.open(encoding="utf-8-sig", newline="") as fh:
                raw = [list(r) for r in csv.reader(fh)]
        else:
            raw = _read_xlsx(src)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(src, f"cannot read: {exc}") from None
    if not raw:
        raise InputError(src, "empty file; expected a header row", line=1, kind="row")
    header = [_cell(h).lower() for h in raw[0]]
    missing = [c for c in _REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(
            src,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            "(export a sheet with `papertag review export` to get them)",
            line=1,
            kind="row",
        )
    out: list[tuple[int, dict[str, str]]] = []
    for number, values in enumerate(raw[1:], start=2):
        cells = {name: _cell(v) for name, v in zip(header, values, strict=False) if name}
        if any(cells.values()):
            out.append((number, cells))
    return out


def _read_xlsx(path: Path) -> list[list[Any]]:
    from zipfile import BadZipFile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except (BadZipFile, InvalidFileException, KeyError) as exc:
        raise InputError(path, f"not a readable .xlsx workbook ({exc})") from None
    try:
        ws = wb["review"] if "review" in wb.sheetnames else wb.worksheets[0]
        return [list(r) for r in ws.iter_rows(values_only=True)]
    finally:
        wb.close()


@dataclass(frozen=True)
class _Planned:
    row: int
    values: tuple[Any, ...]


@dataclass
class ImportReport:
    """What :func:`import_sheet` applied."""

    path: str
    applied: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # rows left blank or marked skip
    #: rows whose decision is already recorded, as it stands (an earlier import of the sheet)
    already: int = 0

    @property
    def total(self) -> int:
        return sum(self.applied.values())


def _plan_row(
    store: Store,
    taxonomy: Taxonomy,
    number: int,
    cells: dict[str, str],
    reviewer: str,
    now: datetime,
    touched: dict[tuple[str, str, str], int],
) -> tuple[_Planned | None, list[str]]:
    word = cells.get("decision", "").lower()
    if word in ("", "skip"):
        return None, []
    paper_id, field_name = cells.get("paper_id", ""), cells.get("field", "")
    label, new_label = cells.get("label", ""), cells.get("new_label", "")
    annotation_id, note = cells.get("annotation_id", ""), cells.get("note", "")
    if word not in DECISION_WORDS:
        return None, [f"unknown decision {word!r}; use one of: {', '.join(DECISION_WORDS)}"]
    if not paper_id or not store.scalar(
        "SELECT count(*) FROM papers WHERE paper_id = ?", [paper_id]
    ):
        return None, [f"unknown paper_id {paper_id!r}"]
    if field_name not in FIELDS:
        return None, [f"unknown field {field_name!r}; use one of: {', '.join(FIELDS)}"]
    allowed = taxonomy.ids(field_name)
    problems: list[str] = []
    if word in ("change", "add"):
        if not new_label:
            problems.append(f"{word} needs a new_label (a {field_name} id)")
        elif new_label not in allowed:
            problems.append(f"unknown {field_name} id {new_label!r} in new_label")
        elif word == "change" and new_label == label:
            problems.append(f"change to {new_label!r}, the label itself; write accept instead")
        elif (
            missing := other_needs_note(
                field_name, word, new_label if word == "add" else label, new_label, note
            )
        ) is not None:
            problems.append(missing.replace("needs a note", "needs a note in the note column"))
    elif new_label:
        problems.append(f"new_label {new_label!r} is only read with change or add")
    if problems:
        return None, problems
    confidence: float | None = None
    if word == "add":
        keys = [(paper_id, field_name, new_label)]
        label = new_label
    else:
        if label not in allowed:
            return None, [f"unknown {field_name} id {label!r} in label"]
        found = store.con.execute(
            "SELECT a.current, l.confidence FROM annotation_status a "
            "LEFT JOIN annotation_labels l ON l.annotation_id = a.annotation_id "
            "AND l.field = ? AND l.label = ? WHERE a.annotation_id = ? AND a.paper_id = ?",
            [field_name, label, annotation_id, paper_id],
        ).fetchone()
        if found is None or found[1] is None:
            return None, [
                f"{paper_id} {field_name} {label!r} is not in annotation {annotation_id!r}: "
                "the label changed since the export (or the row's identifying cells were edited)"
            ]
        if not found[0]:
            return None, [
                f"{paper_id} {field_name} {label!r}: the label changed since the export (the "
                f"paper was re-annotated; annotation {annotation_id} is no longer current)"
            ]
        confidence = float(found[1])
        keys = [(paper_id, field_name, label)]
        if word == "change":
            keys.append((paper_id, field_name, new_label))
    values = _decision_values(
        paper_id,
        field_name,
        label,
        word,
        new_label or None,
        reviewer,
        annotation_id or None,
        confidence,
        "spreadsheet",
        now,
        note,
    )
    if _already_applied(store, values, keys):
        for key in keys:
            touched.setdefault(key, number)
        return _ALREADY, []
    for key in keys:
        if key in touched:
            problems.append(
                f"{key[0]} {key[1]} {key[2]!r} is also decided in row {touched[key]}: "
                "the row is edited twice; keep one decision"
            )
        else:
            touched[key] = number
        verdict = store.con.execute(
            "SELECT reviewer, decided_at FROM review_verdicts "
            "WHERE paper_id = ? AND field = ? AND label = ?",
            list(key),
        ).fetchone()
        if verdict is not None:
            problems.append(
                f"{key[0]} {key[1]} {key[2]!r} changed since the export: {verdict[0]} decided it "
                f"at {verdict[1]:%Y-%m-%d %H:%M} UTC"
            )
    if problems:
        return None, problems
    return _Planned(number, values), []


#: What _plan_row returns for a row whose decision is already recorded as it stands.
_ALREADY = _Planned(0, ())


def _already_applied(
    store: Store, values: tuple[Any, ...], keys: list[tuple[str, str, str]]
) -> bool:
    """Whether the decision ``values`` describes is the standing verdict on each of ``keys``
    (the same action and new value, not undone and not decided otherwise since)."""
    paper_id, field_name, label, action, _, new_value = values[:6]
    row = store.con.execute(
        "SELECT max(d.decision_id) FROM review_decisions d WHERE d.paper_id = ? AND d.field = ? "
        "AND d.label = ? AND d.action = ? AND d.new_value IS NOT DISTINCT FROM ? AND d.decision_id "
        "NOT IN (SELECT reverts FROM review_decisions WHERE action = 'undo' AND reverts IS NOT NULL)",
        [paper_id, field_name, label, action, new_value],
    ).fetchone()
    decision = row[0] if row else None
    if decision is None:
        return False
    for key in keys:
        standing = store.con.execute(
            "SELECT decision_id FROM review_verdicts WHERE paper_id = ? AND field = ? AND label = ?",
            list(key),
        ).fetchone()
        if standing is None or standing[0] != decision:
            return False
    return True


def import_sheet(store: Store, path: str | Path, *, reviewer: str | None = None) -> ImportReport:
    """Apply a filled review sheet: every row is checked first, then all apply or none do.

    Raises :class:`~papertag.errors.ReviewImportError` listing each bad row (its number in
    the spreadsheet, header = row 1) and why: an unknown id or decision word, a label that
    changed since the export (re-annotated or decided otherwise meanwhile), a label decided
    in two rows. A row whose decision is already recorded as it stands (the sheet imported
    before, then filled further) is counted as already applied, not applied twice.
    """
    src = Path(path)
    rows = read_sheet(src)
    taxonomy = load_taxonomy()
    who = reviewer or default_reviewer()
    now = _now()
    report = ImportReport(str(src))
    planned: list[_Planned] = []
    bad: list[BadRow] = []
    touched: dict[tuple[str, str, str], int] = {}
    for number, cells in rows:
        plan, problems = _plan_row(store, taxonomy, number, cells, who, now, touched)
        bad.extend(BadRow(number, p) for p in problems)
        if plan is _ALREADY:
            report.already += 1
        elif plan is not None:
            planned.append(plan)
        elif not problems:
            report.skipped += 1
    if bad:
        raise ReviewImportError(src, bad)
    with store.transaction():
        for plan in planned:
            _insert(store, plan.values)
            action = str(plan.values[3])
            report.applied[action] = report.applied.get(action, 0) + 1
    return report


def summarize(decided: Iterable[Decision]) -> dict[str, int]:
    """Counts per action of decisions, undos netted out: what a session leaves behind."""
    items = list(decided)
    undone = {d.reverts for d in items if d.action == "undo"}
    counts: dict[str, int] = {}
    for d in items:
        if d.action != "undo" and d.decision_id not in undone:
            counts[d.action] = counts.get(d.action, 0) + 1
    return counts
