"""The rules' numbers: hand-set weights and thresholds, and the calibration fitted on
silver. Each one shapes the rules' output, so a change here wants a new ``RULES_VERSION``."""

from __future__ import annotations

from ...schema import DROP_THRESHOLD

#: Worth of a strong and a weak pattern match.
STRONG = 1.0
WEAK = 0.45
#: Worth of a ``contribution_patterns`` match (they only count in the title and in
#: sentences that state the contribution).
CONTRIB_ONLY = 0.8

#: Worth of a match by where it is: title, contribution sentence, a sentence after the
#: first contribution sentence ("post"), or a background sentence ("pre").
ROLE_WEIGHTS: dict[str, dict[str, float]] = {
    "technique": {"title": 1.0, "contrib": 0.85, "post": 0.6, "pre": 0.3},
    "modality": {"title": 1.0, "contrib": 0.9, "post": 0.7, "pre": 0.45},
    "target_metric": {"title": 1.0, "contrib": 0.85, "post": 0.8, "pre": 0.45},
}
#: Factor for a match shortly after a baseline cue, and how far back ("shortly") reaches.
BASELINE_FACTOR = {"technique": 0.3, "modality": 0.8, "target_metric": 0.5}
BASELINE_REACH = 60
#: After the first contribution sentence, a sentence counts as background only when a
#: background cue ("However", "Existing methods") opens it: within this many characters.
BACKGROUND_LEAD = 30
#: How far back a negation cue reaches.
NEGATION_REACH = 25
#: A joint cue ("text-to-video") names the task itself: it keeps at least this role weight.
JOINT_MIN_ROLE = 0.7
#: A cost metric next to a quantity ("3.5x faster", "40% fewer FLOPs") is a stated result:
#: its value is multiplied by QUANT_BOOST when a quantity is within QUANT_REACH characters.
QUANT_BOOST = {"technique": 1.0, "modality": 1.0, "target_metric": 1.35}
QUANT_REACH = 40
#: Factor for a label whose ``suppressed_by`` label has a strong match in the title.
SUPPRESSED = 0.3
#: Per label, the k-th best sentence adds DECAY**k of its value (k = 0, 1, ...).
DECAY = 0.5
MAX_TERMS = 4

#: Per field logistic map from the features of :func:`features` to a probability:
#: p = sigmoid(w . features). Fitted (L2-regularised logistic regression) on the labels the
#: rules score on the 2,240 papers of the shared silver set, never on the dev gold set,
#: which is for reporting only: ``scripts/fit_rules_calibration.py`` refits and prints it.
CALIBRATION: dict[str, tuple[float, ...]] = {
    "technique": (-3.437, 2.690, 0.436, 1.015, -0.333, -0.683),
    "modality": (-4.454, 1.377, 0.460, 2.866, 1.525, 0.000),
    "target_metric": (-3.582, 1.702, 0.153, 1.308, 0.516, 2.357),
}
#: Probability of a fallback label when nothing in the field was recognised: ``other``
#: technique, ``agnostic`` modality (no data modality named), ``task_quality`` (no cost
#: metric named). Too rare in the dev set to fit; set by hand.
FALLBACK_P: dict[str, float] = {"technique": 0.3, "modality": 0.6, "target_metric": 0.6}
#: A technique match worth at least this share of a strong title match is kept as the
#: label rather than falling back to ``other``.
MIN_ROLE_FOR_BEST = 0.5
#: Labels at or above this probability are assigned.
ASSIGN: dict[str, float] = {"technique": 0.4, "modality": 0.4, "target_metric": 0.4}
#: Unassigned labels worth a reviewer's time (at or above the drop threshold) are offered
#: as candidates, the best few per field. (Each one costs a validation pass over the text.)
CANDIDATE_MIN = DROP_THRESHOLD
MAX_CANDIDATES_PER_FIELD = 2
#: Evidence quotes: whole sentence up to this length, else a window around the match.
EVIDENCE_MAX = 220
EVIDENCE_SIDE = 90
