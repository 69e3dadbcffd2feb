"""Eval arithmetic on a small example checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from papertag.errors import InputError
from papertag.scoring import GoldPaper, Item, expected_calibration_error, load_gold, score


def gold(
    tech: set[str], mod: set[str], tm: set[str], also: dict[str, set[str]] | None = None
) -> GoldPaper:
    also = also or {}
    return GoldPaper(
        "t",
        "a",
        {"technique": tech, "modality": mod, "target_metric": tm},
        {f: also.get(f, set()) for f in ("technique", "modality", "target_metric")},
    )


def L(field: str, label: str, conf: float) -> Item:
    return Item(field, label, conf, "label")


def C(field: str, label: str, conf: float) -> Item:
    return Item(field, label, conf, "candidate")


@pytest.fixture
def result():  # type: ignore[no-untyped-def]
    g = [
        gold(
            {"quantization", "pruning_sparsity"},
            {"image"},
            {"memory"},
            {"technique": {"distillation"}},
        ),
        gold({"survey_analysis"}, {"text"}, {"task_quality"}),
    ]
    p = [
        [
            L("technique", "quantization", 0.9),
            L("technique", "distillation", 0.5),  # also acceptable: neither right nor wrong
            L("technique", "architecture_design", 0.6),
            L("modality", "image", 0.95),
            L("target_metric", "memory", 0.85),
            L("target_metric", "latency", 0.3),
            C("technique", "pruning_sparsity", 0.4),
            C("target_metric", "compute", 0.1),  # below the drop threshold: not reviewed
        ],
        [
            L("technique", "survey_analysis", 0.7),
            L("modality", "text", 0.9),
            L("modality", "image", 0.6),
            L("target_metric", "task_quality", 0.8),
        ],
    ]
    return score(g, p, accept=0.8, drop=0.25)


def test_micro_scores(result) -> None:  # type: ignore[no-untyped-def]
    t = result.fields["technique"]
    assert (t.tp, t.fp, t.fn) == (2, 1, 1)
    assert t.precision == pytest.approx(2 / 3) and t.recall == pytest.approx(2 / 3)
    assert t.micro_f1 == pytest.approx(2 / 3)
    m = result.fields["modality"]
    assert (m.tp, m.fp, m.fn) == (2, 1, 0)
    assert m.micro_f1 == pytest.approx(0.8)
    assert result.fields["target_metric"].micro_f1 == pytest.approx(0.8)


def test_macro_and_per_label(result) -> None:  # type: ignore[no-untyped-def]
    t = result.fields["technique"]
    assert set(t.per_label) == {
        "quantization",
        "architecture_design",
        "pruning_sparsity",
        "survey_analysis",
    }
    assert t.macro_f1 == pytest.approx(0.5)
    assert result.fields["modality"].per_label["image"]["f1"] == pytest.approx(2 / 3)
    assert result.fields["modality"].macro_f1 == pytest.approx(5 / 6)


def test_review_figures(result) -> None:  # type: ignore[no-untyped-def]
    assert result.auto_precision == pytest.approx(1.0)
    assert result.review_yield == pytest.approx(3 / 5)
    assert result.review_share == pytest.approx(0.5)
    assert result.n_items == 11


def test_ece(result) -> None:  # type: ignore[no-untyped-def]
    assert result.ece == pytest.approx(3.1 / 11)


def test_ece_of_perfect_calibration_is_zero() -> None:
    items = [(0.75, True)] * 3 + [(0.75, False)]
    ece, table = expected_calibration_error(items)
    assert ece == pytest.approx(0.0)
    assert table == [{"lo": 0.7, "hi": 0.8, "n": 4, "confidence": 0.75, "accuracy": 0.75}]


def test_load_gold_reports_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "g.jsonl"
    row = {
        "title": "T",
        "abstract": "A",
        "technique": ["quantization"],
        "modality": ["image"],
        "target_metric": ["memory"],
    }
    p.write_text(json.dumps(row) + "\n" + json.dumps({**row, "modality": "image"}) + "\n")
    with pytest.raises(InputError, match=r"g.jsonl: line 2: gold row needs 'modality'"):
        load_gold(p)
