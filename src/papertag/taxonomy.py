"""The fixed label set, loaded from ``prompts/taxonomy.yaml``.

The file holds the ids of the spec with their definitions plus whatever the
annotators need (synonyms, regex patterns, examples). Its version is a hash of
its bytes, so any edit gives annotations made with it a new key.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

FIELDS: tuple[str, ...] = ("technique", "modality", "target_metric")


def prompts_dir() -> Path:
    """Where the prompt templates and taxonomy live.

    An installed wheel carries them as ``papertag/prompts``; an editable install
    of a clone reads the repository's top-level ``prompts/``. ``PAPERTAG_PROMPTS``
    overrides both.
    """
    env = os.environ.get("PAPERTAG_PROMPTS")
    if env:
        return Path(env)
    packaged = Path(str(resources.files("papertag"))) / "prompts"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "prompts"


def content_hash(data: bytes, length: int = 12) -> str:
    """Short sha256 used for every content-keyed version in papertag."""
    return hashlib.sha256(data).hexdigest()[:length]


@dataclass(frozen=True)
class LabelSpec:
    id: str
    definition: str
    synonyms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    description: str
    labels: dict[str, LabelSpec]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.labels)


@dataclass(frozen=True)
class Taxonomy:
    fields: dict[str, FieldSpec]
    version: str
    path: Path
    raw: dict[str, Any]

    def ids(self, field_name: str) -> tuple[str, ...]:
        return self.fields[field_name].ids

    def definition(self, field_name: str, label_id: str) -> str:
        return self.fields[field_name].labels[label_id].definition


def _as_tuple(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(value)


def parse_taxonomy(data: bytes, path: Path) -> Taxonomy:
    try:
        # libyaml's loader when PyYAML was built with it: the pure-Python one takes a tenth of
        # a second on the taxonomy, paid by every command at start-up.
        raw = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("fields"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'fields' key")
    fields: dict[str, FieldSpec] = {}
    for name in FIELDS:
        spec = raw["fields"].get(name)
        if not isinstance(spec, dict) or not isinstance(spec.get("labels"), dict):
            raise ConfigError(f"{path}: field '{name}' is missing or has no 'labels' mapping")
        labels: dict[str, LabelSpec] = {}
        for label_id, body in spec["labels"].items():
            where = f"{path}: {name}.{label_id}"
            if not isinstance(body, dict) or not isinstance(body.get("definition"), str):
                raise ConfigError(f"{where}: needs a 'definition' string")
            known = {"definition", "synonyms", "patterns", "examples"}
            labels[str(label_id)] = LabelSpec(
                id=str(label_id),
                definition=body["definition"].strip(),
                synonyms=_as_tuple(body.get("synonyms"), f"{where}.synonyms"),
                patterns=_as_tuple(body.get("patterns"), f"{where}.patterns"),
                examples=_as_tuple(body.get("examples"), f"{where}.examples"),
                extra={k: v for k, v in body.items() if k not in known},
            )
        fields[name] = FieldSpec(
            name=name, description=str(spec.get("description", "")).strip(), labels=labels
        )
    return Taxonomy(fields=fields, version=content_hash(data), path=path, raw=raw)


@lru_cache(maxsize=8)
def _load_cached(path: Path, mtime_ns: int) -> Taxonomy:
    return parse_taxonomy(path.read_bytes(), path)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load (and cache per file version) the taxonomy; default ``prompts/taxonomy.yaml``."""
    p = Path(path) if path is not None else prompts_dir() / "taxonomy.yaml"
    try:
        mtime = p.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read taxonomy file: {exc.strerror}") from None
    return _load_cached(p.resolve(), mtime)
