"""The learned annotator: training files and their bad lines, model files and their
corruption, deterministic training, the model's hash in the annotation key, label
validity, and review decisions that the next `papertag train` learns from.

Small training sets only (48 papers of three techniques, from the shared silver set, 2
folds): a model trains in about half a second once WordLlama and the rules are loaded.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from papertag.annotate import annotate_papers
from papertag.annotators import PaperInput, get_annotator
from papertag.annotators.learned import model as model_module
from papertag.annotators.learned.annotator import LearnedAnnotator
from papertag.annotators.learned.model import FORMAT, LearnedModel, ModelError, model_hash
from papertag.annotators.learned.pipeline import train
from papertag.annotators.learned.registry import SHIPPED_PATH, load_model, save_model
from papertag.annotators.learned.sources import (
    REVIEW_WEIGHT,
    examples_from_file,
    examples_from_reviews,
)
from papertag.annotators.learned.training import fit
from papertag.cli import app
from papertag.db import Store
from papertag.errors import AnnotationError, ConfigError, InputError, PapertagError
from papertag.ingest import ingest_digests
from papertag.review import add_label, record_decision, undo_decision
from papertag.schema import DROP_THRESHOLD, MAX_EVIDENCE_CHARS, MAX_LABELS, Annotation
from papertag.taxonomy import FIELDS, load_taxonomy, prompts_dir

from .conftest import PAPERTAG, ROOT, snapshot

SILVER = ROOT.parent / "shared" / "train" / "silver.jsonl"
#: The labels the small training sets keep; every one has well over 5 examples in them.
KEEP = {
    "technique": ("quantization", "neural_fields_3d", "retrieval_indexing"),
    "modality": ("text", "image", "3d"),
    "target_metric": ("task_quality", "latency", "memory"),
}
PER_TECHNIQUE = 16
HELD_OUT = 4

runner = CliRunner()


# ----------------------------------------------------------------------------- data
def _silver_buckets() -> dict[str, list[dict[str, Any]]]:
    """Silver papers with exactly one of KEEP's techniques, labels cut down to KEEP's,
    by technique, in file order."""
    buckets: dict[str, list[dict[str, Any]]] = {t: [] for t in KEEP["technique"]}
    for line in SILVER.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        kept = {f: [x for x in row[f] if x in KEEP[f]] for f in FIELDS}
        if len(kept["technique"]) != 1 or not kept["modality"] or not kept["target_metric"]:
            continue
        buckets[kept["technique"][0]].append(
            {"title": row["title"], "abstract": row["abstract"], **kept}
        )
    return buckets


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def unlabelled(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Title and abstract only: what `papertag ingest` reads."""
    return write_jsonl(path, [{"title": r["title"], "abstract": r["abstract"]} for r in rows])


@dataclass(frozen=True)
class Data:
    rows_a: list[dict[str, Any]]
    train_a: Path  # 48 labelled papers, 16 per technique
    train_b: Path  # 48 other labelled papers
    held: list[dict[str, Any]]  # 12 papers in neither file
    papers: Path  # the held-out papers, unlabelled


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("data")
    buckets = _silver_buckets()
    n, h = PER_TECHNIQUE, HELD_OUT
    rows_a = [r for b in buckets.values() for r in b[:n]]
    held = [r for b in buckets.values() for r in b[n : n + h]]
    rows_b = [r for b in buckets.values() for r in b[n + h : 2 * n + h]]
    assert len(rows_a) == len(rows_b) == 3 * n and len(held) == 3 * h
    return Data(
        rows_a,
        write_jsonl(root / "train_a.jsonl", rows_a),
        write_jsonl(root / "train_b.jsonl", rows_b),
        held,
        unlabelled(root / "papers.jsonl", held),
    )


@pytest.fixture(scope="module")
def model_a(data: Data, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of the model trained on train_a (2 folds), written to a file."""
    out = tmp_path_factory.mktemp("model_a") / "a.npz"
    result = train(None, files=[data.train_a], folds=2, out=out)
    assert result.saved_to == str(out)
    return out.read_bytes()


@dataclass(frozen=True)
class Base:
    db: Path
    version_a: str


@pytest.fixture(scope="module")
def base(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Base:
    """The held-out papers ingested, model A trained into the database as 'local', and
    every paper annotated with it."""
    db = tmp_path_factory.mktemp("base") / "base.duckdb"
    assert ingest_digests([data.papers], db).ok
    result = train(db, files=[data.train_a], folds=2)
    assert result.report.name == "local"
    report = annotate_papers(db, "learned")
    assert (report.done, report.failed, report.model) == (3 * HELD_OUT, 0, "local")
    assert report.prompt_version == result.report.version
    return Base(db, result.report.version)


@pytest.fixture
def learned_db(base: Base, db_path: Path) -> Path:
    """A private copy of the base database at the test's PAPERTAG_DB."""
    shutil.copyfile(base.db, db_path)
    return db_path


# --------------------------------------------------------------------------- helpers
def cli(*args: object) -> Result:
    # Wide enough that no table cell (a 12-digit version) is cut.
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def one_error_line(result: Result) -> str:
    """A deliberate failure: exit 1 (not an uncaught exception) and one line on stderr."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def state(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every data row, the models and review decisions included."""
    rows = snapshot(db)
    with Store(db) as s:
        for table in ("models", "annotation_runs", "review_decisions", "annotation_failures"):
            rows[table] = s.con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
    return rows


def current_labels(db: Path, model: str = "local") -> dict[tuple[str, str], list[str]]:
    """(paper_id, field) -> the learned annotator's current labels, best first."""
    with Store(db) as s:
        rows = s.con.execute(
            "SELECT paper_id, field, list(label ORDER BY rank) FROM labels "
            "WHERE current AND annotator = 'learned' AND model = ? GROUP BY ALL",
            [model],
        ).fetchall()
    return {(pid, f): labels for pid, f, labels in rows}


def fold(text: str) -> str:
    """Whitespace and case folded, to compare a quote with the text it comes from."""
    return " ".join(text.split()).casefold()


# ======================================================================= bad input
def _unknown_label(row: dict[str, Any]) -> str:
    return json.dumps({**row, "technique": ["quantisation_typo"]})


BAD_LINES = {
    "unknown-label-id": (_unknown_label, ["technique label 'quantisation_typo'", "taxonomy"]),
    "malformed-json": (lambda r: json.dumps(r)[:-2], ["invalid JSON"]),
    "not-an-object": (lambda r: json.dumps([r]), ["line is a JSON list, expected an object"]),
    "empty-title": (lambda r: json.dumps({**r, "title": " "}), ["non-empty 'title'"]),
    "labels-not-a-list": (
        lambda r: json.dumps({**r, "modality": "text"}),
        ["'modality' must be a list of label ids"],
    ),
    "four-labels": (
        lambda r: json.dumps(
            {**r, "target_metric": ["task_quality", "latency", "memory", "energy"]}
        ),
        ["'target_metric' has 4 labels"],
    ),
}


def bad_file(path: Path, rows: list[dict[str, Any]], case: str) -> Path:
    """Good, blank, good, BAD, good: the bad line is line 4."""
    make, _ = BAD_LINES[case]
    lines = [json.dumps(rows[0]), "", json.dumps(rows[1]), make(rows[2]), json.dumps(rows[3])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_training_line_names_the_file_and_line(case: str, data: Data, tmp_path: Path) -> None:
    path = bad_file(tmp_path / "bad.jsonl", data.rows_a, case)
    with pytest.raises(InputError) as caught:
        examples_from_file(path, load_taxonomy())
    exc = caught.value
    assert (exc.path, exc.line) == (str(path), 4)
    message = str(exc)
    assert message.startswith(f"{path}: line 4: ") and "\n" not in message
    for part in BAD_LINES[case][1]:
        assert part in message


@pytest.mark.parametrize("case", ["unknown-label-id", "malformed-json"])
def test_cli_bad_training_file_is_one_line_and_creates_no_database(
    case: str, data: Data, tmp_path: Path, db_path: Path
) -> None:
    bad = bad_file(tmp_path / "bad.jsonl", data.rows_a, case)
    # A good file first: every file is read before anything is trained or opened.
    line = one_error_line(cli("train", "--from", data.train_a, "--from", bad, "--folds", "2"))
    assert f"{bad}: line 4: " in line
    for part in BAD_LINES[case][1]:
        assert part in line
    assert not db_path.exists()


def test_cli_bad_training_file_leaves_the_database_as_it_was(
    data: Data, learned_db: Path, tmp_path: Path
) -> None:
    before = state(learned_db)
    bad = bad_file(tmp_path / "bad.jsonl", data.rows_a, "unknown-label-id")
    line = one_error_line(cli("train", "--from", bad, "--folds", "2"))
    assert f"{bad}: line 4: " in line and "'quantisation_typo'" in line
    assert state(learned_db) == before


def _with_rare_label(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The rows, with the first n quantization papers also labelled pruning_sparsity."""
    out, added = [], 0
    for r in rows:
        if "quantization" in r["technique"] and added < n:
            r = {**r, "technique": [*r["technique"], "pruning_sparsity"]}
            added += 1
        out.append(r)
    assert added == n
    return out


@pytest.mark.parametrize(("n", "learned"), [(4, False), (5, True)])
def test_a_label_with_too_few_examples_is_left_out(
    n: int, learned: bool, data: Data, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "rare.jsonl", _with_rare_label(data.rows_a, n))
    result = train(None, files=[path], folds=2, out=tmp_path / "rare.npz")
    dropped = [] if learned else [("technique", "pruning_sparsity", n)]
    assert result.report.dropped == dropped
    labels = LearnedModel.load(tmp_path / "rare.npz").fields["technique"].labels
    assert ("pruning_sparsity" in labels) is learned
    assert set(labels) - {"pruning_sparsity"} == set(KEEP["technique"])


def test_cli_warns_of_each_label_left_out(data: Data, tmp_path: Path, db_path: Path) -> None:
    Store(db_path).close()
    path = write_jsonl(tmp_path / "rare.jsonl", _with_rare_label(data.rows_a, 3))
    result = ok(cli("train", "--from", path, "--folds", "2"))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: technique label 'pruning_sparsity' left out: 3 examples, too few to learn"
    ]
    assert "saved model" in result.stdout
    with Store(db_path) as s:
        (data_blob,) = s.con.execute("SELECT data FROM models").fetchone() or (None,)
    assert "pruning_sparsity" not in LearnedModel.from_bytes(data_blob).fields["technique"].labels


def test_a_field_with_fewer_than_two_learnable_labels_is_refused(
    data: Data, tmp_path: Path, db_path: Path
) -> None:
    # Every paper is text but four, which are image: only one modality label to learn.
    rows = [{**r, "modality": ["image" if i < 4 else "text"]} for i, r in enumerate(data.rows_a)]
    path = write_jsonl(tmp_path / "one_modality.jsonl", rows)
    with pytest.raises(ConfigError) as caught:
        train(None, files=[path], folds=2, out=tmp_path / "m.npz")
    message = str(caught.value)
    assert "too few labelled papers to learn modality" in message
    assert "text 44" in message and "image 4" in message
    assert not (tmp_path / "m.npz").exists()
    line = one_error_line(cli("train", "--from", path, "--folds", "2"))
    assert "no such database" in line  # said before a minute of training
    assert not db_path.exists()
    Store(db_path).close()
    before = state(db_path)
    line = one_error_line(cli("train", "--from", path, "--folds", "2"))
    assert "learn modality" in line
    assert state(db_path) == before


def test_no_labelled_papers_at_all_is_an_error(learned_db: Path, tmp_path: Path) -> None:
    taxonomy = load_taxonomy()
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match="no labelled papers in the file") as caught:
            examples_from_file(path, taxonomy)
        assert caught.value.path == str(path)
    with pytest.raises(ConfigError, match="no labelled papers"):
        fit([], taxonomy, folds=2)

    # A database with annotations but no review decisions, and no other source.
    before = state(learned_db)
    line = one_error_line(cli("train", "--folds", "2"))
    assert "no labelled papers to train on" in line
    line = one_error_line(cli("train", "--from", tmp_path / "empty.jsonl", "--folds", "2"))
    assert "empty.jsonl: no labelled papers in the file" in line
    assert state(learned_db) == before
    # No database at all: none is created.
    fresh = tmp_path / "fresh.duckdb"
    line = one_error_line(cli("--db", fresh, "train", "--folds", "2"))
    assert "no such database" in line
    assert not fresh.exists()


# ---------------------------------------------------------------- model files
def _without_member(data: bytes, member: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if info.filename != member:
                dst.writestr(info, src.read(info))
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _meta(obj: object) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


CORRUPT = {
    "random-bytes": lambda real: random.Random(0).randbytes(4096),
    "empty": lambda real: b"",
    "truncated-half": lambda real: real[: len(real) // 2],
    "truncated-tail": lambda real: real[:-20],
    "missing-coef": lambda real: _without_member(real, "technique.coef.npy"),
    "missing-vocabulary": lambda real: _without_member(real, "vocabulary.npy"),
    "only-meta": lambda real: _npz(meta=_meta({"format": FORMAT})),
    "no-meta": lambda real: _npz(vocabulary=np.array(["a", "b"])),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_model_file_is_a_model_error_naming_it(
    case: str, model_a: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(CORRUPT[case](model_a))
    with pytest.raises(ModelError) as caught:
        LearnedModel.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "model file" in message


def _flip_inside_first_member(real: bytes) -> bytes:
    """Sixteen bytes inverted at the start of the first member's compressed data: what a bad
    disk sector or a damaged download does."""
    with zipfile.ZipFile(io.BytesIO(real)) as zf:
        info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 4
    damaged = bytearray(real)
    for k in range(start, start + 16):
        damaged[k] ^= 0xFF
    return bytes(damaged)


def _plain_npy(real: bytes) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(10))
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            _flip_inside_first_member,
            id="damaged-compressed-data",
        ),
        pytest.param(
            _plain_npy,
            id="plain-npy-not-npz",
        ),
        pytest.param(
            lambda real: _npz(meta=_meta([FORMAT])),
            id="meta-not-an-object",
        ),
    ],
)
def test_a_damaged_model_file_is_a_model_error_too(
    make: Any, model_a: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "damaged.npz"
    path.write_bytes(make(model_a))
    with pytest.raises(ModelError) as caught:
        LearnedModel.load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_cli_corrupt_model_file_is_one_line_and_annotates_nothing(
    learned_db: Path, model_a: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(model_a[: len(model_a) // 2])
    before = state(learned_db)
    line = one_error_line(cli("annotate", "--annotator", "learned", "--model", path))
    assert f"{path}: not a papertag model file" in line
    line = one_error_line(cli("annotate", "--model", tmp_path / "missing.npz"))
    assert "missing.npz: no such model file" in line
    assert state(learned_db) == before


class _Payload:
    """Unpickling this runs os.mkdir(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_loading_a_model_never_unpickles(model_a: bytes, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    payload = np.array([_Payload(marker)], dtype=object)
    path = tmp_path / "evil.npz"
    # np.savez writes object arrays with pickle; here as "meta" and as "vocabulary".
    path.write_bytes(_npz(meta=payload, vocabulary=payload))
    with pytest.raises(ModelError, match="not a papertag model file") as caught:
        LearnedModel.load(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert not marker.exists()
    with pytest.raises(ModelError):
        load_model(None, str(path))
    assert not marker.exists()
    # The payload is live: a loader that allowed pickle would have run it.
    with np.load(path, allow_pickle=True) as npz:
        npz["meta"]
    assert marker.is_dir()


def test_a_model_from_a_newer_papertag_is_refused(
    model_a: bytes, learned_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = tmp_path / "newer.npz"
    model = LearnedModel.from_bytes(model_a)
    with monkeypatch.context() as mp:
        mp.setattr(model_module, "FORMAT", FORMAT + 1)
        model.save(newer)
        with Store(learned_db) as s:
            save_model(s, model, "future")
    with np.load(newer) as npz:
        assert json.loads(bytes(npz["meta"]))["format"] == FORMAT + 1
    with pytest.raises(ModelError) as caught:
        LearnedModel.load(newer)
    message = str(caught.value)
    assert message.startswith(f"{newer}: written by a newer papertag")
    assert f"model format {FORMAT + 1}" in message

    before = state(learned_db)
    line = one_error_line(cli("annotate", "--model", newer))
    assert f"{newer}: written by a newer papertag" in line
    # The one saved in the database: by name, and as the newest model, the default.
    line = one_error_line(cli("annotate", "--model", "future"))
    assert "model 'future': written by a newer papertag" in line
    line = one_error_line(cli("annotate"))
    assert "model 'future': written by a newer papertag" in line
    assert state(learned_db) == before


# ==================================================================== determinism
def test_training_twice_gives_byte_identical_models(
    data: Data, model_a: bytes, base: Base, tmp_path: Path
) -> None:
    again = train(None, files=[data.train_a], folds=2, out=tmp_path / "a.npz")
    assert (tmp_path / "a.npz").read_bytes() == model_a
    assert again.report.version == model_hash(model_a) == again.model.version
    # Saved into a database, the same training gives the same version.
    assert base.version_a == model_hash(model_a)
    # Other data, or other settings, give another model.
    other = train(None, files=[data.train_b], folds=2, out=tmp_path / "b.npz")
    three = train(None, files=[data.train_a], folds=3, out=tmp_path / "a3.npz")
    assert len({again.report.version, other.report.version, three.report.version}) == 3


def test_training_in_fresh_processes_gives_the_same_bytes(
    data: Data, model_a: bytes, tmp_path: Path
) -> None:
    # Different hash seeds: no set or dict order may leak into the file.
    procs = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}.npz"
        cmd = [PAPERTAG, "--db", tmp_path / "none.duckdb", "train", "--from", data.train_a]
        cmd += ["--folds", "2", "--out", out]
        env = {**os.environ, "PYTHONHASHSEED": seed}
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append((out, subprocess.Popen(list(map(str, cmd)), env=env, **pipes)))
    for out, proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert f"saved model {model_hash(model_a)} to {out}" in stdout
        assert out.read_bytes() == model_a
    assert not (tmp_path / "none.duckdb").exists()


# ============================================================ the annotation key
def test_a_retrained_model_gives_new_annotations_and_old_ones_go_stale(
    learned_db: Path, data: Data, base: Base
) -> None:
    report = json.loads(ok(cli("train", "--from", data.train_b, "--folds", "2", "--json")).stdout)
    version_b = report["version"]
    assert report["name"] == "local" and version_b != base.version_a

    result = ok(cli("annotate", "--annotator", "learned"))
    assert "annotated 12, skipped 0 (already done), failed 0" in result.stdout
    assert f"learned/local, prompt {version_b}" in result.stdout
    with Store(learned_db) as s:
        rows = s.con.execute(
            "SELECT prompt_version, current, count(DISTINCT paper_id) FROM labels "
            "WHERE annotator = 'learned' GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        papers = s.scalar("SELECT count(*) FROM papers")
    assert sorted(rows) == sorted([(base.version_a, False, papers), (version_b, True, papers)])
    assert "annotated 0, skipped 12" in ok(cli("annotate")).stdout

    listed = json.loads(ok(cli("models", "--json")).stdout)
    shipped = model_hash(SHIPPED_PATH.read_bytes())
    assert [(m["name"], m["version"], m["where"]) for m in listed] == [
        ("local", version_b, "database"),
        ("local", base.version_a, "database"),
        ("default", shipped, "package"),
    ]
    assert listed[0]["examples"] == 48 and set(listed[0]["cv"]) == set(FIELDS)
    table = ok(cli("models")).stdout
    assert table.index(version_b) < table.index(base.version_a) < table.index(shipped)


def test_model_default_is_the_shipped_model(learned_db: Path, tmp_path: Path) -> None:
    shipped = model_hash(SHIPPED_PATH.read_bytes())
    before = current_labels(learned_db)
    result = ok(cli("annotate", "--model", "default"))
    assert f"learned/default, prompt {shipped}" in result.stdout
    assert "annotated 12, skipped 0" in result.stdout
    with Store(learned_db) as s:
        rows = s.con.execute(
            "SELECT DISTINCT prompt_version, current FROM labels WHERE model = 'default'"
        ).fetchall()
        ann = get_annotator("learned", model="default", store=s)
    assert rows == [(shipped, True)]
    assert (ann.model, ann.prompt_version) == ("default", shipped)
    # Another model, another key: the local model's annotations stay current.
    assert current_labels(learned_db) == before
    # A database without trained models uses the shipped one.
    with Store(tmp_path / "empty.duckdb") as s:
        ann = get_annotator("learned", store=s)
    assert (ann.model, ann.prompt_version) == ("default", shipped)


def test_an_unknown_model_name_is_one_line(learned_db: Path) -> None:
    before = state(learned_db)
    line = one_error_line(cli("annotate", "--model", "nosuch"))
    assert "no model named 'nosuch'; known: default, local" in line
    assert state(learned_db) == before


# ============================================================ every label validates
def check_annotation(ann: Annotation, title: str, abstract: str) -> int:
    """Every rule a learned annotation keeps; returns its number of candidates."""
    text = fold(f"{title}\n{abstract}")
    taxonomy = load_taxonomy()
    for fname in FIELDS:
        labels = ann.labels(fname)
        ids = [label.id for label in labels]
        assert 1 <= len(labels) <= MAX_LABELS and len(set(ids)) == len(ids)
        for label in labels:
            assert label.id in taxonomy.ids(fname)
            assert 0.0 <= label.confidence <= 1.0
            assert 0 < len(label.evidence) <= MAX_EVIDENCE_CHARS
            assert fold(label.evidence) in text, (label.evidence, title)
        assert [label.confidence for label in labels] == sorted(
            (label.confidence for label in labels), reverse=True
        )
    for cand in ann.candidates:
        assert cand.id in taxonomy.ids(cand.field)
        assert cand.id not in [label.id for label in ann.labels(cand.field)]
        assert DROP_THRESHOLD <= cand.confidence <= 1.0
        assert fold(cand.evidence) in text
    return len(ann.candidates)


def test_every_label_of_the_shipped_model_validates() -> None:
    rows = [json.loads(line) for line in SILVER.read_text(encoding="utf-8").splitlines()]
    papers = [PaperInput(f"p{i}", r["title"], r["abstract"]) for i, r in enumerate(rows[::25])]
    long_sentence = (
        "In this work, which builds on a long line of prior studies of compressing large "
        "language models for deployment on commodity hardware with limited memory and "
        "bandwidth, and which we evaluate on many benchmarks, we propose a post-training "
        "quantization method that rounds weights to four bits with a learned per-channel "
        "scale, and we show on models from one to seventy billion parameters that it keeps "
        "perplexity within a few tenths of the full-precision model while cutting the "
        "memory footprint threefold and speeding up decoding on consumer graphics cards"
    )
    assert len(long_sentence) > MAX_EVIDENCE_CHARS + 200
    papers += [
        PaperInput("long", "Four-Bit Weights", long_sentence + "."),
        PaperInput("title-only", "Post-Training Quantization of Vision Transformers", ""),
        PaperInput("abstract-only", "", "We prune attention heads of BERT. It is faster."),
        PaperInput("nothing", " ", ""),
    ]
    annotator = get_annotator("learned", model="default")
    results = annotator.annotate_many(papers)
    assert len(results) == len(papers)
    *good, nothing = results
    assert isinstance(nothing, AnnotationError) and nothing.paper_id == "nothing"
    n_candidates = 0
    for paper, ann in zip(papers, good, strict=False):
        assert isinstance(ann, Annotation), (paper.paper_id, ann)
        n_candidates += check_annotation(ann, paper.title, paper.abstract)
    assert n_candidates > 0
    # The long sentence is cut to a quote of whole words, around the quantization term.
    long_ann = good[-3]
    quote = long_ann.technique[0].evidence
    assert long_ann.technique[0].id == "quantization"
    assert len(quote) <= MAX_EVIDENCE_CHARS < len(long_sentence) and quote in long_sentence


def test_every_stored_label_of_a_trained_model_validates(base: Base) -> None:
    with Store(base.db) as s:
        rows = s.con.execute(
            "SELECT l.annotation_id, l.field, l.label, l.confidence, l.evidence, p.title, "
            "p.abstract, 'label' FROM labels l JOIN papers p USING (paper_id) "
            "WHERE l.annotator = 'learned' UNION ALL "
            "SELECT c.annotation_id, c.field, c.label, c.confidence, c.evidence, p.title, "
            "p.abstract, 'candidate' FROM candidates c JOIN papers p USING (paper_id) "
            "WHERE c.annotator = 'learned'"
        ).fetchall()
        model, _, _ = load_model(s, "local")
    per_field: dict[tuple[str, str], int] = {}
    for annotation_id, fname, label, conf, evidence, title, abstract, kind in rows:
        assert label in model.fields[fname].labels
        assert 0.0 <= conf <= 1.0
        assert fold(evidence) in fold(f"{title}\n{abstract}")
        if kind == "label":
            per_field[annotation_id, fname] = per_field.get((annotation_id, fname), 0) + 1
    assert len(per_field) == 3 * 3 * HELD_OUT
    assert set(per_field.values()) <= set(range(1, MAX_LABELS + 1))


# ================================================== review decisions, then train
def test_review_decisions_then_train_give_a_model_that_follows_them(
    learned_db: Path, data: Data, base: Base, tmp_path: Path
) -> None:
    before = current_labels(learned_db)
    with Store(learned_db) as s:
        model, _, _ = load_model(s, "local")
        papers = s.con.execute(
            "SELECT paper_id, title, abstract FROM papers ORDER BY paper_id"
        ).fetchall()
    probs = LearnedAnnotator(model).probabilities([(t, a) for _, t, a in papers])
    techniques = model.fields["technique"].labels
    # The reviewer takes the two papers whose technique the model is least sure of and
    # changes the model's label to its runner-up ...
    changed: dict[str, tuple[str, str]] = {}
    for i in np.argsort(probs["technique"].max(axis=1), kind="stable")[:2]:
        pid = papers[i][0]
        first, second = np.argsort(-probs["technique"][i], kind="stable")[:2]
        x, y = techniques[first], techniques[second]
        assert before[pid, "technique"] == [x]
        changed[pid] = (x, y)
    # ... and on a third paper adds the modality the model missed that it rates highest.
    added_pid, i = next((p[0], i) for i, p in enumerate(papers) if p[0] not in changed)
    modalities = model.fields["modality"].labels
    ranked = [modalities[j] for j in np.argsort(-probs["modality"][i], kind="stable")]
    added = next(m for m in ranked if m not in before[added_pid, "modality"])
    with Store(learned_db) as s:
        for pid, (x, y) in changed.items():
            record_decision(s, pid, "technique", x, "change", new_label=y, reviewer="ana")
        add_label(s, added_pid, "modality", added, reviewer="ana")
        examples = {ex.title: ex for ex in examples_from_reviews(s)}
        titles = dict(s.con.execute("SELECT paper_id, title FROM papers").fetchall())
    # What training will read: the person's labels, weighing three times a file's.
    assert len(examples) == 3
    for pid, (x, y) in changed.items():
        ex = examples[titles[pid]]
        assert ex.weight == REVIEW_WEIGHT and list(ex.labels) == ["technique"]
        assert y in ex.labels["technique"] and x not in ex.labels["technique"]
    assert added in examples[titles[added_pid]].labels["modality"]

    report = json.loads(ok(cli("train", "--from", data.train_a, "--folds", "2", "--json")).stdout)
    assert report["sources"] == {"file:train_a.jsonl": 48, "reviews": 3}
    assert report["examples"] == 51 and report["version"] != base.version_a
    assert "annotated 12, skipped 0" in ok(cli("annotate")).stdout
    after = current_labels(learned_db)
    for pid, (x, y) in changed.items():
        assert after[pid, "technique"][0] == y and x not in after[pid, "technique"]
    assert added in after[added_pid, "modality"]
    # Papers nobody reviewed mostly keep their first technique (three more training papers
    # may tip one that was close).
    kept = [
        after[pid, "technique"][0] == before[pid, "technique"][0]
        for pid, _, _ in papers
        if pid not in changed
    ]
    assert sum(kept) >= len(kept) - 1
    # And the decisions are what made the difference: without them, model A comes back.
    control = train(
        learned_db, files=[data.train_a], folds=2, reviews=False, out=tmp_path / "control.npz"
    )
    assert control.report.version == base.version_a


def test_retraining_after_an_undo_puts_the_first_model_back_in_use(
    learned_db: Path, data: Data, base: Base
) -> None:
    with Store(learned_db) as s:
        pid, x = s.con.execute(
            "SELECT paper_id, label FROM labels WHERE current AND field = 'technique' "
            "AND label = 'quantization' ORDER BY paper_id LIMIT 1"
        ).fetchone() or ("", "")
        decision = record_decision(
            s, pid, "technique", x, "change", new_label="retrieval_indexing", reviewer="ana"
        )
    ok(cli("train", "--from", data.train_a, "--folds", "2"))
    ok(cli("annotate"))
    assert current_labels(learned_db)[pid, "technique"][0] == "retrieval_indexing"
    with Store(learned_db) as s:
        undo_decision(s, decision.decision_id, reviewer="ana")
    result = ok(cli("train", "--from", data.train_a, "--folds", "2"))
    # Without the decision the data are model A's again, and so are the bytes.
    assert f"saved model {base.version_a} " in result.stdout
    result = ok(cli("annotate"))
    assert f"prompt {base.version_a}" in result.stdout
    assert current_labels(learned_db)[pid, "technique"][0] == x


# ===================================================================== the CLI
def test_train_json_reports_figures_sources_and_examples(
    data: Data, base: Base, db_path: Path
) -> None:
    Store(db_path).close()
    result = ok(cli("train", "--from", data.train_a, "--folds", "2", "--name", "mine", "--json"))
    report = json.loads(result.stdout)
    assert report["name"] == "mine" and report["version"] == base.version_a
    assert report["examples"] == 48 and report["folds"] == 2
    assert report["sources"] == {"file:train_a.jsonl": 48}
    assert report["dropped_labels"] == []
    assert set(report["cv"]) == set(report["thresholds"]) == set(FIELDS)
    for figures in report["cv"].values():
        assert set(figures) == {"micro_f1", "macro_f1", "precision", "recall"}
        assert all(0.0 <= v <= 1.0 for v in figures.values())
    # Three techniques with distinct vocabularies: the cross-validated F1 is far above chance.
    assert report["cv"]["technique"]["micro_f1"] > 0.6
    assert 0.0 <= report["ece"] <= 1.0
    assert report["saved_to"] == f"{db_path} (model 'mine')"
    with Store(db_path) as s:
        rows = s.con.execute("SELECT name, version, meta FROM models").fetchall()
    assert [(n, v) for n, v, _ in rows] == [("mine", base.version_a)]
    meta = json.loads(rows[0][2])
    assert meta["cv"] == report["cv"] and meta["examples"] == 48


def test_train_out_refuses_to_overwrite_without_force(
    data: Data, model_a: bytes, tmp_path: Path, db_path: Path
) -> None:
    out = tmp_path / "model.npz"
    out.write_bytes(b"precious")
    line = one_error_line(cli("train", "--from", data.train_a, "--folds", "2", "--out", out))
    assert f"{out}: already exists; pass --force to replace it" in line
    assert out.read_bytes() == b"precious"
    ok(cli("train", "--from", data.train_a, "--folds", "2", "--out", out, "--force"))
    assert out.read_bytes() == model_a
    assert not db_path.exists()  # a model written to a file needs no database


def test_train_from_an_annotator_distills_its_labels(
    data: Data, db_path: Path, tmp_path: Path
) -> None:
    assert ingest_digests(
        [unlabelled(tmp_path / "all.jsonl", [*data.rows_a, *data.held])], db_path
    ).ok
    rules = annotate_papers(db_path, "rules")
    assert rules.done == 60

    report = json.loads(
        ok(cli("train", "--from-annotator", "rules", "--folds", "2", "--json")).stdout
    )
    assert report["sources"] == {f"annotator:rules/{rules.model}": 60}
    assert report["examples"] == 60
    ok(cli("annotate", "--annotator", "learned"))
    with Store(db_path) as s:
        counts = dict(
            s.con.execute(
                "SELECT label, count(*) FROM labels WHERE current AND annotator = 'rules' "
                "AND field = 'technique' GROUP BY label"
            ).fetchall()
        )
        student, _, _ = load_model(s)
        agree, total = s.con.execute(
            """
            WITH r AS (SELECT paper_id, list(label) AS labels FROM labels
                       WHERE current AND annotator = 'rules' AND field = 'technique'
                       GROUP BY paper_id)
            SELECT count(*) FILTER (WHERE list_contains(r.labels, l.label)), count(*)
            FROM r JOIN labels l USING (paper_id)
            WHERE l.current AND l.annotator = 'learned' AND l.field = 'technique'
              AND l.rank = 1
            """
        ).fetchone() or (0, 0)
    # The student knows its teacher's techniques, not the silver set's three ...
    assert set(student.fields["technique"].labels) == {k for k, n in counts.items() if n >= 5}
    assert len(counts) > len(KEEP["technique"])
    dropped = {
        d["label"]: d["examples"] for d in report["dropped_labels"] if d["field"] == "technique"
    }
    assert dropped == {k: n for k, n in counts.items() if n < 5}
    # ... and its first technique is one of the teacher's on (nearly) every paper.
    assert total == 60 and agree >= 0.8 * total

    before = state(db_path)
    line = one_error_line(cli("train", "--from-annotator", "nosuch", "--folds", "2"))
    assert "no current labels of annotator 'nosuch'" in line
    assert state(db_path) == before
    result = cli("train", "--model", "gpt-4o-mini", "--folds", "2")
    assert result.exit_code == 2 and "--model needs --from-annotator" in result.stderr
    fresh = tmp_path / "fresh.duckdb"
    line = one_error_line(cli("--db", fresh, "train", "--from-annotator", "rules"))
    assert "no such database" in line
    assert not fresh.exists()


# ============================================================== the taxonomy
def test_a_model_older_than_a_taxonomy_label_fails_clearly(
    learned_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), prompts)
    taxonomy = prompts / "taxonomy.yaml"
    head = '  technique:\n    description: "what the paper\'s main contribution does"\n'
    head += "    labels:\n"
    text = taxonomy.read_text(encoding="utf-8")
    assert head in text
    new_label = '      frobnication:\n        definition: "frobnicates"\n'
    new_label += "        synonyms: [frobnication]\n\n"
    taxonomy.write_text(text.replace(head, head + new_label, 1), encoding="utf-8")
    monkeypatch.setenv("PAPERTAG_PROMPTS", str(prompts))
    assert "frobnication" in load_taxonomy().ids("technique")
    try:
        report = annotate_papers(learned_db, "learned")
    except PapertagError as exc:
        assert "retrain" in str(exc)
    else:
        assert report.failed == 0 and report.done == 12
