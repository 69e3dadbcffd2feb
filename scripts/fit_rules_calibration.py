"""Refit the rules annotator's CALIBRATION on the shared silver set (never on dev gold).

For every silver paper and field, each label the rules score becomes one example: its
features (papertag.annotators.rules.features) and whether the silver reading chose it.
An L2-regularised logistic regression per field gives the weights to paste into
rules.CALIBRATION; 5-fold cross-validated log loss and ECE are printed beside them.

    .venv/bin/python scripts/fit_rules_calibration.py [../shared/train/silver.jsonl]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from papertag.annotators.rules import RulesAnnotator, features
from papertag.taxonomy import FIELDS, load_taxonomy

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/train/silver.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    tax = load_taxonomy()
    rules = RulesAnnotator(tax)
    generic = {
        (f, lab)
        for f in FIELDS
        for lab, spec in tax.fields[f].labels.items()
        if spec.extra.get("generic") is True
    }
    data: dict[str, tuple[list[tuple[float, ...]], list[bool], list[int]]] = {
        f: ([], [], []) for f in FIELDS
    }
    for i, row in enumerate(rows):
        _, _, scored = rules.score(row["title"], row["abstract"])
        for fname, items in scored.items():
            items = [x for x in items if x.label in tax.fields[fname].labels]
            if not items:
                continue
            top = items[0].score
            for rank, item in enumerate(items):
                x, y, g = data[fname]
                x.append(features(item, rank, top, (fname, item.label) in generic))
                y.append(item.label in row[fname])
                g.append(i)
    print(f"fitted on {len(rows)} papers of {path.name}")
    print("CALIBRATION: dict[str, tuple[float, ...]] = {")
    for fname in FIELDS:
        x, y, g = (np.array(v) for v in data[fname])
        lr = LogisticRegression(C=1.0, fit_intercept=False, max_iter=5000)
        oof = np.zeros(len(y))
        for tr, te in GroupKFold(5).split(x, y, g):
            oof[te] = lr.fit(x[tr], y[tr]).predict_proba(x[te])[:, 1]
        bins = np.minimum((oof * 10).astype(int), 9)
        ece = sum(
            abs(oof[bins == b].mean() - y[bins == b].mean()) * (bins == b).sum()
            for b in range(10)
            if (bins == b).any()
        ) / len(y)
        w = lr.fit(x, y).coef_[0]
        weights = ", ".join(f"{v:.3f}" for v in w)
        print(f'    "{fname}": ({weights}),  # {len(y)} scored labels, 5-fold ECE {ece:.3f}')
    print("}")


if __name__ == "__main__":
    main()
