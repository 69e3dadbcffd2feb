"""The taxonomy file must carry exactly the spec's ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from papertag.errors import ConfigError
from papertag.taxonomy import FIELDS, load_taxonomy, parse_taxonomy

from .conftest import SHARED


def spec_ids() -> dict[str, list[str]]:
    text = (SHARED / "spec" / "taxonomy.md").read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        name = section.split()[0]
        out[name] = [
            m.group(1)
            for m in re.finditer(r"^\| (\w+) \|", section, flags=re.M)
            if m.group(1) != "id"
        ]
    return out


def test_ids_equal_the_spec() -> None:
    tax = load_taxonomy()
    expected = spec_ids()
    assert sorted(expected) == sorted(FIELDS)
    for field in FIELDS:
        assert list(tax.ids(field)) == expected[field], field


def test_every_label_has_a_definition() -> None:
    tax = load_taxonomy()
    for field in FIELDS:
        for spec in tax.fields[field].labels.values():
            assert len(spec.definition) > 10, (field, spec.id)


def test_version_is_a_hash_of_the_content(tmp_path: Path) -> None:
    original = load_taxonomy()
    copy = tmp_path / "taxonomy.yaml"
    copy.write_bytes(original.path.read_bytes())
    assert load_taxonomy(copy).version == original.version
    copy.write_bytes(original.path.read_bytes() + b"\n# an edit\n")
    assert load_taxonomy(copy).version != original.version


def test_broken_taxonomy_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="field 'modality' is missing"):
        parse_taxonomy(
            b"fields:\n  technique:\n    labels: {a: {definition: x}}\n", tmp_path / "t.yaml"
        )
    with pytest.raises(ConfigError, match="needs a 'definition'"):
        parse_taxonomy(
            b"fields:\n  technique:\n    labels: {a: {}}\n  modality: {labels: {}}\n  target_metric: {labels: {}}\n",
            tmp_path / "t.yaml",
        )
