"""Review in a spreadsheet (CSV or XLSX): export the queue with each label's evidence and
definition, fill in the decision column anywhere, import it back. An import checks every
row first and applies all or nothing; a row identical to a decision already recorded is
"already applied", one decided differently meanwhile is a conflict.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..db import Store, utc_now
from ..errors import BadRow, ConfigError, InputError, ReviewImportError
from ..files import check_out_path, temp_beside
from ..schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from ..taxonomy import FIELDS, Taxonomy, load_taxonomy
from .core import (
    DECISION_WORDS,
    PaperContext,
    QueueItem,
    decision_values,
    default_reviewer,
    insert_decision,
    other_needs_note,
    paper_context,
    review_queue,
)

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
    values = decision_values(
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
    now = utc_now()
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
            insert_decision(store, plan.values)
            action = str(plan.values[3])
            report.applied[action] = report.applied.get(action, 0) + 1
    return report
