"""The offline rules annotator: always-valid output, sensible labels, stable keys."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

from papertag.annotators import PaperInput, get_annotator
from papertag.annotators import rules as rules_mod
from papertag.annotators.rules import ASSIGN, RulesAnnotator, expand_pattern, literal_prefix
from papertag.errors import AnnotationError, ConfigError
from papertag.ingest import parse_file
from papertag.schema import Annotation, normalize_for_match, paper_text
from papertag.taxonomy import FIELDS, load_taxonomy, parse_taxonomy

from .conftest import DIGESTS, SHARED

QUANT = PaperInput(
    "q",
    "Tiny Quant",
    "We propose a 4-bit post-training quantization method for LLMs that reduces memory.",
)

CLEAR_CUT = [
    (
        QUANT.title,
        QUANT.abstract,
        {"technique": "quantization", "modality": "text", "target_metric": "memory"},
    ),
    (
        "FastSpec: Speculative Decoding for Large Language Models",
        "We present a speculative decoding method in which a small draft model proposes tokens "
        "that the large language model verifies in parallel. It achieves a 2.5x speedup in "
        "generation latency without changing the output distribution.",
        {"technique": "fast_sampling_decoding", "modality": "text", "target_metric": "latency"},
    ),
    (
        "SplatFast: Real-Time Novel View Synthesis with 3D Gaussian Splatting",
        "We introduce a 3D Gaussian splatting pipeline that reconstructs scenes from multi-view "
        "images and renders novel views in real time at 200 FPS.",
        {"technique": "neural_fields_3d", "modality": "3d", "target_metric": "latency"},
    ),
    (
        "Learned Image Compression with a Context Entropy Model",
        "We propose a learned image codec with a hyperprior entropy model. It saves 20% "
        "bitrate (BD-rate) over VVC at the same PSNR, measured in bits per pixel.",
        {
            "technique": "neural_compression",
            "modality": "image",
            "target_metric": "compression_rate",
        },
    ),
    (
        "SparseMoE-LM: Scaling Language Models with Sparse Mixture-of-Experts",
        "We propose a sparse mixture-of-experts language model in which a router sends each "
        "token to two of 64 experts, improving perplexity at the same training compute.",
        {"technique": "mixture_of_experts", "modality": "text"},
    ),
    (
        "Pruning Visual Tokens for Faster Vision-Language Models",
        "We propose a training-free method that prunes redundant visual tokens in large "
        "vision-language models after the second layer, cutting FLOPs by 50%.",
        {"technique": "token_reduction", "modality": "image", "target_metric": "compute"},
    ),
    (
        "A Survey of Efficient Attention Mechanisms",
        "This survey reviews linear, sparse and IO-aware attention mechanisms for transformers "
        "and benchmarks them on long sequences.",
        {"technique": "survey_analysis"},
    ),
    (
        "EvictKV: Evicting the KV Cache of Long-Context LLMs",
        "We compress the KV cache of long-context LLMs by evicting unimportant keys and values, "
        "reducing KV cache memory by 8x with little loss in accuracy.",
        {"technique": "caching_reuse", "modality": "text", "target_metric": "memory"},
    ),
]

HOSTILE = [
    ("A", "."),
    ("Untitled", "   \n\t  "),
    ("", "Only an abstract, with no title at all."),
    ("(((((", "[[[[ ]]]] \\ \\b (?: *+? {2,} $^ | || ))))"),
    (
        "İstanbul ΣΊΣΥΦΟΣ straße",
        "İİİ ǅ ß ﬁ: lower-casing changes the length of some of these characters.",
    ),
    (
        "Zero\u200bwidth\u00a0spaces",
        "Emoji 🚀 and RTL \u202etext\u202c and NUL-free control \x07 chars.",
    ),
    ("Numbers", "1 2 3 4 5 6 7 8 9 0 " * 50),
    ("Repetition", "quantization " * 800),
    (
        "Very long",
        ("We propose a new vision transformer backbone for image classification. " * 300),
    ),
    (
        "Negations only",
        "Without pruning, without quantization, and no distillation: attention-free.",
    ),
    ("Long word", "We propose quantization" + "n" * 2000 + " for LLMs " + "x" * 5000),
    ("x" * 1000, "A title far longer than any evidence quote may be."),
]


@pytest.fixture(scope="module")
def annotator() -> RulesAnnotator:
    return RulesAnnotator()


def evidence_ok(ann: Annotation, title: str, abstract: str) -> None:
    text = normalize_for_match(paper_text(title, abstract))
    items = [label for f in FIELDS for label in ann.labels(f)] + list(ann.candidates)
    for item in items:
        assert item.evidence.strip(), item
        assert len(item.evidence) <= 300
        assert normalize_for_match(item.evidence) in text, item
        assert 0.0 <= item.confidence <= 1.0


def test_interface(annotator: RulesAnnotator) -> None:
    assert annotator.name == "rules" and annotator.model == "rules"
    assert annotator.prompt_version == rules_mod.RULES_VERSION
    assert annotator.taxonomy.version == load_taxonomy().version
    assert isinstance(get_annotator("rules"), RulesAnnotator)


#: What the rules give on the dev gold set's 100 papers, by (RULES_VERSION, taxonomy
#: version). A change of the rules' output must come with a new RULES_VERSION (the key of
#: every rules annotation); a new taxonomy version needs only a new row here.
FINGERPRINTS = {("2026-12-03", "005ee3cbbd56"): "06442a98fd35d672"}


def _output_fingerprint(annotator: RulesAnnotator) -> str:
    digest = hashlib.sha256()
    with (SHARED / "gold" / "dev.jsonl").open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            paper = json.loads(line)
            try:
                ann = annotator.annotate(PaperInput(str(i), paper["title"], paper["abstract"]))
            except AnnotationError as exc:
                digest.update(exc.reason.encode())
                continue
            labels = [
                (f, x.id, round(x.confidence, 6), x.evidence) for f in FIELDS for x in ann.labels(f)
            ]
            labels += [(c.field, c.id, round(c.confidence, 6), c.evidence) for c in ann.candidates]
            digest.update(json.dumps(labels).encode())
    return digest.hexdigest()[:16]


def test_a_change_of_output_comes_with_a_new_rules_version(annotator: RulesAnnotator) -> None:
    key = (rules_mod.RULES_VERSION, annotator.taxonomy.version)
    found = _output_fingerprint(annotator)
    assert key in FINGERPRINTS, (
        f"no fingerprint for {key}: add {key}: {found!r} to FINGERPRINTS (and if the rules' "
        "output changed, change RULES_VERSION first)"
    )
    assert found == FINGERPRINTS[key], (
        f"the rules' output changed ({found}) but RULES_VERSION is still {key[0]!r}: change "
        "it, so that the old annotations become stale, and record the new fingerprint"
    )


@pytest.mark.parametrize(("title", "abstract", "expected"), CLEAR_CUT, ids=lambda v: str(v)[:30])
def test_clear_cut_abstracts_get_the_obvious_labels(
    annotator: RulesAnnotator, title: str, abstract: str, expected: dict[str, str]
) -> None:
    ann = annotator.annotate(PaperInput("p", title, abstract))
    for field, label in expected.items():
        assert label in [x.id for x in ann.labels(field)], (field, ann.labels(field))
    evidence_ok(ann, title, abstract)


def test_a_quantization_paper_is_not_tagged_with_unrelated_techniques(
    annotator: RulesAnnotator,
) -> None:
    ann = annotator.annotate(QUANT)
    assert [x.id for x in ann.technique] == ["quantization"]
    # One mention in a one-sentence abstract: assigned, but not yet sure (the calibration
    # is fitted on the silver set's real abstracts).
    assert ann.technique[0].confidence >= ASSIGN["technique"]
    assert "quantization" in ann.technique[0].evidence.lower()


def test_vision_language_means_image_and_text(annotator: RulesAnnotator) -> None:
    ann = annotator.annotate(
        PaperInput(
            "v",
            "Efficient Vision-Language Models",
            "We make large vision-language models answer visual questions faster.",
        )
    )
    assert {"image", "text"} <= {x.id for x in ann.modality}


def test_no_data_modality_means_agnostic(annotator: RulesAnnotator) -> None:
    ann = annotator.annotate(
        PaperInput(
            "a",
            "A Faster Optimizer",
            "We propose a second-order optimizer for deep neural networks with provable "
            "convergence guarantees.",
        )
    )
    assert [x.id for x in ann.modality] == ["agnostic"]


def test_kept_accuracy_is_not_a_quality_goal(annotator: RulesAnnotator) -> None:
    saving = annotator.annotate(
        PaperInput(
            "s",
            "Fast Pruning",
            "We propose a pruning method that gives a 3x speedup with negligible accuracy loss "
            "and comparable performance.",
        )
    )
    assert "task_quality" not in [x.id for x in saving.target_metric]
    better = annotator.annotate(
        PaperInput(
            "b",
            "Better Detectors",
            "We propose a detector that outperforms the state of the art by 2.1 mAP on COCO, "
            "achieving higher accuracy.",
        )
    )
    assert "task_quality" in [x.id for x in better.target_metric]


@pytest.mark.parametrize(("title", "abstract"), HOSTILE, ids=lambda v: repr(v)[:20])
def test_hostile_input_still_gives_valid_output(
    annotator: RulesAnnotator, title: str, abstract: str
) -> None:
    ann = annotator.annotate(PaperInput("h", title, abstract))
    for field in FIELDS:
        assert 1 <= len(ann.labels(field)) <= 3
    assert ann.technique[0].id != "other" or ann.technique[0].note
    evidence_ok(ann, title, abstract)


def test_no_text_at_all_is_a_clear_error(annotator: RulesAnnotator) -> None:
    with pytest.raises(AnnotationError, match="neither title nor abstract"):
        annotator.annotate(PaperInput("e", "  ", "\n"))


def test_deterministic(annotator: RulesAnnotator) -> None:
    papers = [PaperInput(str(i), t, a) for i, (t, a, _) in enumerate(CLEAR_CUT)]
    first = [annotator.annotate(p).model_dump() for p in papers]
    again = [RulesAnnotator().annotate(p).model_dump() for p in reversed(papers)]
    assert first == list(reversed(again))


def test_candidates_are_runner_ups_not_labels(annotator: RulesAnnotator) -> None:
    for title, abstract, _ in CLEAR_CUT:
        ann = annotator.annotate(PaperInput("c", title, abstract))
        for cand in ann.candidates:
            assert cand.id not in [x.id for x in ann.labels(cand.field)]
            top = max(x.confidence for x in ann.labels(cand.field))
            assert cand.confidence <= max(top, 0.5)


def test_every_taxonomy_example_gets_its_label(annotator: RulesAnnotator) -> None:
    """Each example's patterns fire: its label is assigned or, when another label of the
    example wins (a survey *of* attention methods), offered to a reviewer."""
    missed = []
    for field in FIELDS:
        for label_id, spec in annotator.taxonomy.fields[field].labels.items():
            if label_id == "other" and field != "technique":
                continue  # only technique falls back to "other"
            for example in spec.examples:
                ann = annotator.annotate(PaperInput("x", example, ""))
                offered = [x.id for x in ann.labels(field)]
                offered += [c.id for c in ann.candidates if c.field == field]
                if label_id not in offered:
                    missed.append((field, label_id, example))
    assert not missed


def test_every_digest_paper_gets_a_valid_annotation(annotator: RulesAnnotator) -> None:
    entries = [e for path in DIGESTS for e in parse_file(path).entries]
    assert len(entries) > 100
    counts: dict[str, int] = {}
    for e in entries:
        ann = annotator.annotate(PaperInput("d", e.title, e.abstract))
        for label in ann.technique:
            counts[label.id] = counts.get(label.id, 0) + 1
    # no technique label on most papers: the tagger must stay selective
    assert max(counts.values()) < 0.6 * len(entries), counts


def test_taxonomy_without_rules_section_still_works(tmp_path: Path) -> None:
    raw = yaml.safe_load(load_taxonomy().path.read_bytes())
    raw.pop("rules")
    path = tmp_path / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    ann = RulesAnnotator(parse_taxonomy(path.read_bytes(), path)).annotate(QUANT)
    assert "quantization" in [x.id for x in ann.technique]


def test_bad_patterns_are_config_errors(tmp_path: Path) -> None:
    raw = yaml.safe_load(load_taxonomy().path.read_bytes())
    labels = raw["fields"]["technique"]["labels"]
    labels["pruning_sparsity"]["patterns"] = ["prun(?:e"]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"pruning_sparsity.*bad regex"):
        RulesAnnotator(parse_taxonomy(path.read_bytes(), path))
    labels["pruning_sparsity"]["patterns"] = ["re-?rank"]  # "re" would be looked up whole
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match="short word 're'"):
        RulesAnnotator(parse_taxonomy(path.read_bytes(), path))


def test_pattern_expansion() -> None:
    assert expand_pattern(r"\b(?:int|fp)(?:4|8)\b") == [r"int4\b", r"int8\b", r"fp4\b", r"fp8\b"]
    assert expand_pattern("low[- ]bit|(?:a|b)c") == ["low[- ]bit", "ac", "bc"]
    assert expand_pattern("(?:a|b)?c") == ["(?:a|b)?c"]
    assert literal_prefix(r"e\.g\.\b") == "e.g."
    assert literal_prefix("vits?") == "vit"
    assert literal_prefix("[ab]c") == ""


def test_probabilities_follow_the_calibration_features(annotator: RulesAnnotator) -> None:
    """score() computes the logistic map inline; it must agree with features()."""
    generic = rules_mod.compile_taxonomy(annotator.taxonomy).generic
    for title, abstract, _ in CLEAR_CUT:
        _, _, scored = annotator.score(title, abstract)
        for field, items in scored.items():
            for rank, item in enumerate(items):
                feats = rules_mod.features(
                    item, rank, items[0].score, (field, item.label) in generic
                )
                z = sum(w * x for w, x in zip(rules_mod.CALIBRATION[field], feats, strict=True))
                assert item.prob == pytest.approx(1 / (1 + math.exp(-z)))
