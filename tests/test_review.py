"""Review library: queue, decisions and undo, final_labels, conflicts, spreadsheet round trip."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from openpyxl import load_workbook
from typer.testing import CliRunner

from papertag.annotate import annotate_papers
from papertag.annotators import PaperInput, get_annotator
from papertag.cli import app
from papertag.db import Store
from papertag.errors import ConfigError, ReviewError, ReviewImportError
from papertag.ingest import ingest_digests
from papertag.review import (
    SHEET_COLUMNS,
    QueueItem,
    add_label,
    conflicts,
    decide,
    decisions,
    export_sheet,
    import_sheet,
    is_decided,
    record_decision,
    review_queue,
    undo_decision,
)
from papertag.schema import ACCEPT_THRESHOLD, DROP_THRESHOLD, Annotation, validate_annotation
from papertag.taxonomy import load_taxonomy

from .conftest import DIGESTS, FINAL_LABELS_COLUMNS, ROOT


@pytest.fixture(scope="session")
def review_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real database: one shared digest ingested, its first 15 papers annotated by rules."""
    db = tmp_path_factory.mktemp("review") / "template.duckdb"
    assert ingest_digests([DIGESTS[-1]], db).ok
    assert annotate_papers(db, "rules", limit=15).done == 15
    return db


@pytest.fixture
def review_db(review_template: Path, db_path: Path) -> Path:
    shutil.copy(review_template, db_path)
    return db_path


def final(store: Store, paper_id: str, field: str) -> dict[str, str]:
    """label -> decided_by in final_labels for one paper and field."""
    rows = store.con.execute(
        "SELECT label, decided_by FROM final_labels WHERE paper_id = ? AND field = ?",
        [paper_id, field],
    ).fetchall()
    return dict(rows)


def other_id(item: QueueItem, *avoid: str) -> str:
    return next(
        i for i in load_taxonomy().ids(item.field) if i not in (item.label, *avoid, "other")
    )


def reannotate(db: Path, paper_id: str, title: str, abstract: str) -> None:
    """A new abstract for a known paper (same title): the paper gets a new current annotation."""
    src = db.parent / "update.jsonl"
    src.write_text(json.dumps({"title": title, "abstract": abstract}) + "\n", encoding="utf-8")
    assert ingest_digests([src], db).ok
    assert annotate_papers(db, "rules", paper_ids=[paper_id]).done == 1


# ------------------------------------------------------------------- queue
def test_queue_holds_doubtful_undecided_items_most_uncertain_paper_first(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)
        expected = s.scalar(
            "SELECT count(*) FROM (SELECT paper_id, field, label FROM labels WHERE current "
            "AND confidence >= ? AND confidence < ? UNION SELECT paper_id, field, label FROM "
            "candidates WHERE current AND confidence >= ? AND confidence < ?)",
            [DROP_THRESHOLD, ACCEPT_THRESHOLD] * 2,
        )
    assert len(queue) == expected > 10
    assert all(DROP_THRESHOLD <= i.confidence < ACCEPT_THRESHOLD for i in queue)
    assert {i.kind for i in queue} == {"label", "candidate"}
    assert len({i.key for i in queue}) == len(queue)
    # One paper's items are together, and the first paper holds the most uncertain item.
    papers = [i.paper_id for i in queue]
    runs = [p for n, p in enumerate(papers) if n == 0 or papers[n - 1] != p]
    assert len(runs) == len(set(papers))
    # (Distances are compared as the queue does, to 6 places: equal ones are ties.)
    closest = min(round(abs(i.confidence - 0.5), 6) for i in queue)
    assert (
        min(round(abs(i.confidence - 0.5), 6) for i in queue if i.paper_id == papers[0]) == closest
    )


def test_queue_filters(review_db: Path) -> None:
    with Store(review_db) as s:
        everything = review_queue(s)
        tech = review_queue(s, field="modality")
        assert tech and {i.field for i in tech} == {"modality"}
        assert review_queue(s, limit=3) == everything[:3]
        assert review_queue(s, annotator="rules") == everything
        assert review_queue(s, annotator="nobody") == []
        narrow = review_queue(s, accept=0.6, drop=0.5)
        assert narrow and all(0.5 <= i.confidence < 0.6 for i in narrow)
        with pytest.raises(ConfigError, match="drop <= accept"):
            review_queue(s, accept=0.2, drop=0.5)
        with pytest.raises(ConfigError, match="unknown field"):
            review_queue(s, field="colour")


# --------------------------------------------------------------- decisions
def test_decisions_are_applied_in_final_labels_and_leave_the_queue(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)
        a, r, c = queue[0], queue[1], queue[2]
        new = other_id(c, *final(s, c.paper_id, c.field))
        decide(s, a, "accept", reviewer="ann")
        decide(s, r, "reject", reviewer="ann")
        decide(s, c, "change", new_label=new, reviewer="ann")
        add_label(s, a.paper_id, "modality", "audio", reviewer="bob")

        assert final(s, a.paper_id, a.field)[a.label] == "person"
        assert r.label not in final(s, r.paper_id, r.field)
        after_change = final(s, c.paper_id, c.field)
        assert c.label not in after_change and after_change[new] == "person"
        assert final(s, a.paper_id, "modality")["audio"] == "person"
        row = s.con.execute(
            "SELECT confidence, evidence, reviewer, annotation_id FROM final_labels "
            "WHERE paper_id = ? AND field = ? AND label = ?",
            [a.paper_id, a.field, a.label],
        ).fetchone()
        assert row == (a.confidence, a.evidence, "ann", a.annotation_id)
        added = s.con.execute(
            "SELECT confidence, evidence, reviewer FROM final_labels "
            "WHERE paper_id = ? AND field = 'modality' AND label = 'audio'",
            [a.paper_id],
        ).fetchone()
        assert added == (None, None, "bob")
        left = {i.key for i in review_queue(s)}
        assert not left & {a.key, r.key, c.key}
        assert len(left) == len(queue) - 3
        trail = [(d.action, d.label, d.previous_value, d.new_value) for d in decisions(s)]
        assert trail == [
            ("accept", a.label, a.label, a.label),
            ("reject", r.label, r.label, None),
            ("change", c.label, c.label, new),
            ("add", "audio", None, "audio"),
        ]
        # A model label nobody touched stays the model's.
        untouched = s.con.execute(
            "SELECT count(*) FROM final_labels WHERE decided_by = 'model'"
        ).fetchone()
        model_only = s.scalar(
            "SELECT count(*) FROM labels WHERE current AND confidence >= ?", [ACCEPT_THRESHOLD]
        )
        assert untouched == (model_only,)


def test_undo_appends_a_reversal_and_restores_the_item(review_db: Path) -> None:
    with Store(review_db) as s:
        item = review_queue(s)[0]
        before = final(s, item.paper_id, item.field)
        d = decide(s, item, "reject", reviewer="ann")
        assert item.label not in final(s, item.paper_id, item.field)
        u = undo_decision(s, d.decision_id, reviewer="ann")
        assert (u.action, u.reverts, u.previous_value, u.new_value) == (
            "undo",
            d.decision_id,
            None,
            item.label,
        )
        assert final(s, item.paper_id, item.field) == before
        assert review_queue(s)[0] == item
        assert [x.action for x in decisions(s)] == ["reject", "undo"]  # nothing deleted
        with pytest.raises(ReviewError, match="already undone"):
            undo_decision(s, d.decision_id)
        with pytest.raises(ReviewError, match="itself an undo"):
            undo_decision(s, u.decision_id)


def test_cli_undo_reverses_one_decision(review_db: Path) -> None:
    with Store(review_db) as s:
        item = review_queue(s)[0]
        before = final(s, item.paper_id, item.field)
        d = decide(s, item, "reject", reviewer="ann")
    runner = CliRunner()
    result = runner.invoke(app, ["review", "undo", str(d.decision_id), "--reviewer", "bob"])
    assert result.exit_code == 0, result.output
    assert f"undid decision {d.decision_id}" in result.output
    with Store(review_db) as s:
        last = decisions(s)[-1]
        assert (last.action, last.reverts, last.reviewer, last.source) == (
            "undo",
            d.decision_id,
            "bob",
            "cli",
        )
        assert final(s, item.paper_id, item.field) == before
    again = runner.invoke(app, ["review", "undo", str(d.decision_id)])
    assert again.exit_code == 1 and "already undone" in again.output
    missing = runner.invoke(app, ["review", "undo", "999999"])
    assert missing.exit_code == 1 and "no review decision 999999" in missing.output


def test_bad_decisions_are_refused(review_db: Path) -> None:
    with Store(review_db) as s:
        item = review_queue(s)[0]
        with pytest.raises(ReviewError, match="is not a technique id"):
            record_decision(s, item.paper_id, "technique", "quantisation", "accept")
        with pytest.raises(ReviewError, match="unknown paper_id"):
            add_label(s, "nope", "modality", "text")
        with pytest.raises(ReviewError, match="needs the new label"):
            decide(s, item, "change")
        with pytest.raises(ReviewError, match="unknown action"):
            decide(s, item, "maybe")
        assert decisions(s) == []


def test_a_skip_sends_the_item_last_and_decides_nothing(review_db: Path) -> None:
    with Store(review_db) as s:
        queue = review_queue(s)
        first = decide(s, queue[0], "skip", reviewer="ann")
        decide(s, queue[1], "skip", reviewer="ann")
        assert review_queue(s) == [*queue[2:], queue[0], queue[1]]
        assert not is_decided(s, *queue[0].key)
        assert (first.previous_value, first.new_value) == (queue[0].label, queue[0].label)
        undo_decision(s, first.decision_id)
        assert review_queue(s) == [queue[0], *queue[2:], queue[1]]
        # Deciding a skipped item takes it out of the queue like any other.
        decide(s, queue[1], "accept")
        assert review_queue(s) == [queue[0], *queue[2:]]


def test_other_needs_a_note_saying_what_it_is_and_keeps_it(review_db: Path) -> None:
    """The taxonomy's 'other' needs a free-text description; a person setting it gives one."""
    with Store(review_db) as s:
        item = next(i for i in review_queue(s) if i.field == "technique" and i.label != "other")
        with pytest.raises(ReviewError, match="change to 'other' needs a note"):
            decide(s, item, "change", new_label="other")
        with pytest.raises(ReviewError, match="add to 'other' needs a note"):
            add_label(s, item.paper_id, "target_metric", "other", note="   ")
        assert decisions(s) == []
        changed = decide(s, item, "change", new_label="other", note="  spiking hardware ")
        added = add_label(s, item.paper_id, "target_metric", "other", note="carbon footprint")
        # Any other decision may carry a comment; it needs none.
        rejected = record_decision(s, item.paper_id, "modality", "text", "reject", note="no text")
        undone = undo_decision(s, rejected.decision_id)
        stored = {d.decision_id: d.note for d in decisions(s)}
        assert stored == {
            changed.decision_id: "spiking hardware",
            added.decision_id: "carbon footprint",
            rejected.decision_id: "no text",
            undone.decision_id: None,
        }
        assert final(s, item.paper_id, item.field)["other"] == "person"


def test_final_labels_has_the_contract_columns_and_is_model_only_without_decisions(
    review_db: Path,
) -> None:
    with Store(review_db) as s:
        assert [
            (r[0], r[1]) for r in s.con.execute("DESCRIBE final_labels").fetchall()
        ] == FINAL_LABELS_COLUMNS
        got = s.con.execute(
            "SELECT paper_id, field, label, confidence, evidence, annotator, model, annotation_id "
            "FROM final_labels WHERE decided_by = 'model' AND reviewer IS NULL ORDER BY ALL"
        ).fetchall()
        want = s.con.execute(
            "SELECT paper_id, field, label, confidence, evidence, annotator, model, annotation_id "
            "FROM labels WHERE current AND confidence >= ? ORDER BY ALL",
            [ACCEPT_THRESHOLD],
        ).fetchall()
        assert got == want and s.scalar("SELECT count(*) FROM final_labels") == len(want)


# ------------------------------------------------------ re-annotation, conflicts
def test_a_decision_survives_reannotation_and_a_disagreement_is_a_conflict(
    review_db: Path,
) -> None:
    with Store(review_db) as s:
        paper_id, title, abstract = s.con.execute(
            "SELECT paper_id, title, abstract FROM papers p WHERE EXISTS (SELECT 1 FROM labels l "
            "WHERE l.paper_id = p.paper_id AND current AND field = 'technique' AND confidence >= ?) "
            "ORDER BY paper_id LIMIT 1",
            [ACCEPT_THRESHOLD],
        ).fetchone()
        strong = s.scalar(
            "SELECT label FROM labels WHERE paper_id = ? AND current AND field = 'technique' "
            "AND confidence >= ? ORDER BY confidence DESC LIMIT 1",
            [paper_id, ACCEPT_THRESHOLD],
        )
        # The person drops the model's surest technique and adds a modality it never offered.
        record_decision(s, paper_id, "technique", strong, "reject", reviewer="ann")
        add_label(s, paper_id, "modality", "tabular", reviewer="ann")
        assert conflicts(s) == []  # the annotation decided on is no conflict
    reannotate(review_db, paper_id, title, abstract + " We release our code.")
    with Store(review_db) as s:
        assert (
            s.scalar("SELECT count(*) FROM annotation_status WHERE paper_id = ?", [paper_id]) == 2
        )
        new_id = s.scalar(
            "SELECT annotation_id FROM annotation_status WHERE paper_id = ? AND current", [paper_id]
        )
        # The person still wins on the new annotation.
        assert strong not in final(s, paper_id, "technique")
        tabular = s.con.execute(
            "SELECT decided_by, annotation_id FROM final_labels "
            "WHERE paper_id = ? AND field = 'modality' AND label = 'tabular'",
            [paper_id],
        ).fetchall()
        assert tabular == [("person", new_id)]
        found = {(c.field, c.label, c.person_says, c.annotation_id) for c in conflicts(s)}
        assert ("technique", strong, "drop", new_id) in found
        assert ("modality", "tabular", "keep", new_id) in found
    result = CliRunner().invoke(app, ["review", "conflicts", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert f"{paper_id},technique,{strong},drop,ann" in result.output


class SecondOpinion:
    """Another annotator for the same papers: the rules annotator under another name."""

    name = "second"
    model = "second-model"

    def __init__(self) -> None:
        self._rules = get_annotator("rules")
        self.prompt_version = self._rules.prompt_version
        self.taxonomy = self._rules.taxonomy

    def annotate(self, paper: PaperInput) -> Annotation:
        return self._rules.annotate(paper)


def test_a_decision_applies_to_every_annotators_slice(review_db: Path) -> None:
    with Store(review_db) as s:
        item = review_queue(s)[0]
    assert annotate_papers(review_db, SecondOpinion(), paper_ids=[item.paper_id]).done == 1
    with Store(review_db) as s:
        # Both annotators doubt the same label; the queue asks once.
        assert [i.key for i in review_queue(s)].count(item.key) == 1
        decide(s, item, "accept", reviewer="ann")
        rows = s.con.execute(
            "SELECT annotator, model, decided_by FROM final_labels "
            "WHERE paper_id = ? AND field = ? AND label = ? ORDER BY annotator",
            [item.paper_id, item.field, item.label],
        ).fetchall()
        assert rows == [("rules", "rules", "person"), ("second", "second-model", "person")]


class Dissenter:
    """A third opinion: the rules annotator's labels, with some labels added or left out.

    ``add`` maps paper_id -> [(field, label, confidence)] to assign besides the rules'
    labels (the evidence quoted is that of the field's first rules label); ``drop`` maps
    paper_id -> [(field, label)] of rules labels not to assign.
    """

    name = "dissent"
    model = "dissent-model"

    def __init__(
        self,
        add: dict[str, list[tuple[str, str, float]]] | None = None,
        drop: dict[str, list[tuple[str, str]]] | None = None,
    ) -> None:
        self._rules = get_annotator("rules")
        self.prompt_version = self._rules.prompt_version
        self.taxonomy = self._rules.taxonomy
        self._add = add or {}
        self._drop = drop or {}

    def annotate(self, paper: PaperInput) -> Annotation:
        data = self._rules.annotate(paper).model_dump()
        for field_name, label in self._drop.get(paper.paper_id, []):
            data[field_name] = [x for x in data[field_name] if x["id"] != label]
        for field_name, label, confidence in self._add.get(paper.paper_id, []):
            evidence = data[field_name][0]["evidence"]
            data[field_name].append({"id": label, "confidence": confidence, "evidence": evidence})
            data["candidates"] = [
                c for c in data["candidates"] if (c["field"], c["id"]) != (field_name, label)
            ]
        return validate_annotation(data, title=paper.title, abstract=paper.abstract)


def unoffered(s: Store, paper_id: str, field: str) -> list[str]:
    """The label ids of ``field`` that no current annotation of the paper offers at all."""
    offered = {
        r[0]
        for r in s.con.execute(
            "SELECT label FROM labels WHERE current AND paper_id = ? AND field = ? UNION "
            "SELECT label FROM candidates WHERE current AND paper_id = ? AND field = ?",
            [paper_id, field] * 2,
        ).fetchall()
    }
    return [i for i in load_taxonomy().ids(field) if i not in offered and i != "other"]


def test_a_disputed_label_comes_before_an_equally_uncertain_agreement(review_db: Path) -> None:
    with Store(review_db) as s:
        before = review_queue(s)
        first = before[0]
        doubt = abs(first.confidence - 0.5)
        # Another paper, with room for one more technique label.
        paper_id = s.scalar(
            "SELECT paper_id FROM labels WHERE current AND field = 'technique' AND paper_id <> ? "
            "GROUP BY paper_id HAVING count(*) < 3 ORDER BY paper_id LIMIT 1",
            [first.paper_id],
        )
        label = unoffered(s, paper_id, "technique")[0]
    # The dissenter assigns a technique the rules do not: as doubtful as the queue's most
    # uncertain item once the dispute's 0.25 is counted, and far from the boundary without it.
    confidence = 0.75 + doubt
    assert doubt < 0.2 and confidence <= 1
    dissent = Dissenter(add={paper_id: [("technique", label, confidence)]})
    assert annotate_papers(review_db, dissent, paper_ids=[paper_id]).done == 1
    with Store(review_db) as s:
        queue = review_queue(s)
        assert queue[0].key == (paper_id, "technique", label)
        assert (queue[0].annotator, queue[0].confidence) == ("dissent", confidence)
        # The rest keeps its order: the dissenter agrees with the rules on everything else.
        rest = [i for i in queue[1:] if i.paper_id != paper_id]
        assert [i.key for i in rest] == [i.key for i in before if i.paper_id != paper_id]
        assert len({i.key for i in queue}) == len(queue)
        # With the annotator filter the rules' queue is as before: the rules never said it.
        assert [i.key for i in review_queue(s, annotator="rules")] == [i.key for i in before]
        # Decided, it leaves the queue; skipped, it goes last like any other item.
        skip = decide(s, queue[0], "skip", reviewer="ann")
        assert review_queue(s)[-1].key == queue[0].key
        undo_decision(s, skip.decision_id)
        decide(s, queue[0], "reject", reviewer="ann")
        assert queue[0].key not in {i.key for i in review_queue(s)}


def test_a_disputed_label_is_queued_at_or_above_accept_but_not_below_drop(
    review_db: Path,
) -> None:
    with Store(review_db) as s:
        # A paper with a sure technique label (kept by both annotators), a sure label the
        # dissenter leaves out, and room for two technique labels of the dissenter's own.
        paper_id, kept, left_out = s.con.execute(
            "SELECT paper_id, arg_max(label, confidence), arg_min(label, confidence) FROM labels "
            "WHERE current AND confidence >= ? AND field = 'target_metric' GROUP BY paper_id "
            "HAVING count(*) = 2 AND paper_id IN (SELECT paper_id FROM labels WHERE current "
            "AND field = 'technique' GROUP BY paper_id HAVING count(*) = 1) "
            "ORDER BY paper_id LIMIT 1",
            [ACCEPT_THRESHOLD],
        ).fetchone()
        sure_new, weak_new = unoffered(s, paper_id, "technique")[:2]
        before = review_queue(s)
    dissent = Dissenter(
        add={paper_id: [("technique", sure_new, 0.95), ("technique", weak_new, 0.1)]},
        drop={paper_id: [("target_metric", left_out)]},
    )
    assert annotate_papers(review_db, dissent, paper_ids=[paper_id]).done == 1
    with Store(review_db) as s:
        queue = review_queue(s)
        by_key = {i.key: i for i in queue}
        # Assigned by the dissenter alone at 0.95, and by the rules alone at or above 0.8.
        added = by_key[(paper_id, "technique", sure_new)]
        assert (added.annotator, added.kind, added.confidence) == ("dissent", "label", 0.95)
        dropped = by_key[(paper_id, "target_metric", left_out)]
        assert dropped.annotator == "rules" and dropped.confidence >= ACCEPT_THRESHOLD
        # Sure labels both annotators assign stay out, and so does a disputed one below drop.
        assert (paper_id, "target_metric", kept) not in by_key
        assert (paper_id, "technique", weak_new) not in by_key
        assert {k for k in by_key if k[0] != paper_id} == {i.key for i in before} - {
            i.key for i in before if i.paper_id == paper_id
        }
        assert all(
            DROP_THRESHOLD <= i.confidence < ACCEPT_THRESHOLD
            for i in queue
            if i.key not in {added.key, dropped.key}
        )
        # The paper's items stay together, and a stricter accept threshold changes nothing
        # for disputed items.
        papers = [i.paper_id for i in queue]
        assert len([p for n, p in enumerate(papers) if n == 0 or papers[n - 1] != p]) == len(
            set(papers)
        )
        strict = {i.key for i in review_queue(s, accept=0.99)}
        assert {added.key, dropped.key} <= strict
        assert added.key in {i.key for i in review_queue(s, field="technique", annotator="dissent")}


# -------------------------------------------------------------- spreadsheets
def read_rows(path: Path) -> list[dict[str, object]]:
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    ws = load_workbook(path)["review"]
    header = [c.value for c in ws[1]]
    return [dict(zip(header, r, strict=True)) for r in ws.iter_rows(min_row=2, values_only=True)]


def write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    """Edit the sheet as a reviewer would: the same file, decision cells filled in."""
    if path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(SHEET_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        return
    wb = load_workbook(path)
    ws = wb["review"]
    ws.delete_rows(2, ws.max_row)
    for row in rows:
        ws.append([row.get(c) for c in SHEET_COLUMNS])
    wb.save(path)


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_spreadsheet_round_trip(review_db: Path, tmp_path: Path, suffix: str) -> None:
    sheet = tmp_path / f"review{suffix}"
    with Store(review_db) as s:
        queue = review_queue(s)
        assert export_sheet(s, sheet) == len(queue)
    rows = read_rows(sheet)
    assert len(rows) == len(queue)
    assert [(r["paper_id"], r["field"], r["label"]) for r in rows] == [i.key for i in queue]
    assert all(r["decision"] in ("", None) for r in rows)
    assert rows[0]["title"] and rows[0]["abstract"] and rows[0]["definition"]
    taxonomy = load_taxonomy()
    change_to = next(i for i in taxonomy.ids(str(rows[2]["field"])) if i != rows[2]["label"])
    rows[0]["decision"] = "accept"
    rows[1]["decision"] = " Reject "
    rows[2]["decision"], rows[2]["new_label"] = "change", change_to
    rows[3]["decision"] = "skip"
    rows.append({"paper_id": rows[0]["paper_id"], "field": "modality", "decision": "add",
                 "new_label": "graph"})  # fmt: skip
    write_rows(sheet, rows)
    with Store(review_db) as s:
        report = import_sheet(s, sheet, reviewer="sheet-reviewer")
        assert report.applied == {"accept": 1, "reject": 1, "change": 1, "add": 1}
        assert report.skipped == len(queue) - 3
        made = decisions(s)
        assert {d.source for d in made} == {"spreadsheet"}
        assert {d.reviewer for d in made} == {"sheet-reviewer"}
        assert (
            final(s, str(rows[0]["paper_id"]), str(rows[0]["field"]))[str(rows[0]["label"])]
            == "person"
        )
        assert final(s, str(rows[0]["paper_id"]), "modality")["graph"] == "person"
        assert str(rows[1]["label"]) not in final(
            s, str(rows[1]["paper_id"]), str(rows[1]["field"])
        )
        assert len(review_queue(s)) == len(queue) - 3


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_a_sheet_sets_other_only_with_a_note(review_db: Path, tmp_path: Path, suffix: str) -> None:
    sheet = tmp_path / f"review{suffix}"
    with Store(review_db) as s:
        export_sheet(s, sheet)
    rows = read_rows(sheet)
    assert "note" in rows[0]
    row = next(r for r in rows if r["field"] == "technique" and r["label"] != "other")
    row["decision"], row["new_label"] = "change", "other"
    write_rows(sheet, rows)
    with Store(review_db) as s, pytest.raises(ReviewImportError) as exc:
        import_sheet(s, sheet)
    assert "change to 'other' needs a note in the note column" in str(exc.value)
    row["note"] = "protein contact maps"
    write_rows(sheet, rows)
    with Store(review_db) as s:
        assert import_sheet(s, sheet).applied == {"change": 1}
        assert [(d.new_value, d.note) for d in decisions(s)] == [("other", "protein contact maps")]


def bad_sheet_cases(
    rows: list[dict[str, object]], db: Path
) -> tuple[list[dict[str, object]], dict[int, str]]:
    """Each kind of bad row, plus good rows that must not be applied either."""
    rows[0]["decision"] = "accept"  # good
    rows[1]["decision"], rows[1]["new_label"] = "change", "quantisation"  # unknown id
    rows[2]["decision"] = "maybe"  # unknown decision word
    rows[3]["decision"] = "reject"  # decided meanwhile (below)
    rows[4]["decision"] = "accept"
    twice = dict(rows[4])
    twice["decision"] = "reject"
    rows.append(twice)  # the same label decided in two rows
    with Store(db) as s:
        key = (str(rows[3]["paper_id"]), str(rows[3]["field"]), str(rows[3]["label"]))
        record_decision(s, *key, "accept", reviewer="someone-else")
    return rows, {
        3: "unknown",
        4: "unknown decision 'maybe'",
        5: "changed since the export: someone-else decided it",
        len(rows) + 1: "is also decided in row 6",
    }


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_a_bad_sheet_applies_nothing_and_names_every_bad_row(
    review_db: Path, tmp_path: Path, suffix: str
) -> None:
    sheet = tmp_path / f"review{suffix}"
    with Store(review_db) as s:
        export_sheet(s, sheet)
    rows, expected = bad_sheet_cases(read_rows(sheet), review_db)
    write_rows(sheet, rows)
    with Store(review_db) as s:
        before = s.con.execute("SELECT * FROM review_decisions ORDER BY ALL").fetchall()
        with pytest.raises(ReviewImportError) as info:
            import_sheet(s, sheet)
        assert s.con.execute("SELECT * FROM review_decisions ORDER BY ALL").fetchall() == before
    got = {b.row: b.reason for b in info.value.rows}
    assert set(got) == set(expected)
    for row, reason in expected.items():
        assert reason in got[row], (row, got[row])
    assert "'quantisation'" in got[3]
    result = CliRunner().invoke(app, ["review", "import", str(sheet)])
    assert result.exit_code == 1
    assert "4 bad rows; nothing was applied" in result.stderr
    for row in expected:
        assert re.search(rf"row {row}: ", result.stderr)


def test_a_row_of_a_reannotated_paper_is_refused(review_db: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "review.csv"
    with Store(review_db) as s:
        export_sheet(s, sheet)
        item = review_queue(s)[0]
        title, abstract = s.con.execute(
            "SELECT title, abstract FROM papers WHERE paper_id = ?", [item.paper_id]
        ).fetchone()
    rows = read_rows(sheet)
    rows[0]["decision"] = "accept"
    write_rows(sheet, rows)
    reannotate(review_db, item.paper_id, title, abstract + " Code is available.")
    with Store(review_db) as s, pytest.raises(ReviewImportError) as info:
        import_sheet(s, sheet)
    assert [(b.row, "re-annotated" in b.reason) for b in info.value.rows] == [(2, True)]


def test_sheet_errors_name_the_file(review_db: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "notes.csv"
    bad.write_text("paper_id,decision\nx,accept\n", encoding="utf-8")
    result = runner.invoke(app, ["review", "import", str(bad)])
    assert result.exit_code == 1
    assert (
        "notes.csv: row 1: missing columns field, label, annotation_id, new_label" in result.stderr
    )
    result = runner.invoke(app, ["review", "export", "--to", str(tmp_path / "r.ods")])
    assert result.exit_code == 1 and "use a .xlsx or .csv file name" in result.stderr
    fake = tmp_path / "fake.xlsx"
    fake.write_text("not a workbook", encoding="utf-8")
    result = runner.invoke(app, ["review", "import", str(fake)])
    assert result.exit_code == 1 and "fake.xlsx: not a readable .xlsx workbook" in result.stderr


def test_cli_export_filters_and_app_needs_a_terminal(review_db: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "m.csv"
    result = runner.invoke(app, ["review", "export", "--to", str(out), "--field", "modality"])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert rows and {r["field"] for r in rows} == {"modality"}
    assert f"wrote {len(rows)} rows" in result.output
    result = runner.invoke(app, ["review"])
    assert result.exit_code == 1 and "needs a terminal" in result.stderr


# -------------------------------------------------------------------- README
def readme_section(heading: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_example_what_reviewers_changed_most_runs(review_db: Path) -> None:
    blocks = re.findall(r"```sql\n(.*?)```", readme_section("Example queries"), flags=re.DOTALL)
    sql = next(b for b in blocks if "reviewers" in b.splitlines()[0])
    columns = [c.strip() for c in sql.splitlines()[1].removeprefix("-- columns:").split(",")]
    with Store(review_db) as s:
        queue = review_queue(s)
        decide(s, queue[0], "reject", reviewer="ann")
        decide(s, queue[1], "accept", reviewer="ann")
        decide(s, queue[2], "change", new_label=other_id(queue[2]), reviewer="bob")
        undone = decide(s, queue[3], "reject", reviewer="bob")
        undo_decision(s, undone.decision_id, reviewer="bob")
        rel = s.con.execute(sql)
        assert [d[0] for d in rel.description] == columns
        rows = rel.fetchall()
    assert rows
    changed = {(r[0], r[1]): r for r in rows}
    first = changed[(queue[0].field, queue[0].label)]
    assert first[columns.index("changed")] >= 1


# ------------------------------------------------- issue 17: no silent loss of work
@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_review_export_never_overwrites_a_sheet_without_force(
    review_db: Path, tmp_path: Path, suffix: str
) -> None:
    sheet = tmp_path / f"mywork{suffix}"
    runner = CliRunner()
    assert runner.invoke(app, ["review", "export", "--to", str(sheet)]).exit_code == 0
    rows = read_rows(sheet)
    rows[0]["decision"] = "accept"  # a reviewer's work, typed in
    write_rows(sheet, rows)
    typed = sheet.read_bytes()
    result = runner.invoke(app, ["review", "export", "--to", str(sheet)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {sheet}: already exists; pass --force to replace it"
    ]
    assert sheet.read_bytes() == typed
    with Store(review_db) as s, pytest.raises(ConfigError, match="already exists"):
        export_sheet(s, sheet)
    assert sheet.read_bytes() == typed
    result = runner.invoke(app, ["review", "export", "--to", str(sheet), "--force"])
    assert result.exit_code == 0, result.stderr
    assert not read_rows(sheet)[0]["decision"]  # a fresh sheet: nothing decided
    assert not list(tmp_path.glob(".mywork*"))  # no temporary file left beside it


def test_a_sheet_imported_in_parts_applies_each_row_once(review_db: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "review.csv"
    with Store(review_db) as s:
        export_sheet(s, sheet)
    rows = read_rows(sheet)
    rows[0]["decision"] = "accept"
    rows[1]["decision"] = "reject"
    write_rows(sheet, rows)
    with Store(review_db) as s:
        first = import_sheet(s, sheet, reviewer="alice")
    assert first.applied == {"accept": 1, "reject": 1} and first.already == 0
    # The reviewer goes on filling the same sheet and imports it again.
    rows[2]["decision"] = "accept"
    write_rows(sheet, rows)
    result = CliRunner().invoke(app, ["review", "import", str(sheet), "--reviewer", "alice"])
    assert result.exit_code == 0, result.stderr
    assert "applied 1 accept" in result.stdout and "2 already applied before" in result.stdout
    with Store(review_db) as s:
        made = [(d.action, d.label) for d in decisions(s)]
        assert made == [
            ("accept", rows[0]["label"]),
            ("reject", rows[1]["label"]),
            ("accept", rows[2]["label"]),
        ]
        # A row decided otherwise since (here: undone, then decided again differently) is
        # still a conflict, not "already applied".
        undo_decision(s, decisions(s)[-1].decision_id, reviewer="bob")
        record_decision(
            s, str(rows[2]["paper_id"]), str(rows[2]["field"]), str(rows[2]["label"]), "reject",
            reviewer="bob",
        )  # fmt: skip
        with pytest.raises(ReviewImportError) as info:
            import_sheet(s, sheet, reviewer="alice")
    assert [b.row for b in info.value.rows] == [4]
    assert "bob decided it" in info.value.rows[0].reason


@pytest.mark.parametrize(
    "args",
    [
        ["annotate"],
        ["annotate", "-a", "rules"],
        ["review", "export", "--to", "sheet.csv"],
        ["eval", "--gold", str(ROOT.parent / "shared" / "gold" / "dev.jsonl")],
        ["stats"],
        ["sql", "SELECT 1"],
        ["calls"],
        ["export"],
        ["train", "--from", str(ROOT.parent / "shared" / "gold" / "dev.jsonl")],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_mistyped_db_is_refused_not_created(tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "typo.duckdb"
    result = CliRunner().invoke(app, ["--db", str(typo), *args])
    assert result.exit_code == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{typo}: no such database" in lines[0]
    assert not typo.exists()
    assert not (tmp_path / "sheet.csv").exists()


def test_a_persons_note_on_other_reaches_final_labels_and_the_final_export(
    review_db: Path, tmp_path: Path
) -> None:
    with Store(review_db) as s:
        item = next(i for i in review_queue(s, field="technique") if i.label != "other")
        record_decision(
            s, item.paper_id, "technique", item.label, "change", new_label="other",
            note="spiking neural network hardware", reviewer="alice",
        )  # fmt: skip
        rows = s.con.execute(
            "SELECT label, decided_by, note FROM final_labels WHERE paper_id = ? AND field = ?",
            [item.paper_id, "technique"],
        ).fetchall()
    assert ("other", "person", "spiking neural network hardware") in rows
    runner = CliRunner()
    long_out = tmp_path / "final.csv"
    result = runner.invoke(app, ["export", "--final", "--long", "--out", str(long_out)])
    assert result.exit_code == 0, result.stderr
    exported = [r for r in read_rows(long_out) if r["paper_id"] == item.paper_id]
    assert {"label": "other", "note": "spiking neural network hardware"}.items() <= next(
        r for r in exported if r["label"] == "other"
    ).items()
    wide_out = tmp_path / "final.jsonl"
    result = runner.invoke(app, ["export", "--final", "--out", str(wide_out)])
    assert result.exit_code == 0, result.stderr
    wide = [json.loads(line) for line in wide_out.read_text().splitlines()]
    paper = next(r for r in wide if r["paper_id"] == item.paper_id)
    assert "technique other: spiking neural network hardware" in paper["notes"]
