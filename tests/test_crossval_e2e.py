"""End to end, k-fold cross-validation: a tiny project of its own (so that this file runs on the
other test worker, beside test_pipeline.py), `dvc exp run -S split.folds=3`."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from tests.test_pipeline import TINY, make_project, would_run

pytestmark = pytest.mark.slow  # end to end: the fast tier (pytest -m "not slow") leaves it out


def test_k_fold_cross_validation_by_one_setting_tests_every_image_once(tmp_path):
    """`dvc exp run -S split.folds=3`: no dvc.yaml edit; every image in exactly one fold's test part,
    no group in two folds' test parts or two roles of one fold; each image scored by its own
    fold's model (pooled out of fold); per-fold figures and the corrected interval recomputed here."""
    work = make_project(tmp_path / "proj", TINY)  # its own project: this file runs beside test_pipeline's
    # `report` as the target: the exports (fold 0's models) are left out for time
    ran = would_run(work, "exp", "run", "report", "-S", "split.folds=3", "-S", "train.modes=[fe,ft]")
    runs = ["efficientnet_lite0-fe", "efficientnet_lite0-ft"]
    assert ran == {
        "check_params",
        "synthesize",
        "index",
        "split",
        "prepare",
        "probe",
        *(f"{s}@{n}-0" for s in ("train", "evaluate") for n in runs),
        "report",
    }
    table = pd.read_csv(work / "data" / "split" / "folds.csv", dtype={"group": str})
    folds = json.loads((work / "data" / "prepared" / "folds" / "folds.json").read_text())["folds"]
    tested = [i for f in folds for i in f["test"]]
    assert sorted(tested) == list(range(len(table))) == list(range(28))  # union: all; disjoint: each once
    test_fold = np.empty(len(table), int)
    for k, f in enumerate(folds):
        test_fold[f["test"]] = k
        parts = {s: set(table["group"].iloc[f[s]]) for s in ("train", "val", "test")}
        assert not (
            parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"]
        )
    assert (table.assign(f=test_fold).groupby("group")["f"].nunique() == 1).all()  # no group straddles folds
    split = json.loads((work / "metrics" / "split.json").read_text())
    assert split["folds"]["k"] == 3 and split["folds"]["images_tested_once"] == 28
    per_fold = {}
    for n in runs:
        pred = pd.read_csv(work / "eval" / f"{n}-s0" / "predictions.csv")
        assert sorted(pred["path"]) == sorted(table["path"])  # each image scored once
        want = dict(zip(table["path"], test_fold, strict=True))
        assert (pred["fold"] == pred["path"].map(want)).all()  # by the model of the fold that tested it
        head = json.loads((work / "metrics" / "modes" / f"{n}.json").read_text())
        m = json.loads((work / "eval" / f"{n}-s0" / "metrics.json").read_text())
        assert m["pooled"]["accuracy"] == pytest.approx((pred["predicted"] == pred["class"]).mean())
        for r in m["folds"]["per_fold"]:
            mine = pred[pred["fold"] == r["fold"]]
            assert r["accuracy"] == pytest.approx((mine["predicted"] == mine["class"]).mean(), abs=1e-6)
            assert r["n_train"] == len(folds[r["fold"]]["train"])
        # the headline is the mean of each fold's own figure, not the pooled one
        mean = np.mean([r["accuracy"] for r in m["folds"]["per_fold"]])
        assert head["n_test"] == 28 and head["accuracy"] == pytest.approx(mean, abs=1e-6)
        assert m["ci_method"] == "over_folds" and len(m["calibration"]["per_fold"]) == 3
        per_fold[n] = m["folds"]["per_fold"]
        for k in (1, 2):
            sidecar = json.loads((work / "models" / f"{n}-s0" / f"fold{k}" / "model.json").read_text())
            assert (sidecar["fold"], sidecar["folds"]) == (k, 3)
            assert (work / "models" / f"{n}-s0" / f"fold{k}" / "dvclive" / "metrics.json").exists()
    # the git-tracked DVCLive folders hold fold 0 alone, as with one split: nothing untracked is left
    assert not list((work / "dvclive").rglob("fold*"))
    pair = json.loads((work / "metrics" / "compare.json").read_text())["pairs"][" vs ".join(reversed(runs))]
    d = [a["accuracy"] - b["accuracy"] for a, b in zip(per_fold[runs[1]], per_fold[runs[0]], strict=True)]
    ratio = np.mean([r["n_test"] / r["n_train"] for r in per_fold[runs[1]]])
    acc = pair["accuracy"]
    assert acc["method"] == "over_folds" and acc["point"] == pytest.approx(np.mean(d), abs=1e-6)
    if acc["ci"]:
        half = student_t.ppf(0.975, 2) * np.sqrt((1 / 3 + ratio) * np.var(d, ddof=1))
        assert acc["ci"] == pytest.approx([np.mean(d) - half, np.mean(d) + half], abs=1e-5)
    summary = (work / "metrics" / "summary.md").read_text()
    assert summary.startswith("# Results out of fold (3-fold cross-validation)")
    assert "## Cross-validation: 3 folds" in summary and "Nadeau-Bengio" in summary
