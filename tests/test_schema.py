"""Each validation rule of the annotation schema, with a failing case."""

from __future__ import annotations

from typing import Any

import pytest

from papertag.errors import ValidationFailed
from papertag.schema import Annotation, validate_annotation

TITLE = "QuickQuant: 4-bit Quantization for Vision Transformers"
ABSTRACT = (
    "We propose QuickQuant, a post-training quantization method that maps the weights of vision "
    "transformers to 4-bit integers. It reduces memory by 4x and keeps ImageNet accuracy."
)


def label(id_: str, evidence: str, confidence: float = 0.9, **kw: Any) -> dict[str, Any]:
    return {"id": id_, "confidence": confidence, "evidence": evidence, **kw}


def good() -> dict[str, Any]:
    return {
        "technique": [label("quantization", "post-training quantization method")],
        "modality": [label("image", "vision transformers")],
        "target_metric": [label("memory", "reduces memory by 4x")],
    }


def check(data: Any) -> Annotation:
    return validate_annotation(data, title=TITLE, abstract=ABSTRACT)


def reason(data: Any) -> str:
    with pytest.raises(ValidationFailed) as exc:
        check(data)
    return exc.value.reason


def test_a_good_annotation_validates() -> None:
    ann = check(good())
    assert [lab.id for lab in ann.technique] == ["quantization"]
    assert ann.candidates == []


def test_json_string_input_validates() -> None:
    ann = check(
        Annotation.model_validate(
            good(), context={"text": TITLE + "\n" + ABSTRACT}
        ).model_dump_json()
    )
    assert ann.modality[0].id == "image"


def test_unknown_id_names_field_value_and_allowed_ids() -> None:
    data = good()
    data["technique"][0]["id"] = "quantisation"
    msg = reason(data)
    assert (
        "technique[0].id" in msg
        and "'quantisation'" in msg
        and "quantization" in msg
        and "pruning_sparsity" in msg
    )


def test_id_of_another_field_is_refused() -> None:
    data = good()
    data["modality"][0]["id"] = "memory"
    assert "is not a modality id" in reason(data)


def test_empty_field_is_refused() -> None:
    data = good()
    data["modality"] = []
    assert "modality: has 0 labels; give 1 to 3" in reason(data)


def test_more_than_three_labels_is_refused() -> None:
    data = good()
    data["target_metric"] = [
        label("memory", "reduces memory"),
        label("model_size", "4-bit integers"),
        label("task_quality", "keeps ImageNet accuracy"),
        label("latency", "QuickQuant"),
    ]
    assert "target_metric: has 4 labels" in reason(data)


def test_duplicate_id_is_refused() -> None:
    data = good()
    data["modality"].append(label("image", "ImageNet"))
    assert "listed twice" in reason(data)


@pytest.mark.parametrize("confidence", [-0.1, 1.5])
def test_confidence_must_be_a_probability(confidence: float) -> None:
    data = good()
    data["technique"][0]["confidence"] = confidence
    assert "confidence" in reason(data)


def test_evidence_must_occur_in_the_text() -> None:
    data = good()
    data["technique"][0]["evidence"] = "pruning of attention heads"
    msg = reason(data)
    assert "technique[0].evidence" in msg and "does not occur" in msg


def test_evidence_matches_up_to_whitespace_and_case() -> None:
    data = good()
    data["technique"][0]["evidence"] = "POST-TRAINING   quantization\nmethod"
    assert check(data).technique[0].evidence.startswith("POST")


def test_evidence_may_quote_the_title() -> None:
    data = good()
    data["technique"][0]["evidence"] = "4-bit Quantization for Vision"
    check(data)


def test_overlong_evidence_is_refused() -> None:
    long_abstract = ABSTRACT + " " + "It also works on detection transformers. " * 10
    data = good()
    data["technique"][0]["evidence"] = long_abstract
    with pytest.raises(ValidationFailed, match="too long"):
        validate_annotation(data, title=TITLE, abstract=long_abstract)


def test_other_needs_a_note() -> None:
    data = good()
    data["technique"] = [label("other", "QuickQuant")]
    assert "technique[0].note" in reason(data)
    data["technique"] = [label("other", "QuickQuant", note="integer arithmetic")]
    assert check(data).technique[0].note == "integer arithmetic"


def test_extra_keys_are_refused() -> None:
    data = good()
    data["technique"][0]["why"] = "because"
    assert "why" in reason(data)


def test_candidates_are_validated_like_labels() -> None:
    data = good()
    data["candidates"] = [{"field": "target_metric", **label("model_size", "4-bit integers", 0.4)}]
    assert check(data).candidates[0].id == "model_size"
    data["candidates"] = [{"field": "target_metric", **label("memory", "reduces memory", 0.4)}]
    assert "already one of the target_metric labels" in reason(data)
    data["candidates"] = [{"field": "modality", **label("sound", "ImageNet", 0.4)}]
    assert "is not a modality id" in reason(data)


def test_every_problem_is_reported_at_once() -> None:
    data = good()
    data["technique"][0]["id"] = "nope"
    data["modality"][0]["evidence"] = "not in the text"
    msg = reason(data)
    assert "technique[0].id" in msg and "modality[0].evidence" in msg
