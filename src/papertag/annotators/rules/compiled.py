"""The taxonomy's patterns compiled into one lookup structure, and the matching pass over
a paper's text that runs it.

Every pattern is multiplied out into alternatives that start with a literal word, and the
alternatives are grouped by the first (up to) 4 letters of that word into one regex per
group, whose optional lookahead groups say which labels match. One pass over the words of
the text looks each word up (cached) and runs only its group's regex at that position, so
the cost grows with the length of the text, not with the number of patterns.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError
from ...taxonomy import FIELDS, Taxonomy
from .patterns import (
    WORD,
    expand_pattern,
    lower_pattern,
    short_word_ends,
    start_word,
)
from .weights import CONTRIB_ONLY, STRONG, SUPPRESSED, WEAK

#: A group of alternatives that shares a key gets a longer key beyond this many targets.
MAX_GROUP_TARGETS = 4
#: Distinct words whose candidate regexes are remembered (per compiled taxonomy).
WORD_CACHE_SIZE = 200_000


@dataclass(frozen=True)
class Target:
    kind: str  # "label", "contrib", "title", "joint", "neg", "tneg", "cue:<name>"
    field: str
    labels: tuple[str, ...]
    weight: float


#: (compiled alternative, target id) pairs.
_Entries = list[tuple[re.Pattern[str], int]]
#: A keyed regex and the target id of each of its groups.
_Keyed = tuple[re.Pattern[str], tuple[int, ...]]


@dataclass
class Compiled:
    targets: list[Target] = dataclasses.field(default_factory=list)
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

    def matches(self, low: str, title_end: int) -> list[tuple[int, int, int]]:
        """Every (target id, start, end) match in the lower-cased text."""
        hits: list[tuple[int, int, int]] = []
        add = hits.append
        cached = self.word_cache.get
        lookup = self.lookup
        for tok in WORD.finditer(low):
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
        for rx, tid in self.slow:
            for m in rx.finditer(low):
                i = m.start()
                if m.end() > i and (i == 0 or not low[i - 1].isalnum()):
                    hits.append((tid, i, m.end()))
        low_title = low[:title_end]
        for rx, tid in self.title:
            for mt in rx.finditer(low_title):
                if mt.end() > mt.start():
                    hits.append((tid, mt.start(), mt.end()))
        return hits


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


def compile_taxonomy(taxonomy: Taxonomy) -> Compiled:
    """Precompile every pattern of the taxonomy into the fast lookup structure."""
    comp = Compiled()
    grouped: dict[str, dict[int, list[str]]] = {}

    def add(patterns: list[str], target: Target, where: str) -> None:
        tid = len(comp.targets)
        comp.targets.append(target)
        for raw in patterns:
            low = lower_pattern(raw)
            _compile_regex(low, where)  # report the author's pattern if it is broken
            if target.kind in ("title", "tneg"):
                comp.title.append((_compile_regex(low, where), tid))
                continue
            for alt in expand_pattern(low):
                rx = _compile_regex(alt, where)
                word = start_word(alt)
                if not word or rx.groups:
                    comp.slow.append((rx, tid))
                    continue
                if len(word) <= 2 and not short_word_ends(alt[len(word) :]):
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
        add(pats, Target(f"cue:{cue}", "", (), 0.0), f"rules.{cue}_cues")
    for i, joint in enumerate(rules.get("joint_cues") or []):
        where = f"rules.joint_cues[{i}]"
        if not isinstance(joint, dict) or joint.get("field") not in FIELDS:
            raise ConfigError(f"taxonomy {where}: needs a field and labels")
        fname = str(joint["field"])
        labels = tuple(_as_list(joint.get("labels"), f"{where}.labels"))
        unknown = [x for x in labels if x not in taxonomy.ids(fname)]
        if unknown:
            raise ConfigError(f"taxonomy {where}: unknown {fname} ids {unknown}")
        add(_as_list(joint.get("patterns"), where), Target("joint", fname, labels, STRONG), where)

    generic: set[tuple[str, str]] = set()
    for fname in FIELDS:
        for label_id, spec in taxonomy.fields[fname].labels.items():
            where = f"{fname}.{label_id}"
            strong = [_synonym_pattern(s) for s in spec.synonyms if s.strip()] + list(spec.patterns)
            add(strong, Target("label", fname, (label_id,), STRONG), where)
            weak = _as_list(spec.extra.get("weak_patterns"), f"{where}.weak_patterns")
            add(weak, Target("label", fname, (label_id,), WEAK), where)
            contrib = _as_list(
                spec.extra.get("contribution_patterns"), f"{where}.contribution_patterns"
            )
            add(contrib, Target("contrib", fname, (label_id,), CONTRIB_ONLY), where)
            title = _as_list(spec.extra.get("title_patterns"), f"{where}.title_patterns")
            add(title, Target("title", fname, (label_id,), STRONG), where)
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
            add(neg, Target("neg", fname, (label_id,), 0.0), where)
            tneg = _as_list(
                spec.extra.get("title_negative_patterns"), f"{where}.title_negative_patterns"
            )
            add(tneg, Target("tneg", fname, (label_id,), 0.0), where)

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
                if not start_word(rest):
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


_CACHE: dict[tuple[str, str], Compiled] = {}


def compiled_for(taxonomy: Taxonomy) -> Compiled:
    """The taxonomy compiled, once per version and file (compiling takes a while)."""
    key = (taxonomy.version, str(taxonomy.path))
    comp = _CACHE.get(key)
    if comp is None:
        comp = compile_taxonomy(taxonomy)
        if len(_CACHE) > 16:
            _CACHE.clear()
        _CACHE[key] = comp
    return comp
