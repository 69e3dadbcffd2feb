"""Where models live: the database's ``models`` table, and the default shipped in the package.

A model is saved under a name; saving a model of the same name again adds a version
(its content hash), and the newest version of a name is the one used. ``--model NAME``
picks a name (``default`` is the shipped model), or a path to a model file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ...db import Store, utc_now
from .model import LearnedModel, ModelError, model_hash

#: The model ``make model`` builds from the shared silver and dev sets, shipped in the package.
SHIPPED_NAME = "default"
SHIPPED_PATH = Path(__file__).with_name("default.npz")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    created_at: datetime | None
    where: str  # 'database', 'package' or a file path
    meta: dict[str, Any]

    @property
    def examples(self) -> int:
        return int(self.meta.get("examples", 0))

    def cv(self, field: str) -> float | None:
        value = self.meta.get("cv", {}).get(field, {}).get("micro_f1")
        return None if value is None else float(value)


def save_model(store: Store, model: LearnedModel, name: str) -> str:
    """Store ``model`` under ``name``; returns its version (content hash). Saving the same
    bytes again stores nothing new but makes that version the newest."""
    if not name or name != name.strip() or "/" in name or name.endswith(".npz"):
        raise ModelError(
            f"model name {name!r}: use a plain name such as 'local' (no '/', no '.npz')"
        )
    if name == SHIPPED_NAME:
        raise ModelError(f"{SHIPPED_NAME!r} is the shipped model's name; choose another")
    data = model.to_bytes()
    version = model_hash(data)
    with store.transaction() as con:
        exists = con.execute(
            "SELECT count(*) FROM models WHERE name = ? AND version = ?", [name, version]
        ).fetchone()
        if exists and exists[0]:
            # The same model trained again (say, after an undo) is the newest again.
            con.execute(
                "UPDATE models SET created_at = ? WHERE name = ? AND version = ?",
                [utc_now(), name, version],
            )
        else:
            con.execute(
                "INSERT INTO models (name, version, created_at, meta, data) VALUES (?, ?, ?, ?, ?)",
                [name, version, utc_now(), json.dumps(model.meta, sort_keys=True), data],
            )
    return version


def list_models(store: Store | None) -> list[ModelInfo]:
    """Every saved model version, newest first, then the shipped default."""
    out: list[ModelInfo] = []
    if store is not None:
        rows = store.con.execute(
            "SELECT name, version, created_at, meta FROM models ORDER BY created_at DESC, name"
        ).fetchall()
        out += [
            ModelInfo(name, version, created, "database", json.loads(meta or "{}"))
            for name, version, created, meta in rows
        ]
    if SHIPPED_PATH.exists():
        shipped = LearnedModel.load(SHIPPED_PATH)
        out.append(ModelInfo(SHIPPED_NAME, shipped.version, None, "package", shipped.meta))
    return out


def load_model(store: Store | None, name: str | None = None) -> tuple[LearnedModel, str, str]:
    """(model, name, version): ``name``'s newest version, a model file, or with no name the
    newest model trained into this database, else the shipped default."""
    if name is not None and (name.endswith(".npz") or "/" in name):
        path = Path(name)
        if not path.exists():
            raise ModelError(f"{path}: no such model file")
        data = path.read_bytes()
        return LearnedModel.from_bytes(data, source=str(path)), path.stem, model_hash(data)
    if store is not None and name != SHIPPED_NAME:
        row = store.con.execute(
            "SELECT name, version, data FROM models WHERE $name IS NULL OR name = $name "
            "ORDER BY created_at DESC LIMIT 1",
            {"name": name},
        ).fetchone()
        if row is not None:
            model_name, version, data = row
            model = LearnedModel.from_bytes(bytes(data), source=f"model {model_name!r}")
            return model, str(model_name), str(version)
    if name not in (None, SHIPPED_NAME):
        known = sorted({m.name for m in list_models(store)})
        raise ModelError(
            f"no model named {name!r}; known: {', '.join(known) or 'none'} "
            "(`papertag models` lists them, `papertag train` makes one)"
        )
    if not SHIPPED_PATH.exists():
        raise ModelError(
            f"{SHIPPED_PATH}: the shipped model is missing; run `make model` or `papertag train`"
        )
    data = SHIPPED_PATH.read_bytes()
    return LearnedModel.from_bytes(data, source=str(SHIPPED_PATH)), SHIPPED_NAME, model_hash(data)
