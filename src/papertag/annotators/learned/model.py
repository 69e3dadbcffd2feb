"""A trained model as plain arrays: what it is, how it predicts, how it is saved.

A model file is an ``.npz`` archive read with ``allow_pickle=False``: numbers and strings
only, so opening a model someone sent can never run code. It holds

- ``vocabulary`` (terms) and ``idf``: the word block of the features;
- per field ``F``: ``F.labels``, ``F.coef`` (labels x features, float16), ``F.intercept``, and
  ``F.calibration`` (three numbers: a, b, c in p = sigmoid(a * score + b + c * is_top));
- ``meta``: UTF-8 JSON with the format version, settings, per-field thresholds, the
  training data's hashes and sizes, and the cross-validated figures.

The content hash of the file is the model's version in every annotation key.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ...files import temp_beside
from ...taxonomy import FIELDS

#: Files written by this papertag carry this format; a newer one is refused on load.
FORMAT = 1
#: npz members are stored compressed; a fixed timestamp keeps the bytes reproducible.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


class ModelError(ConfigError):
    """A model file that cannot be used: corrupt, from a newer papertag, or unknown."""


@dataclass
class FieldModel:
    """One field's linear scores and their calibration."""

    labels: list[str]
    coef: np.ndarray  # (labels, features) float32
    intercept: np.ndarray  # (labels,) float32
    calibration: np.ndarray  # (3,) float64: a, b, c
    threshold: float

    def scores(self, x: Any) -> np.ndarray:
        """Raw scores, one row per paper, one column per label."""
        raw: np.ndarray = np.asarray(x @ self.coef.T, dtype=np.float64) + self.intercept
        return raw

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        a, b, c = (float(v) for v in self.calibration)
        top = scores >= scores.max(axis=1, keepdims=True)
        z = a * scores + b + c * top
        return np.asarray(1.0 / (1.0 + np.exp(-z)))


@dataclass
class LearnedModel:
    """Vocabulary, weights and calibration; see the module docstring."""

    settings: dict[str, Any]
    vocabulary: list[str]
    idf: np.ndarray
    fields: dict[str, FieldModel]
    meta: dict[str, Any] = field(default_factory=dict)

    # -- bytes -----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "vocabulary": np.array(self.vocabulary, dtype=np.str_),
            "idf": self.idf.astype(np.float32),
        }
        for f, fm in self.fields.items():
            arrays[f"{f}.labels"] = np.array(fm.labels, dtype=np.str_)
            # Half precision: three significant digits are plenty for a weight, and the
            # shipped file is half the size.
            arrays[f"{f}.coef"] = fm.coef.astype(np.float16)
            arrays[f"{f}.intercept"] = fm.intercept.astype(np.float32)
            arrays[f"{f}.calibration"] = fm.calibration.astype(np.float64)
        meta = {
            **self.meta,
            "format": FORMAT,
            "settings": self.settings,
            "thresholds": {f: fm.threshold for f, fm in self.fields.items()},
        }
        arrays["meta"] = np.frombuffer(
            json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8
        )
        buf = io.BytesIO()
        # Written member by member (not np.savez) so that timestamps and order are fixed
        # and the same model always gives the same bytes.
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name in sorted(arrays):
                member = io.BytesIO()
                np.lib.format.write_array(
                    member, np.ascontiguousarray(arrays[name]), allow_pickle=False
                )
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, member.getvalue())
        return buf.getvalue()

    @property
    def version(self) -> str:
        return model_hash(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "model") -> LearnedModel:
        if not data.startswith(b"PK"):
            raise ModelError(f"{source}: not a papertag model file (not an npz archive)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ModelError(f"{source}: not a papertag model file ({_first_line(exc)})") from None
        try:
            meta = json.loads(bytes(arrays["meta"]).decode("utf-8"))
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{source}: not a papertag model file (no metadata: {exc})") from None
        if not isinstance(meta, dict):
            raise ModelError(f"{source}: not a papertag model file (metadata is not an object)")
        fmt = meta.get("format")
        if not isinstance(fmt, int):
            raise ModelError(f"{source}: not a papertag model file (no format number)")
        if fmt > FORMAT:
            raise ModelError(
                f"{source}: written by a newer papertag (model format {fmt}; this papertag "
                f"reads format {FORMAT} and older); upgrade papertag to use it"
            )
        try:
            vocabulary = [str(t) for t in arrays["vocabulary"]]
            idf = arrays["idf"].astype(np.float32)
            fields: dict[str, FieldModel] = {}
            for f in FIELDS:
                coef = arrays[f"{f}.coef"].astype(np.float32)
                labels = [str(x) for x in arrays[f"{f}.labels"]]
                intercept = arrays[f"{f}.intercept"].astype(np.float32)
                calibration = arrays[f"{f}.calibration"].astype(np.float64)
                if coef.shape[0] != len(labels) or intercept.shape != (len(labels),):
                    raise ValueError(f"{f}: {len(labels)} labels but weights of shape {coef.shape}")
                if calibration.shape != (3,):
                    raise ValueError(f"{f}: calibration of shape {calibration.shape}")
                fields[f] = FieldModel(
                    labels, coef, intercept, calibration, float(meta["thresholds"][f])
                )
            settings = dict(meta["settings"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"{source}: corrupt model file ({_first_line(exc)})") from None
        if len(idf) != len(vocabulary):
            raise ModelError(
                f"{source}: corrupt model file ({len(vocabulary)} terms but {len(idf)} idf values)"
            )
        for f, fm in fields.items():
            if fm.coef.shape[1] < len(vocabulary):
                raise ModelError(f"{source}: corrupt model file ({f} weights too short)")
        rest = {k: v for k, v in meta.items() if k not in ("format", "settings", "thresholds")}
        return cls(settings, vocabulary, idf, fields, rest)

    def save(self, path: str | Path) -> str:
        """Write the model file (refusing to overwrite is the caller's choice); returns its hash."""
        data = self.to_bytes()
        target = Path(path)
        # Written beside, then renamed: a crash never leaves half a model under the name.
        tmp = temp_beside(target)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ModelError(f"{target}: cannot write model file: {exc.strerror or exc}") from None
        return model_hash(data)

    @classmethod
    def load(cls, path: str | Path) -> LearnedModel:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ModelError(f"{p}: cannot read model file: {exc.strerror or exc}") from None
        return cls.from_bytes(data, source=str(p))


def model_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
