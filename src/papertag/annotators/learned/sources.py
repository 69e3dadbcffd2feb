"""Labelled papers to train on, from files and from the database.

Three sources, combinable; a paper is identified by its folded title (as ingest does),
and for each paper and field the strongest source wins: a person's review decisions
over an annotator's labels over a file's.

- JSONL files in the gold and silver format: ``title``, ``abstract`` and the three fields
  as lists of label ids (``doubt``, ``source``, ``also_acceptable`` and the like are
  allowed and ignored).
- An annotator's current labels in the database (an LLM run: distillation).
- People's review decisions: for a field a person has decided on, the labels of the
  ``final_labels`` view (confident model labels not overruled, plus what people accepted,
  changed or added).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from ...db import Store
from ...errors import InputError, StoreError
from ...files import json_objects
from ...ingest.identity import clean_text, title_key
from ...schema import MAX_LABELS
from ...taxonomy import FIELDS, Taxonomy
from .training import Example

#: A paper a person has decided on counts this many times in the fit: one correction
#: should move the model more than one of thousands of file labels.
REVIEW_WEIGHT = 3.0


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def examples_from_file(path: str | Path, taxonomy: Taxonomy) -> list[Example]:
    """Every labelled paper of a JSONL file; any bad line is an :class:`InputError`
    naming the file and line, and nothing of the file is used."""
    p = Path(path)
    out: list[Example] = []
    for lineno, obj in json_objects(p, "training file"):
        title, abstract = obj.get("title"), obj.get("abstract")
        if not isinstance(title, str) or not title.strip():
            raise InputError(p, "needs a non-empty 'title'", line=lineno)
        if not isinstance(abstract, str) or not abstract.strip():
            raise InputError(p, "needs a non-empty 'abstract'", line=lineno)
        labels: dict[str, list[str]] = {}
        for fname in FIELDS:
            value = obj.get(fname)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InputError(p, f"'{fname}' must be a list of label ids", line=lineno)
            if not 1 <= len(value) <= MAX_LABELS:
                raise InputError(
                    p, f"'{fname}' has {len(value)} labels; give 1 to {MAX_LABELS}", line=lineno
                )
            allowed = taxonomy.ids(fname)
            for v in value:
                if v not in allowed:
                    raise InputError(
                        p,
                        f"{fname} label {v!r} is not in the taxonomy; use one of: "
                        + ", ".join(allowed),
                        line=lineno,
                    )
            labels[fname] = list(dict.fromkeys(value))
        row_source = obj.get("source")
        origin = f"{p.name}:{row_source}" if isinstance(row_source, str) else p.name
        out.append(
            Example(
                clean_text(title), clean_text(abstract), labels, f"file:{p.name}", origin=origin
            )
        )
    if not out:
        raise InputError(p, "no labelled papers in the file")
    return out


def examples_from_annotator(
    store: Store, annotator: str, model: str | None = None
) -> list[Example]:
    """The current labels of one annotator (and model, if given) as training examples."""
    rows = store.con.execute(
        """
        SELECT p.title, p.abstract, l.field, list(l.label ORDER BY l.rank), l.model
        FROM labels l JOIN papers p USING (paper_id)
        WHERE l.current AND l.annotator = $annotator AND ($model IS NULL OR l.model = $model)
        GROUP BY p.paper_id, p.title, p.abstract, l.field, l.model
        ORDER BY p.paper_id, l.model, l.field
        """,
        {"annotator": annotator, "model": model},
    ).fetchall()
    models = sorted({r[4] for r in rows})
    if len(models) > 1:
        raise StoreError(
            f"annotator {annotator!r} has current labels of several models "
            f"({', '.join(models)}); pick one with --model"
        )
    if not rows:
        which = f"{annotator}/{model}" if model else annotator
        raise StoreError(f"no current labels of annotator {which!r} in {store.path}")
    return _group(rows, f"annotator:{annotator}/{models[0]}", 1.0)


def examples_from_reviews(store: Store) -> list[Example]:
    """For each paper and field a person decided on: the labels of the annotation the
    person was shown, with every verdict applied (rejected labels out; accepted, changed-to
    and added labels in).

    The annotation's labels the person left alone count as it assigned them: a reviewer
    reads the paper's doubtful labels together, and passes over the ones that need no
    decision. (``final_labels`` would keep only those at or above the accept threshold,
    and so teach the model that its right but unsure labels were wrong.)
    """
    rows = store.con.execute(
        """
        WITH shown AS (
            SELECT paper_id, field, arg_max(annotation_id, decision_id) AS annotation_id
            FROM review_verdicts GROUP BY paper_id, field
        ),
        kept AS (
            SELECT s.paper_id, s.field, l.label
            FROM shown s
            JOIN annotation_labels l
              ON l.annotation_id = s.annotation_id AND l.field = s.field AND l.kind = 'label'
            WHERE NOT EXISTS (
                SELECT 1 FROM review_verdicts v
                WHERE v.paper_id = s.paper_id AND v.field = s.field AND v.label = l.label
                  AND NOT v.included)
            UNION
            SELECT paper_id, field, label FROM review_verdicts WHERE included
        )
        SELECT p.title, p.abstract, s.field,
               list(DISTINCT k.label ORDER BY k.label) FILTER (WHERE k.label IS NOT NULL),
               'person'
        FROM shown s
        JOIN papers p USING (paper_id)
        LEFT JOIN kept k ON k.paper_id = s.paper_id AND k.field = s.field
        GROUP BY p.paper_id, p.title, p.abstract, s.field
        ORDER BY p.paper_id, s.field
        """
    ).fetchall()
    # A field whose every label a person rejected, with none added, says what it is not,
    # not what it is: nothing to learn as a label set.
    return _group([r for r in rows if r[3]], "reviews", REVIEW_WEIGHT)


def _group(
    rows: Sequence[tuple[str, str, str, list[str], str]], source: str, weight: float
) -> list[Example]:
    by_paper: dict[tuple[str, str], Example] = {}
    for title, abstract, fname, labels, _ in rows:
        key = (title, abstract)
        ex = by_paper.get(key)
        if ex is None:
            ex = by_paper[key] = Example(title, abstract, {}, source, weight)
        ex.labels[fname] = list(labels)[:MAX_LABELS]
    return list(by_paper.values())


def merge(groups: Iterable[list[Example]]) -> list[Example]:
    """One example per paper; for each field, a later group's labels replace an earlier's."""
    merged: dict[str, Example] = {}
    for group in groups:
        for ex in group:
            key = title_key(ex.title)
            old = merged.get(key)
            if old is None:
                merged[key] = Example(
                    ex.title, ex.abstract, dict(ex.labels), ex.source, ex.weight, ex.origin
                )
                continue
            old.labels.update(ex.labels)
            old.weight = max(old.weight, ex.weight)
            if ex.weight > 1.0 or old.source.startswith("file:"):
                old.source, old.origin = ex.source, ex.origin
    return list(merged.values())
