"""The offline default annotator: weighted keyword rules from ``prompts/taxonomy.yaml``.

The taxonomy file holds the vocabulary (per label: synonyms, strong and weak regex
patterns, title-only and contribution-only patterns, negative patterns; plus generic cue
lists under ``rules:``). This module holds only the generic logic:

1. **Matching.** Title and abstract are lower-cased once. Every pattern is multiplied out
   into alternatives that start with a literal word, and the alternatives are grouped by
   the first (up to) 4 letters of that word into one regex per group, whose optional
   lookahead groups say which labels match. One pass over the words of the text looks
   each word up (cached) and runs only its group's regex at that position, so the cost
   grows with the length of the text, not with the number of patterns.
2. **Weighing.** A match is worth more in the title and in the sentence that states
   the contribution ("we propose ...") than in the method and result sentences after
   it, and least in the background sentences before it. A match right after a baseline
   cue ("compared with", "unlike", "such as") is discounted, one right after a negation
   ("without", "no") or followed by "-free" is ignored, and a match that overlaps one of
   the label's negative patterns does not count. Per label the best match per sentence
   is combined with a decaying sum, so repetition helps but saturates. A cost metric
   next to a quantity ("3x faster") counts more; a label can be damped by another
   label's strong title match (``suppressed_by``: a survey is not a new architecture, a
   "Fast ..." paper keeps accuracy rather than targeting it).
3. **Deciding.** A per-field logistic map of a few features (:func:`features`) turns the
   score into a probability that the label is right. Labels at or above ``ASSIGN`` are
   assigned (at most 3, at least 1); unassigned labels worth a review become candidates.
   Field rules of the spec: a vision-language model is image and text (joint cues);
   modality falls back to ``agnostic`` when no data modality is named; target_metric
   falls back to ``task_quality`` when no cost metric is targeted, and otherwise counts
   quality only where it is stated as a goal (the negative patterns drop "comparable
   accuracy", "negligible loss" and the like); technique falls back to ``other`` with a
   note.

``CALIBRATION`` is fitted on the shared silver set (dev gold is for reporting only); every
other number is a hand-set weight. The patterns themselves were written while reading the
dev set's errors, so the rules' figures on dev flatter them.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import AnnotationError, ConfigError
from ..schema import DROP_THRESHOLD, MAX_LABELS, Annotation, validate_annotation
from ..taxonomy import FIELDS, Taxonomy, load_taxonomy
from .base import PaperInput

#: The rules' version in the annotation key (their prompt_version): change it with any
#: change to this module that changes what it gives (a weight, the calibration, a
#: rule), and only then, so that a reformat or a comment leaves every annotation
#: current. tests/test_rules.py holds a fingerprint of its output that fails until it is
#: changed. The patterns themselves are in the taxonomy file, versioned with it.
RULES_VERSION = "2026-12-03"

# --- weights -----------------------------------------------------------------------------

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

#: A group of alternatives that shares a key gets a longer key beyond this many targets.
MAX_GROUP_TARGETS = 4
#: Distinct words whose candidate regexes are remembered (per compiled taxonomy).
WORD_CACHE_SIZE = 200_000

_FALLBACK_ID = {"technique": "other", "modality": "agnostic", "target_metric": "task_quality"}

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"[.!?](?:\s+|\s*\n)(?=[A-Z0-9(\[\"'])")
_FREE_AFTER = re.compile(r"(?<=[a-z0-9])[- ]free\b")
_QUANTITY = re.compile(r"\d(?:[\d.,]*\d)?\s?(?:%|x\b|×|times\b|-fold)")
_SPECIAL = set(".^$*+?{}[]|()")
_QUANT = set("?*{")


# --- pattern compilation -----------------------------------------------------------------


def _lower_pattern(pattern: str) -> str:
    """Lower-case a regex without touching escapes such as ``\\W`` or ``\\S``."""
    return re.sub(
        r"\\.|[A-Z]", lambda m: m.group() if len(m.group()) == 2 else m.group().lower(), pattern
    )


def _structure(pattern: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """Walk a regex, skipping escapes and character classes.

    Yields (index, char, depth) for each character outside a class, ``depth`` being
    the group nesting after that character.
    """
    depth = 0
    in_class = False
    i = start
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        else:
            depth += (c == "(") - (c == ")")
            yield i, c, depth
        i += 1


def _split_top(pattern: str) -> list[str]:
    """Split at ``|`` outside groups and character classes."""
    parts: list[str] = []
    start = 0
    for i, c, depth in _structure(pattern):
        if c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
    parts.append(pattern[start:])
    return parts


def _group_end(pattern: str, open_at: int) -> int:
    """Index of the ``)`` closing the group opened at ``open_at`` (-1 if none)."""
    for i, c, depth in _structure(pattern, open_at):
        if c == ")" and depth == 0:
            return i
    return -1


def expand_pattern(pattern: str, _depth: int = 0) -> list[str]:
    """Rewrite a pattern as alternatives that each start with their own literal text.

    ``(?:a|b)c|d`` becomes ``["ac", "bc", "d"]`` and ``fp(?:8|16)`` becomes
    ``["fp8", "fp16"]``: the first group at or right after the leading literal text is
    multiplied out, so that every alternative starts with a whole literal word. A leading
    ``\\b`` is dropped (every pattern implicitly starts at a word boundary). Groups with a
    quantifier, and anything else that cannot be expanded, are left as they are.
    """
    while pattern.startswith("\\b"):
        pattern = pattern[2:]
    top = _split_top(pattern)
    if len(top) > 1:
        return [p for part in top for p in expand_pattern(part, _depth + 1)]
    if _depth >= 8:
        return [pattern]
    lit_end = _literal_end(pattern)
    if pattern.startswith("(?:", lit_end):
        end = _group_end(pattern, lit_end)
        rest = pattern[end + 1 :] if end > 0 else ""
        if end > 0 and not (rest and rest[0] in "?*+{"):
            head = pattern[:lit_end]
            return [
                p
                for alt in _split_top(pattern[lit_end + 3 : end])
                for p in expand_pattern(head + alt + rest, _depth + 1)
            ]
    return [pattern]


def _literal_end(pattern: str) -> int:
    """Where the leading literal text of ``pattern`` ends (an index into the pattern)."""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern) and not pattern[i + 1].isalnum():
                step = 2
            else:
                break
        elif c in _SPECIAL:
            break
        else:
            step = 1
        if i + step < len(pattern) and pattern[i + step] in _QUANT:
            break  # this character is optional
        i += step
    return i


def _short_word_ends(rest: str) -> bool:
    """Whether a pattern's remainder after a 1–2 letter word surely ends that word."""
    m = _SHORT_WORD_END.match(rest)
    return m is not None and rest[m.end() : m.end() + 1] not in ("?", "*", "{")


def literal_prefix(pattern: str) -> str:
    """The literal text every match of ``pattern`` starts with (may be empty)."""
    raw = pattern[: _literal_end(pattern)]
    return re.sub(r"\\(.)", r"\1", raw)


def _start_word(alt: str) -> str:
    """The literal word an alternative starts with ("" if it starts with anything else)."""
    run = _WORD.match(literal_prefix(alt))
    return run.group() if run is not None and alt.startswith(run.group()) else ""


#: The start of a pattern's remainder after a word of 1 or 2 letters must not continue the
#: word (such words are looked up as whole words).
_SHORT_WORD_END = re.compile(
    r"$|[^a-z0-9\\\[(?*+{]|\\[^a-zA-Z0-9]|\\[bsW]|\[[^\]a-z0-9]*\]|\(\?!\[a-z0-9\]\)"
)


@dataclass(frozen=True)
class _Target:
    kind: str  # "label", "neg", "title", "cue:<name>", "joint"
    field: str
    labels: tuple[str, ...]
    weight: float


#: (compiled alternative, target id) pairs.
_Entries = list[tuple[re.Pattern[str], int]]
#: A keyed regex and the target id of each of its groups.
_Keyed = tuple[re.Pattern[str], tuple[int, ...]]


@dataclass
class _Compiled:
    targets: list[_Target] = dataclasses.field(default_factory=list)
    #: Alternatives grouped by a prefix of the word they start with (4 letters, longer where
    #: a group would get more than MAX_GROUP_TARGETS targets): per key one regex whose
    #: optional lookahead groups are the targets (one group per target, alternatives of a
    #: target joined with |), and the target id of each group. One match at a word start
    #: tells which targets match there. Keys of 3 or more letters apply to every word
    #: starting with them; a key of 1 or 2 letters must be the whole word.
    by_key: dict[str, _Keyed] = dataclasses.field(default_factory=dict)
    key_lengths: tuple[int, ...] = ()
    #: Alternatives that do not start with a word: searched in the whole text.
    slow: _Entries = dataclasses.field(default_factory=list)
    title: _Entries = dataclasses.field(default_factory=list)
    #: word -> the keyed regexes to try where it starts (filled as words are seen).
    word_cache: dict[str, tuple[_Keyed, ...]] = dataclasses.field(default_factory=dict)
    suppressors: dict[tuple[str, str], tuple[tuple[str, ...], float]] = dataclasses.field(
        default_factory=dict
    )
    generic: frozenset[tuple[str, str]] = frozenset()

    def lookup(self, word: str) -> tuple[_Keyed, ...]:
        """The keyed regexes that can match where ``word`` starts (cached per word)."""
        n = len(word)
        keys = [word] if n <= 2 else [word[:k] for k in self.key_lengths if 3 <= k <= n]
        found = tuple(self.by_key[k] for k in keys if k in self.by_key)
        if len(self.word_cache) >= WORD_CACHE_SIZE:
            self.word_cache.clear()
        self.word_cache[word] = found
        return found


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"taxonomy {where}: expected a list of regex strings")
    return list(value)


def _compile_regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"taxonomy {where}: bad regex {pattern!r}: {exc}") from None


def _synonym_pattern(phrase: str) -> str:
    text = re.escape(phrase.strip().lower())
    return text + (r"\b" if phrase.strip()[-1:].isalnum() else "")


def compile_taxonomy(taxonomy: Taxonomy) -> _Compiled:
    """Precompile every pattern of the taxonomy into the fast lookup structure."""
    comp = _Compiled()
    grouped: dict[str, dict[int, list[str]]] = {}

    def add(patterns: list[str], target: _Target, where: str) -> None:
        tid = len(comp.targets)
        comp.targets.append(target)
        for raw in patterns:
            low = _lower_pattern(raw)
            _compile_regex(low, where)  # report the author's pattern if it is broken
            if target.kind in ("title", "tneg"):
                comp.title.append((_compile_regex(low, where), tid))
                continue
            for alt in expand_pattern(low):
                rx = _compile_regex(alt, where)
                word = _start_word(alt)
                if not word or rx.groups:
                    comp.slow.append((rx, tid))
                    continue
                if len(word) <= 2 and not _short_word_ends(alt[len(word) :]):
                    raise ConfigError(
                        f"taxonomy {where}: {raw!r} starts with the short word {word!r} but may "
                        "continue it; spell the longer words out"
                    )
                key = word[:4]
                grouped.setdefault(key, {}).setdefault(tid, []).append(alt[len(key) :])

    rules = taxonomy.raw.get("rules") or {}
    if not isinstance(rules, dict):
        raise ConfigError("taxonomy rules: expected a mapping")
    for cue in ("contribution", "background", "baseline", "negation"):
        pats = _as_list(rules.get(f"{cue}_cues"), f"rules.{cue}_cues")
        add(pats, _Target(f"cue:{cue}", "", (), 0.0), f"rules.{cue}_cues")
    for i, joint in enumerate(rules.get("joint_cues") or []):
        where = f"rules.joint_cues[{i}]"
        if not isinstance(joint, dict) or joint.get("field") not in FIELDS:
            raise ConfigError(f"taxonomy {where}: needs a field and labels")
        fname = str(joint["field"])
        labels = tuple(_as_list(joint.get("labels"), f"{where}.labels"))
        unknown = [x for x in labels if x not in taxonomy.ids(fname)]
        if unknown:
            raise ConfigError(f"taxonomy {where}: unknown {fname} ids {unknown}")
        add(_as_list(joint.get("patterns"), where), _Target("joint", fname, labels, STRONG), where)

    generic: set[tuple[str, str]] = set()
    for fname in FIELDS:
        for label_id, spec in taxonomy.fields[fname].labels.items():
            where = f"{fname}.{label_id}"
            strong = [_synonym_pattern(s) for s in spec.synonyms if s.strip()] + list(spec.patterns)
            add(strong, _Target("label", fname, (label_id,), STRONG), where)
            weak = _as_list(spec.extra.get("weak_patterns"), f"{where}.weak_patterns")
            add(weak, _Target("label", fname, (label_id,), WEAK), where)
            contrib = _as_list(
                spec.extra.get("contribution_patterns"), f"{where}.contribution_patterns"
            )
            add(contrib, _Target("contrib", fname, (label_id,), CONTRIB_ONLY), where)
            title = _as_list(spec.extra.get("title_patterns"), f"{where}.title_patterns")
            add(title, _Target("title", fname, (label_id,), STRONG), where)
            sup = tuple(_as_list(spec.extra.get("suppressed_by"), f"{where}.suppressed_by"))
            unknown = [x for x in sup if x not in taxonomy.ids(fname)]
            if unknown:
                raise ConfigError(f"taxonomy {where}.suppressed_by: unknown {fname} ids {unknown}")
            if sup:
                factor = spec.extra.get("suppression_factor", SUPPRESSED)
                if not isinstance(factor, int | float) or not 0 <= factor <= 1:
                    raise ConfigError(f"taxonomy {where}.suppression_factor: a number in [0, 1]")
                comp.suppressors[(fname, label_id)] = (sup, float(factor))
            if spec.extra.get("generic") is True:
                generic.add((fname, label_id))
            neg = _as_list(spec.extra.get("negative_patterns"), f"{where}.negative_patterns")
            add(neg, _Target("neg", fname, (label_id,), 0.0), where)
            tneg = _as_list(
                spec.extra.get("title_negative_patterns"), f"{where}.title_negative_patterns"
            )
            add(tneg, _Target("tneg", fname, (label_id,), 0.0), where)

    for key, by_tid in _split_groups(grouped).items():
        alts = ["|".join(rests) for rests in by_tid.values()]
        if len(alts) == 1:
            combined = f"{key}(?=({alts[0]}))"  # no match: None
        else:
            combined = key + "".join(f"(?:(?=({a})))?" for a in alts)  # no match: no group
        comp.by_key[key] = (re.compile(combined), tuple(by_tid))
    comp.key_lengths = tuple(sorted({len(k) for k in comp.by_key}))
    comp.generic = frozenset(generic)
    return comp


def _split_groups(grouped: dict[str, dict[int, list[str]]]) -> dict[str, dict[int, list[str]]]:
    """Lengthen the key of any group with more than MAX_GROUP_TARGETS targets.

    Alternatives whose start word goes on past the key move to a key one letter longer
    (which keeps the regexes small: a match builds a span for every target group); those
    whose word ends at the key stay.
    """
    out: dict[str, dict[int, list[str]]] = {}
    todo = list(grouped.items())
    while todo:
        key, by_tid = todo.pop()
        if len(key) < 4 or len(by_tid) <= MAX_GROUP_TARGETS:
            out[key] = by_tid
            continue
        stay: dict[int, list[str]] = {}
        longer: dict[str, dict[int, list[str]]] = {}
        for tid, rests in by_tid.items():
            for rest in rests:
                if not _start_word(rest):
                    stay.setdefault(tid, []).append(rest)
                else:
                    sub = longer.setdefault(key + rest[0], {})
                    sub.setdefault(tid, []).append(rest[1:])
        if not longer or (len(longer) == 1 and not stay):
            if not stay:  # every alternative continues with the same letter
                ((k2, sub2),) = longer.items()
                todo.append((k2, sub2))
                continue
            out[key] = by_tid
            continue
        if stay:
            out[key] = stay
        todo.extend(longer.items())
    return out


_CACHE: dict[tuple[str, str], _Compiled] = {}


def _compiled(taxonomy: Taxonomy) -> _Compiled:
    key = (taxonomy.version, str(taxonomy.path))
    comp = _CACHE.get(key)
    if comp is None:
        comp = compile_taxonomy(taxonomy)
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = comp
    return comp


# --- scoring -------------------------------------------------------------------------------


def _lower_same_length(text: str) -> str:
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


@dataclass(slots=True)
class _Evidence:
    value: float
    start: int
    end: int
    sentence: int


@dataclass(slots=True)
class _Scored:
    field: str
    label: str
    score: float
    #: every sentence's best match as (value, start, end, sentence), best first
    evidence: list[tuple[float, int, int, int]]
    prob: float = 0.0

    @property
    def best(self) -> _Evidence:
        return _Evidence(*self.evidence[0])


def _by_value(ev: tuple[float, int, int, int]) -> tuple[float, int]:
    return (-ev[0], ev[1])


def _by_score(item: _Scored) -> tuple[float, str]:
    return (-item.score, item.label)


_DECAYS = tuple(DECAY**i for i in range(1, MAX_TERMS))


def features(item: _Scored, rank: int, top: float, generic: bool) -> tuple[float, ...]:
    """Calibration features of one label.

    1, its score, its score (capped at 1) if it is the field's best, its score relative to
    the field's best, its best single match, and whether the label is marked ``generic``
    (a catch-all label with diffuse cues) in the taxonomy.
    """
    return (
        1.0,
        item.score,
        min(item.score, 1.0) if rank == 0 else 0.0,
        item.score / top if top > 0 else 0.0,
        item.best.value,
        float(generic),
    )


class RulesAnnotator:
    """Deterministic keyword-rule annotator; see the module docstring."""

    name = "rules"
    model = "rules"

    def __init__(self, taxonomy: Taxonomy | None = None) -> None:
        self.taxonomy = taxonomy or load_taxonomy()
        self.prompt_version = RULES_VERSION
        self._comp = _compiled(self.taxonomy)

    def _matches(self, low: str, title_end: int) -> list[tuple[int, int, int]]:
        """Every (target id, start, end) match in the lower-cased text."""
        comp = self._comp
        hits: list[tuple[int, int, int]] = []
        add = hits.append
        cached = comp.word_cache.get
        lookup = comp.lookup
        for tok in _WORD.finditer(low):
            found = cached(tok.group())
            if found is None:
                found = lookup(tok.group())
            if found:
                i = tok.start()
                for rx, tids in found:
                    m = rx.match(low, i)
                    if m is None:
                        continue
                    last = m.lastindex
                    if last is None:
                        continue
                    if last == 1:
                        add((tids[0], i, m.end(1)))
                        continue
                    for g in range(1, last + 1):
                        end = m.end(g)
                        if end >= 0:
                            add((tids[g - 1], i, end))
        for rx, tid in comp.slow:
            for m in rx.finditer(low):
                i = m.start()
                if m.end() > i and (i == 0 or not low[i - 1].isalnum()):
                    hits.append((tid, i, m.end()))
        low_title = low[:title_end]
        for rx, tid in comp.title:
            for mt in rx.finditer(low_title):
                if mt.end() > mt.start():
                    hits.append((tid, mt.start(), mt.end()))
        return hits

    def score(self, title: str, abstract: str) -> tuple[str, list[int], dict[str, list[_Scored]]]:
        """The paper text, its sentence starts and, per field, every label with evidence."""
        text = f"{title}\n{abstract}"
        low = _lower_same_length(text)
        comp = self._comp
        title_end = len(title)
        hits = self._matches(low, title_end)

        # Sentences: 0 is the title, then the abstract's sentences.
        starts = [0, title_end + 1]
        starts.extend(m.end() for m in _SENTENCE_END.finditer(text, title_end + 1))
        n_sent = len(starts)
        contrib = [False] * n_sent
        background = [False] * n_sent
        baseline_ends: list[int] = []
        negation_ends: list[int] = []
        neg_spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
        targets = comp.targets
        label_hits: list[tuple[_Target, int, int]] = []
        sent_of = bisect.bisect_right
        for tid, s, e in hits:
            t = targets[tid]
            kind = t.kind
            if kind == "label" or kind == "joint" or kind == "title" or kind == "contrib":
                label_hits.append((t, s, e))
            elif kind == "neg" or kind == "tneg":
                neg_spans.setdefault((t.field, t.labels[0]), []).append((s, e))
            elif kind == "cue:contribution":
                contrib[sent_of(starts, s) - 1] = True
            elif kind == "cue:background":
                k = sent_of(starts, s) - 1
                if s - starts[k] <= BACKGROUND_LEAD:
                    background[k] = True
            elif kind == "cue:baseline":
                baseline_ends.append(e)
            elif kind == "cue:negation":
                negation_ends.append(e)
        baseline_ends.sort()
        negation_ends.sort()

        # Before the first contribution sentence is background; with no contribution
        # sentence at all, only sentences opening with a background cue are.
        first_contrib = next((k for k in range(1, n_sent) if contrib[k]), 0)
        roles: list[str] = ["title"]
        for k in range(1, n_sent):
            if contrib[k]:
                roles.append("contrib")
            elif k < first_contrib or background[k]:
                roles.append("pre")
            else:
                roles.append("post")
        quantities = [m.start() for m in _QUANTITY.finditer(low)]
        free_at = {m.start() for m in _FREE_AFTER.finditer(low)} if "free" in low else set()
        generic = comp.generic

        # Per (field, label): the best match per sentence, as (value, start, end, sentence).
        per_label: dict[tuple[str, str], dict[int, tuple[float, int, int, int]]] = {}
        for t, s, e in label_hits:
            tfield = t.field
            k = 0 if t.kind == "title" else sent_of(starts, s) - 1
            role = roles[k]
            if t.kind == "contrib" and role != "title" and role != "contrib":
                continue
            if free_at and e in free_at:
                continue  # "attention-free", "training-free"
            sent_start = starts[k]
            j = sent_of(negation_ends, s) - 1
            if j >= 0 and negation_ends[j] >= sent_start and s - negation_ends[j] <= NEGATION_REACH:
                continue
            factor = 1.0
            if k > 0:
                j = sent_of(baseline_ends, s) - 1
                if (
                    j >= 0
                    and baseline_ends[j] >= sent_start
                    and s - baseline_ends[j] <= BASELINE_REACH
                ):
                    factor = BASELINE_FACTOR[tfield]
            role_w = ROLE_WEIGHTS[tfield][role]
            if t.kind == "joint" and role_w < JOINT_MIN_ROLE:
                role_w = JOINT_MIN_ROLE
            boost = QUANT_BOOST[tfield]
            for label in t.labels:
                key = (tfield, label)
                if t.kind != "joint":
                    spans = neg_spans.get(key)
                    if spans and any(ns < e and s < ne for ns, ne in spans):
                        continue
                f = factor
                if boost != 1.0 and quantities and key not in generic:
                    q = bisect.bisect_left(quantities, s - QUANT_REACH)
                    if q < len(quantities) and quantities[q] <= e + QUANT_REACH:
                        f *= boost
                value = t.weight * role_w * f
                slot = per_label.get(key)
                if slot is None:
                    per_label[key] = {k: (value, s, e, k)}
                else:
                    old = slot.get(k)
                    if old is None or value > old[0]:
                        slot[k] = (value, s, e, k)

        out: dict[str, list[_Scored]] = {f: [] for f in FIELDS}
        suppressors = comp.suppressors
        for (fname, label), by_sent in per_label.items():
            evs = list(by_sent.values())
            if len(evs) > 1:
                evs.sort(key=_by_value)
            total = evs[0][0]
            for ev, decay in zip(evs[1:MAX_TERMS], _DECAYS, strict=False):
                total += ev[0] * decay
            sup = suppressors.get((fname, label))
            if sup is not None:
                for other in sup[0]:
                    title_ev = per_label.get((fname, other), {}).get(0)
                    if title_ev is not None and title_ev[0] >= STRONG * 0.9:
                        total *= sup[1]
                        break
            if total > 0:
                out[fname].append(_Scored(fname, label, total, evs))
        for fname, items in out.items():
            if not items:
                continue
            items.sort(key=_by_score)
            # p = sigmoid(CALIBRATION . features(...)), written out for speed
            w0, w1, w2, w3, w4, w5 = CALIBRATION[fname]
            top = items[0].score
            for item in items:
                sc = item.score
                z = w0 + w1 * sc + w3 * sc / top + w4 * item.evidence[0][0]
                if (fname, item.label) in generic:
                    z += w5
                if item is items[0]:
                    z += w2 * min(sc, 1.0)
                item.prob = 1.0 / (1.0 + math.exp(-z))
        return text, starts, out

    def annotate(self, paper: PaperInput) -> Annotation:
        title, abstract = paper.title, paper.abstract
        if not (title.strip() or abstract.strip()):
            raise AnnotationError(
                "paper has neither title nor abstract text", paper_id=paper.paper_id
            )
        text, starts, scored = self.score(title, abstract)
        data: dict[str, Any] = {"candidates": []}
        for fname in FIELDS:
            items = [x for x in scored[fname] if x.label in self.taxonomy.fields[fname].labels]
            chosen, default_p = self._choose(fname, items)
            labels: list[dict[str, Any]] = []
            for x in chosen:
                labels.append(self._label(text, starts, x.label, x.prob, x.best))
            if not labels:
                labels.append(self._fallback(text, starts, _FALLBACK_ID[fname], default_p, title))
            data[fname] = labels
            taken = {lab["id"] for lab in labels}
            n = 0
            for x in items:
                if x.label in taken or x.label == "other" or x.prob < CANDIDATE_MIN:
                    continue
                cand = self._label(text, starts, x.label, min(x.prob, ASSIGN[fname]), x.best)
                cand["field"] = fname
                data["candidates"].append(cand)
                n += 1
                if n >= MAX_CANDIDATES_PER_FIELD:
                    break
        return validate_annotation(data, title=title, abstract=abstract, taxonomy=self.taxonomy)

    @staticmethod
    def _choose(fname: str, items: list[_Scored]) -> tuple[list[_Scored], float]:
        """The labels to assign (best first), or none and the fallback's probability."""
        fallback = _FALLBACK_ID[fname]
        fb = next((x for x in items if x.label == fallback), None)
        regular = [x for x in items if x.label != fallback]
        chosen = [x for x in regular if x.prob >= ASSIGN[fname]][:MAX_LABELS]
        default_p = FALLBACK_P[fname]
        if fname == "modality":
            # A modality-independent method is tagged agnostic alone; with no data
            # modality named at all, agnostic is the default.
            if fb is not None and fb.prob >= ASSIGN[fname] and not chosen:
                return [fb], default_p
            if (
                not chosen
                and regular
                and (fb is None or regular[0].score > fb.score)
                and regular[0].prob >= default_p
            ):
                return [regular[0]], default_p
            if not chosen and fb is not None:
                return [_with_prob(fb, max(fb.prob, default_p))], default_p
            return chosen, default_p
        if fname == "target_metric":
            # task_quality is a label like the others when stated as a goal, and the
            # default when the paper targets no cost metric.
            chosen = [x for x in items if x.prob >= ASSIGN[fname]][:MAX_LABELS]
            if not chosen and fb is not None:
                return [_with_prob(fb, max(fb.prob, default_p))], default_p
            return chosen, default_p
        # technique: with nothing above the bar, the best label still beats "other" when it
        # has a strong match or is at least as likely as the fallback.
        if not chosen and regular:
            best = regular[0]
            if best.prob >= default_p or best.best.value >= STRONG * MIN_ROLE_FOR_BEST:
                return [best], default_p
        return chosen, default_p

    # --- output pieces -------------------------------------------------------------------

    @staticmethod
    def _quote(text: str, starts: list[int], ev_start: int, ev_end: int) -> str:
        k = bisect.bisect_right(starts, ev_start) - 1
        s0 = starts[k]
        s1 = starts[k + 1] if k + 1 < len(starts) else len(text)
        if k == 0:
            s1 = min(s1, starts[1] - 1) if len(starts) > 1 else s1
        sentence = text[s0:s1]
        if len(sentence.strip()) <= EVIDENCE_MAX:
            quote = sentence
        else:
            a = max(s0, ev_start - EVIDENCE_SIDE)
            b = min(s1, ev_end + EVIDENCE_SIDE)
            if a > s0:
                sp = text.find(" ", a, ev_start)
                a = sp + 1 if sp != -1 else a
            if b < s1:
                sp = text.rfind(" ", ev_end, b)
                b = sp if sp != -1 else b
            quote = text[a:b]
        quote = quote.strip()[:EVIDENCE_MAX].strip()
        return quote or text[ev_start:ev_end].strip()[:EVIDENCE_MAX].strip() or text.strip()[:1]

    def _label(
        self, text: str, starts: list[int], label: str, prob: float, ev: _Evidence
    ) -> dict[str, Any]:
        return {
            "id": label,
            "confidence": round(min(max(prob, 0.0), 1.0), 3),
            "evidence": self._quote(text, starts, ev.start, ev.end),
        }

    def _fallback(
        self, text: str, starts: list[int], label: str, prob: float, title: str
    ) -> dict[str, Any]:
        """A default label with no match: quote the start of the abstract (or the title)."""
        end = starts[2] if len(starts) > 2 else len(text)
        first = text[starts[1] : end] if len(starts) > 1 else text
        quote = " ".join(first.split()[:30]) or " ".join(title.split()[:30]) or text.strip()
        out: dict[str, Any] = {
            "id": label,
            "confidence": round(prob, 3),
            "evidence": quote[:EVIDENCE_MAX].strip(),
        }
        if label == "other":
            words = " ".join(title.split())[:100] or "unrecognised technique"
            out["note"] = f"no listed technique matched; paper: {words}"
        return out


def _with_prob(item: _Scored, prob: float) -> _Scored:
    return _Scored(item.field, item.label, item.score, item.evidence, prob)


__all__ = [
    "RULES_VERSION",
    "RulesAnnotator",
    "compile_taxonomy",
    "expand_pattern",
    "literal_prefix",
]
