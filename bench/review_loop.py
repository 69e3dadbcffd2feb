"""Benchmark: does reviewing in the queue's order teach the learned model more than random?

The silver set is split with a fixed seed into a training half (default 1,120 papers,
written to a temporary JSONL file), a pool (560 papers, ingested into a database and
annotated by the model) and a held-out test set (560 papers, never in the database).
Round 0 trains a model (``pipeline.train`` from the training half, reviews included,
3 folds), annotates the pool with it (``annotate_papers(store, "learned", model=...)``) and
scores the test set (annotated in memory with ``LearnedAnnotator.annotate_many``,
scored with ``evaluate.score``). Then two arms, each on its own copy of that database:

* queue: each round, the first K items (default 50) of ``review.review_queue``;
* random: each round, K items drawn with a seeded RNG from the whole queue.

Each item is decided as a person would, from the paper's silver labels: accept if the
label is among the silver labels of its field, else reject, recorded with
``review.decide`` (source 'api', reviewer 'bench'). Then the arm retrains (the same
call: its decisions now count), re-annotates the pool (the new model version makes new
annotations, and so a new queue) and scores the test set again. Printed per round and
arm: held-out micro-F1 per field, their mean, and the decisions so far; at the end the
difference queue - random, final and averaged over rounds. Target: the queue's order
beats random.

    .venv/bin/python bench/review_loop.py [--rounds 5] [--per-round 50] [--train 1120]
        [--pool 560] [--test 560] [--folds 3] [--seed 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papertag.annotate import annotate_papers
from papertag.annotators import PaperInput
from papertag.annotators.learned.annotator import LearnedAnnotator
from papertag.annotators.learned.model import LearnedModel
from papertag.annotators.learned.pipeline import train
from papertag.annotators.learned.sources import examples_from_reviews
from papertag.db import Store
from papertag.errors import AnnotationError
from papertag.ingest import Entry, FileReport, clean_text, title_key, write_entries
from papertag.review import decide, review_queue
from papertag.scoring import GoldPaper, Item, score
from papertag.taxonomy import FIELDS, Taxonomy, load_taxonomy

ROOT = Path(__file__).resolve().parents[1]
SILVER = ROOT.parent / "shared" / "train" / "silver.jsonl"
MODEL_NAME = "bench"
ARMS = ("queue", "random")


@dataclass
class Arm:
    name: str
    db: Path
    decisions: int = 0
    accepted: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------- helpers
def test_scores(
    model: LearnedModel, rows: list[dict[str, Any]], taxonomy: Taxonomy
) -> dict[str, float]:
    """Held-out micro-F1 per field (and their mean) of ``model`` on ``rows``."""
    annotator = LearnedAnnotator(model, model_name=MODEL_NAME, taxonomy=taxonomy)
    papers = [PaperInput(str(i), r["title"], r["abstract"]) for i, r in enumerate(rows)]
    gold: list[GoldPaper] = []
    predictions: list[list[Item]] = []
    for row, result in zip(rows, annotator.annotate_many(papers), strict=True):
        gold.append(
            GoldPaper(
                clean_text(row["title"]),
                clean_text(row["abstract"]),
                {f: set(row[f]) for f in FIELDS},
                {f: set() for f in FIELDS},
            )
        )
        items: list[Item] = []
        if not isinstance(result, AnnotationError):
            for f in FIELDS:
                items += [Item(f, lab.id, lab.confidence, "label") for lab in getattr(result, f)]
            items += [Item(c.field, c.id, c.confidence, "candidate") for c in result.candidates]
        predictions.append(items)
    scored = score(gold, predictions)
    out = {f: scored.fields[f].micro_f1 for f in FIELDS}
    out["mean"] = sum(out.values()) / len(FIELDS)
    return out


def retrain_and_annotate(
    store: Store, train_file: Path, folds: int, taxonomy: Taxonomy
) -> tuple[LearnedModel, float, float]:
    """Train into the database (file + the database's review decisions), re-annotate the
    pool with the new model; returns the model and both durations."""
    t0 = time.perf_counter()
    result = train(
        store, files=[train_file], reviews=True, name=MODEL_NAME, folds=folds, taxonomy=taxonomy
    )
    trained = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = annotate_papers(store, "learned", model=MODEL_NAME)
    if report.failed:
        raise SystemExit(f"annotate: {report.failed} papers failed: {report.failures[:3]}")
    return result.model, trained, time.perf_counter() - t0


def review_round(
    store: Store,
    arm: Arm,
    per_round: int,
    rng: random.Random,
    silver_by_paper: dict[str, dict[str, list[str]]],
) -> int:
    """Decide ``per_round`` queue items as the silver labels say; returns the queue's size."""
    queue = review_queue(store)
    if arm.name == "queue":
        picked = queue[:per_round]
    else:
        picked = rng.sample(queue, min(per_round, len(queue)))
    for item in picked:
        truth = silver_by_paper[item.paper_id][item.field]
        action = "accept" if item.label in truth else "reject"
        decide(store, item, action, reviewer="bench", source="api")
        arm.decisions += 1
        arm.accepted += action == "accept"
    return len(queue)


def review_examples(store: Store, silver_by_key: dict[str, dict[str, Any]]) -> tuple[int, int, int]:
    """What the decisions teach, as training sees it: (papers, paper-fields, paper-fields whose
    label set equals the silver one)."""
    examples = examples_from_reviews(store)
    pairs = [(ex, f) for ex in examples for f in ex.labels]
    exact = sum(set(ex.labels[f]) == set(silver_by_key[title_key(ex.title)][f]) for ex, f in pairs)
    return len(examples), len(pairs), exact


def _fmt(scores: dict[str, float]) -> str:
    return " ".join(f"{scores[f]:>13.4f}" for f in FIELDS) + f" {scores['mean']:>8.4f}"


def _copy_db(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, dst.with_name(dst.name + ".wal"))


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="review rounds (default 5)")
    ap.add_argument("--per-round", type=int, default=50, help="decisions per round (default 50)")
    ap.add_argument("--train", type=int, default=1120, help="training papers (default 1,120)")
    ap.add_argument("--pool", type=int, default=560, help="papers to review from (default 560)")
    ap.add_argument("--test", type=int, default=560, help="held-out papers (default 560)")
    ap.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    ap.add_argument("--seed", type=int, default=7, help="split and random-arm seed (default 7)")
    ap.add_argument("--keep", type=Path, help="write the databases here and keep them")
    args = ap.parse_args()

    started = time.perf_counter()
    taxonomy = load_taxonomy()
    rows = [json.loads(line) for line in SILVER.read_text(encoding="utf-8").splitlines() if line]
    if args.train + args.pool + args.test > len(rows):
        raise SystemExit(f"{SILVER.name} has {len(rows)} papers; the split asks for more")
    random.Random(args.seed).shuffle(rows)
    train_rows = rows[: args.train]
    pool_rows = rows[args.train : args.train + args.pool]
    test_rows = rows[args.train + args.pool : args.train + args.pool + args.test]
    print(
        f"silver {len(rows):,} papers, seed {args.seed}: train {len(train_rows):,}, "
        f"pool {len(pool_rows):,} (in the database), held-out test {len(test_rows):,}; "
        f"{args.rounds} rounds of {args.per_round} decisions, {args.folds}-fold training"
    )

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        train_file = tmp / "train-half.jsonl"
        train_file.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_rows), encoding="utf-8"
        )
        base = tmp / "round0.duckdb"
        with Store(base) as store:
            entries = [
                Entry(i + 1, None, r["title"], r["abstract"]) for i, r in enumerate(pool_rows)
            ]
            write_entries(store, entries, digest=None, report=FileReport(path="pool"))
            by_key: dict[str, dict[str, Any]] = {
                title_key(clean_text(r["title"])): r for r in pool_rows
            }
            silver_by_paper = {
                pid: {f: list(by_key[key][f]) for f in FIELDS}
                for pid, key in store.con.execute(
                    "SELECT paper_id, title_key FROM papers"
                ).fetchall()
            }
            model, trained, annotated = retrain_and_annotate(
                store, train_file, args.folds, taxonomy
            )
            queued = len(review_queue(store))
        round0 = test_scores(model, test_rows, taxonomy)
        print(
            f"round 0: trained in {trained:.1f}s, pool annotated in {annotated:.1f}s, "
            f"{queued:,} items in the review queue"
        )

        head = (
            f"\n{'round':>5} {'arm':<6} {'decisions':>9} {'accepted':>8} {'queue':>6} "
            + " ".join(f"{f:>13}" for f in FIELDS)
            + f" {'mean':>8} {'reviewed':>8} {'exact':>5} {'train s':>7}"
        )
        print(head)
        print("-" * (len(head) - 1))
        arms = [Arm(name, tmp / f"{name}.duckdb") for name in ARMS]
        for arm in arms:
            _copy_db(base, arm.db)
            arm.history.append(round0)
            print(
                f"{0:>5} {arm.name:<6} {0:>9} {0:>8} {queued:>6,} {_fmt(round0)} "
                f"{'0/0':>8} {'-':>5} {trained:>7.1f}"
            )
        rng = random.Random(args.seed)
        for rnd in range(1, args.rounds + 1):
            for arm in arms:
                with Store(arm.db) as store:
                    size = review_round(store, arm, args.per_round, rng, silver_by_paper)
                    papers, pairs, exact = review_examples(store, by_key)
                    model, trained, _ = retrain_and_annotate(
                        store, train_file, args.folds, taxonomy
                    )
                scores = test_scores(model, test_rows, taxonomy)
                arm.history.append(scores)
                print(
                    f"{rnd:>5} {arm.name:<6} {arm.decisions:>9} {arm.accepted:>8} {size:>6,} "
                    f"{_fmt(scores)} {f'{papers}/{pairs}':>8} {exact / max(pairs, 1):>5.0%} "
                    f"{trained:>7.1f}",
                    flush=True,
                )

    queue_arm, random_arm = arms
    diffs = [
        q["mean"] - r["mean"]
        for q, r in zip(queue_arm.history[1:], random_arm.history[1:], strict=True)
    ]
    final = {k: queue_arm.history[-1][k] - random_arm.history[-1][k] for k in (*FIELDS, "mean")}
    print("\nqueue - random, final round: " + ", ".join(f"{k} {v:+.4f}" for k, v in final.items()))
    if diffs:
        mean_diff = sum(diffs) / len(diffs)
        print(
            f"queue - random, mean micro-F1 averaged over rounds 1-{len(diffs)}: {mean_diff:+.4f} "
            f"(queue {'beats' if mean_diff > 0 else 'does NOT beat'} random); "
            f"gain over round 0: queue {queue_arm.history[-1]['mean'] - round0['mean']:+.4f}, "
            f"random {random_arm.history[-1]['mean'] - round0['mean']:+.4f}"
        )
    print(
        "accepted: decisions where the silver labels agree with the item; queue: its size "
        "before the round's decisions;\nreviewed: papers/paper-fields the decisions add to "
        "training (weight 3); exact: share of those label sets\nequal to the silver set"
    )
    print(f"wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
