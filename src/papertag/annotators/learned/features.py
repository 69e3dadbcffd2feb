"""What the learned model sees of a paper: three blocks of features, side by side.

1. **Words.** TF-IDF of word unigrams and bigrams of the title (twice, so it weighs more)
   and abstract, sublinear term frequency, unit length; vocabulary and idf are arrays of
   the saved model, rebuilt into scikit-learn's ``TfidfVectorizer`` on load.
2. **Meaning.** A 256-dimension static sentence embedding from WordLlama, whose weights
   ship inside its PyPI package (nothing is downloaded): it carries what the words mean
   beyond the few thousand abstracts the model was trained on.
3. **Rules.** The rules annotator's probability for each of the taxonomy's labels: its
   hand-written patterns are knowledge the labelled data alone does not hold.

Each block is scaled by a weight of the settings, then the blocks are concatenated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from ...errors import ConfigError
from ...taxonomy import FIELDS, Taxonomy

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from ..rules import RulesAnnotator

#: The settings a model is trained with; saved with it, and part of its content hash.
DEFAULT_SETTINGS: dict[str, Any] = {
    "ngram_max": 2,
    "min_df": 2,
    "max_features": 40_000,
    "embedding": "wordllama/l2_supercat/256",
    "embedding_weight": 1.0,
    "rules_weight": 1.0,
    "alpha": 1.0,
    "folds": 5,
    "seed": 0,
    "min_examples": 5,
}

#: scikit-learn's default token pattern, written down so a saved model never depends on
#: the default of another release.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
# A sentence ends at . ! or ? before a capital, digit or bracket, but not after the
# abbreviations abstracts use mid-sentence ("vs.", "e.g.", "et al.", "Fig.").
_SENTENCE_END = re.compile(
    r"(?<=[.!?])(?<!\bvs\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bal\.)(?<!\bFig\.)(?<!\bEq\.)"
    r"\s+(?=[A-Z0-9(\[])"
)


def model_text(title: str, abstract: str) -> str:
    """The text the word and meaning blocks read: the title twice, then the abstract."""
    return f"{title} . {title} . {abstract}"


def make_vectorizer(settings: dict[str, Any], *, norm: str | None = "l2") -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        lowercase=True,
        token_pattern=TOKEN_PATTERN,
        ngram_range=(1, int(settings["ngram_max"])),
        min_df=int(settings["min_df"]),
        max_features=int(settings["max_features"]),
        sublinear_tf=True,
        norm=norm,
        dtype=np.float32,
    )


def rebuild_vectorizer(
    settings: dict[str, Any], vocabulary: Sequence[str], idf: np.ndarray, *, norm: str | None = "l2"
) -> TfidfVectorizer:
    """A fitted vectorizer from a saved vocabulary and idf (public attributes only)."""
    vec = make_vectorizer(settings, norm=norm)
    vec.set_params(
        vocabulary={term: i for i, term in enumerate(vocabulary)}, min_df=1, max_features=None
    )
    # With a fixed vocabulary, fit() only counts document frequencies, which the saved idf
    # replaces (the idf_ setter is public): one token is enough.
    vec.fit(["x"])
    vec.idf_ = np.asarray(idf, dtype=np.float64)
    return vec


@cache
def _wordllama(name: str) -> Any:
    family, config, dim = name.split("/")
    if family != "wordllama":
        raise ConfigError(f"unknown embedding {name!r}")
    try:
        import wordllama
        from wordllama import WordLlama
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("the learned annotator needs wordllama: pip install wordllama") from None
    # The weights and tokenizer ship in the package; pointing the cache at it means the
    # files are found there and nothing is fetched.
    return WordLlama.load(
        config, cache_dir=Path(wordllama.__file__).parent, dim=int(dim), disable_download=True
    )


def embed(name: str, texts: Sequence[str]) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text."""
    if not texts:
        return np.zeros((0, int(name.rsplit("/", 1)[1])), dtype=np.float32)
    # Texts of similar length batched together pad less (a third faster on abstracts).
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = _wordllama(name).embed([texts[i] for i in order], norm=True, batch_size=16)
    result = np.empty((len(texts), out.shape[1]), dtype=np.float32)
    result[order] = out
    return result


_RULES: dict[str, RulesAnnotator] = {}


def _rules(taxonomy: Taxonomy) -> RulesAnnotator:
    # Compiling the taxonomy's patterns takes a while: once per taxonomy version.
    if taxonomy.version not in _RULES:
        from ..rules import RulesAnnotator

        _RULES[taxonomy.version] = RulesAnnotator(taxonomy)
    return _RULES[taxonomy.version]


def rule_columns(taxonomy: Taxonomy) -> list[tuple[str, str]]:
    return [(f, label) for f in FIELDS for label in taxonomy.ids(f)]


def rule_probabilities(taxonomy: Taxonomy, papers: Sequence[tuple[str, str]]) -> np.ndarray:
    """The rules annotator's probability of every (field, label), one row per paper."""
    cols = {c: i for i, c in enumerate(rule_columns(taxonomy))}
    out = np.zeros((len(papers), len(cols)), dtype=np.float32)
    rules = _rules(taxonomy)
    for row, (title, abstract) in enumerate(papers):
        _, _, scored = rules.score(title, abstract)
        for fname, items in scored.items():
            for item in items:
                j = cols.get((fname, item.label))
                if j is not None:
                    out[row, j] = item.prob
    return out


@dataclass
class Featurizer:
    """Turns (title, abstract) pairs into the model's feature matrix."""

    settings: dict[str, Any]
    taxonomy: Taxonomy
    vectorizer: TfidfVectorizer

    @classmethod
    def fit(
        cls, settings: dict[str, Any], taxonomy: Taxonomy, papers: Sequence[tuple[str, str]]
    ) -> Featurizer:
        vec = make_vectorizer(settings)
        vec.fit([model_text(t, a) for t, a in papers])
        return cls(settings, taxonomy, vec)

    @property
    def vocabulary(self) -> list[str]:
        return [str(t) for t in self.vectorizer.get_feature_names_out()]

    @property
    def idf(self) -> np.ndarray:
        return np.asarray(self.vectorizer.idf_, dtype=np.float32)

    def dense(self, papers: Sequence[tuple[str, str]]) -> np.ndarray:
        """The meaning and rules blocks, already weighted (they do not depend on the fit)."""
        return dense_features(self.settings, self.taxonomy, papers)

    def transform(
        self, papers: Sequence[tuple[str, str]], dense: np.ndarray | None = None
    ) -> sparse.csr_matrix:
        words = self.vectorizer.transform([model_text(t, a) for t, a in papers])
        if dense is None:
            dense = self.dense(papers)
        return sparse.hstack([words, sparse.csr_matrix(dense)], format="csr", dtype=np.float32)


def dense_features(
    settings: dict[str, Any], taxonomy: Taxonomy, papers: Sequence[tuple[str, str]]
) -> np.ndarray:
    blocks = [np.zeros((len(papers), 0), dtype=np.float32)]
    if settings.get("embedding"):
        texts = [model_text(t, a) for t, a in papers]
        blocks.append(
            embed(settings["embedding"], texts) * np.float32(settings["embedding_weight"])
        )
    if settings.get("rules_weight"):
        blocks.append(rule_probabilities(taxonomy, papers) * np.float32(settings["rules_weight"]))
    return np.hstack(blocks)


def sentences(title: str, abstract: str) -> list[tuple[int, int]]:
    """(start, end) of the title and of each abstract sentence in ``title + "\\n" + abstract``."""
    spans = [(0, len(title))] if title.strip() else []
    base = len(title) + 1
    start = 0
    for m in _SENTENCE_END.finditer(abstract):
        spans.append((base + start, base + m.start()))
        start = m.end()
    if abstract[start:].strip():
        spans.append((base + start, base + len(abstract)))
    return [(s, e) for s, e in spans if e > s]
