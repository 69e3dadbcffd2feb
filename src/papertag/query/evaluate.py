"""Score the annotations stored in a database against a gold set (:mod:`papertag.scoring`
holds the measures). Scoring only reads the database; gold papers it lacks are counted,
or annotated in a scratch database on request.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..annotate import annotate_papers
from ..annotators import DEFAULT_ANNOTATOR, AnnotatorInfo, resolve_annotator
from ..db import Store
from ..ingest.entries import Entry
from ..ingest.identity import title_key
from ..ingest.report import FileReport
from ..ingest.write import write_entries
from ..schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from ..scoring import EvalResult, GoldPaper, Item, load_gold, score


def evaluate(
    db: Store | str | Path | None,
    gold_path: str | Path,
    *,
    annotator: str = DEFAULT_ANNOTATOR,
    model: str | None = None,
    accept: float = ACCEPT_THRESHOLD,
    drop: float = DROP_THRESHOLD,
    annotate_missing: bool = False,
    **options: Any,
) -> EvalResult:
    """Score the stored annotations of the gold file's papers; the database is only read.

    Gold papers the database lacks, or that the annotator has not annotated, are counted
    in ``missing`` and left out of the scores. With ``annotate_missing`` they are labelled
    in a scratch database that is thrown away (``annotated`` says how many; for ``llm`` that
    costs money), and scored with the rest.
    """
    gold = load_gold(gold_path)
    if model is not None:
        options["model"] = model
    store = db if isinstance(db, Store) else Store(db, read_only=True)
    try:
        ann = resolve_annotator(annotator, dict(options), client=False, store=store)
        keys = [title_key(g.title) for g in gold]
        known = dict(store.con.execute("SELECT title_key, paper_id FROM papers").fetchall())
        ids = [known.get(k) for k in keys]
        by_paper = _stored_items(store, ann, [i for i in ids if i is not None])
    finally:
        if not isinstance(db, Store):
            store.close()
    scored = [n for n, pid in enumerate(ids) if pid is not None and pid in by_paper]
    missing = [n for n in range(len(gold)) if n not in set(scored)]
    predictions = {n: by_paper[ids[n] or ""] for n in scored}
    annotated = 0
    if annotate_missing and missing:
        extra = _annotate_in_scratch(
            [gold[n] for n in missing], ann if annotator == "learned" else annotator, ann, options
        )
        annotated = sum(1 for items in extra if items)
        predictions.update({n: items for n, items in zip(missing, extra, strict=True) if items})
    order = sorted(predictions)
    result = score(
        [gold[n] for n in order], [predictions[n] for n in order], accept=accept, drop=drop
    )
    result.annotator, result.model = ann.name, ann.model
    result.missing = len(gold) - len(order)
    result.annotated = annotated
    return result


def _stored_items(store: Store, ann: AnnotatorInfo, ids: list[str]) -> dict[str, list[Item]]:
    """Labels and candidates of the annotations made with exactly this annotator key
    (annotator, model, prompt and taxonomy versions) of the current text of each paper:
    an older model's labels are not this one's."""
    key = [ann.name, ann.model, ann.prompt_version, ann.taxonomy.version, ids]
    rows = store.con.execute(
        """
        SELECT a.paper_id, l.field, l.label, l.confidence, l.kind
        FROM annotations a
        JOIN papers p ON p.paper_id = a.paper_id AND p.content_hash = a.content_hash
        JOIN annotation_labels l USING (annotation_id)
        WHERE a.annotator = ? AND a.model = ? AND a.prompt_version = ?
          AND a.taxonomy_version = ? AND a.paper_id IN (SELECT unnest(?::VARCHAR[]))
        """,
        key,
    ).fetchall()
    by_paper: dict[str, list[Item]] = defaultdict(list)
    for pid, f, lab, conf, kind in rows:
        by_paper[pid].append(Item(f, lab, float(conf), kind))
    return by_paper


def _annotate_in_scratch(
    papers: list[GoldPaper], annotator: Any, key_of: AnnotatorInfo, options: dict[str, Any]
) -> list[list[Item]]:
    """Label gold papers in a throwaway database; one list of items per paper. (The learned
    annotator is passed built, with the model of the user's database; the others by name.)"""
    with (
        tempfile.TemporaryDirectory(prefix="papertag-eval-") as tmp,
        Store(Path(tmp) / "scratch.duckdb") as scratch,
    ):
        entries = [Entry(i + 1, None, g.title, g.abstract) for i, g in enumerate(papers)]
        write_entries(scratch, entries, digest=None, report=FileReport(path="gold"))
        opts = {} if not isinstance(annotator, str) else options
        annotate_papers(scratch, annotator, **opts)
        known = dict(scratch.con.execute("SELECT title_key, paper_id FROM papers").fetchall())
        ids = [known[title_key(g.title)] for g in papers]
        by_paper = _stored_items(scratch, key_of, ids)
        return [by_paper.get(pid, []) for pid in ids]
