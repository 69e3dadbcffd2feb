"""``papertag train`` as a library call: gather labelled papers, fit, save."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...db import Store
from ...errors import ConfigError, StoreError
from ...files import check_out_path
from ...taxonomy import Taxonomy, load_taxonomy
from .model import LearnedModel
from .registry import save_model
from .sources import (
    examples_from_annotator,
    examples_from_file,
    examples_from_reviews,
    file_digest,
    merge,
)
from .training import Example, TrainReport, fit

DEFAULT_NAME = "local"


@dataclass
class TrainResult:
    model: LearnedModel
    report: TrainReport
    #: Where the model went: the database (name and version) or a file.
    saved_to: str


def gather(
    store: Store | None,
    taxonomy: Taxonomy,
    *,
    files: Sequence[str | Path] = (),
    annotator: str | None = None,
    annotator_model: str | None = None,
    reviews: bool = True,
) -> tuple[list[Example], dict[str, int]]:
    """The merged training examples, and how many papers each source gave."""
    return _gather(
        store, [examples_from_file(f, taxonomy) for f in files], annotator, annotator_model, reviews
    )


def _gather(
    store: Store | None,
    groups: list[list[Example]],
    annotator: str | None,
    annotator_model: str | None,
    reviews: bool,
) -> tuple[list[Example], dict[str, int]]:
    if annotator is not None:
        if store is None:
            raise ConfigError("--from-annotator needs a database")
        groups.append(examples_from_annotator(store, annotator, annotator_model))
    if reviews and store is not None:
        groups.append(examples_from_reviews(store))
    sizes: dict[str, int] = {}
    for group in groups:
        for ex in group[:1]:
            sizes[ex.source] = sizes.get(ex.source, 0) + len(group)
    examples = merge(groups)
    if not examples:
        raise ConfigError(
            "no labelled papers to train on: give --from FILE (gold/silver JSONL), "
            "--from-annotator NAME, or review some labels first"
        )
    return examples, sizes


def train(
    db: Store | str | Path | None,
    *,
    files: Sequence[str | Path] = (),
    annotator: str | None = None,
    annotator_model: str | None = None,
    reviews: bool = True,
    name: str = DEFAULT_NAME,
    out: str | Path | None = None,
    overwrite: bool = False,
    folds: int | None = None,
    settings: dict[str, Any] | None = None,
    taxonomy: Taxonomy | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a model from files, an annotator's labels and review decisions.

    The model is saved into the database under ``name`` (the newest model of a database
    is what ``--annotator learned`` uses), or with ``out`` written to that file instead
    (an existing file is replaced only with ``overwrite``). ``db`` may be None when only
    files are used and ``out`` is given.
    """
    tax = taxonomy or load_taxonomy()
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        check_out_path(out_path, overwrite=overwrite)
    if out_path is None and db is None:
        raise ConfigError("give a database to save the model in, or --out FILE")
    # Files first: a bad line is reported before the database is opened (or created).
    file_groups = [examples_from_file(f, tax) for f in files]
    if out_path is None and not isinstance(db, Store) and db is not None and not Path(db).exists():
        # Said before the fit's minute, not after.
        raise StoreError(
            f"{db}: no such database to save the model in; run `papertag ingest` first, or "
            "write the model to a file with --out FILE"
        )
    store: Store | None = None
    if isinstance(db, Store):
        store = db
    elif db is not None and Path(db).exists() and (out_path is None or annotator or reviews):
        store = Store(db)
    try:
        examples, sizes = _gather(store, file_groups, annotator, annotator_model, reviews)
        model, report = fit(examples, tax, settings, folds=folds, on_step=on_step)
        model.meta["inputs"] = [{"file": Path(f).name, "sha256": file_digest(f)} for f in files]
        model.meta["sources"] = sizes
        report.sources = sizes
        if out_path is not None:
            version = model.save(out_path)
            saved_to = str(out_path)
            report.name = out_path.stem
        else:
            assert store is not None  # checked above
            version = save_model(store, model, name)
            saved_to = f"{store.path} (model {name!r})"
            report.name = name
        report.version = version
        return TrainResult(model, report, saved_to)
    finally:
        if store is not None and not isinstance(db, Store):
            store.close()
