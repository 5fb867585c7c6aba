"""End to end with three classes: docs/data.md's 3-class demo experiment at tiny size (its own
file, so it runs beside tests/test_pipeline.py's when pytest runs two workers)."""

import json
import sys

import numpy as np
import pandas as pd
import pytest

from tests.test_pipeline import TINY, make_project, sh

pytestmark = pytest.mark.slow  # end to end: the fast tier (pytest -m "not slow") leaves it out

THREE_CLASSES = (  # docs/data.md's 3-class demo experiment, word for word
    "-S",
    "synthesize.classes=[Normal,Covid,Pneumonia]",
    "-S",
    "+data.classes.Pneumonia=[PNEUMONIA]",
)


def test_a_three_class_demo_runs_end_to_end_as_an_experiment(tmp_path):
    """`dvc exp run` with a third class: K-class metrics (the same keys in every file, one
    `dvc metrics show` row per arch x mode), 3x3 confusions, one-vs-rest curves, multinomial probes."""
    work = make_project(tmp_path / "proj", {**TINY, ("train", "modes"): ["fe", "ft"]})  # two modes: CI time
    sh(work, "dvc", "exp", "run", *THREE_CLASSES)
    report = json.loads((work / "metrics" / "index_report.json").read_text())
    assert report["per_class"] == {"Normal": 14, "Covid": 14, "Pneumonia": 14}
    modes = ("fe", "ft")
    heads = {
        m: json.loads((work / "metrics" / "modes" / f"efficientnet_lite0-{m}.json").read_text())
        for m in modes
    }
    keys = {frozenset(h) for h in heads.values()}
    assert len(keys) == 1  # every metrics file of one class set has the same keys
    assert {"auroc_macro", "f1_macro", "kappa", "recall", "specificity"} <= set(heads["fe"])
    assert "log_loss" not in heads["fe"]  # lean: the rest is in eval/<run>/metrics.json
    for m in modes:
        run = work / "eval" / f"efficientnet_lite0-{m}-s0"
        full = json.loads((run / "metrics.json").read_text())
        pred = pd.read_csv(run / "predictions.csv")
        assert heads[m]["accuracy"] == pytest.approx((pred["predicted"] == pred["class"]).mean(), abs=1e-6)
        cm = full["confusion_matrix"]["rows_true_columns_predicted"]
        assert len(cm) == 3 and sum(map(sum, cm)) == len(pred) == heads[m]["n_test"]
        recall_covid = ((pred["class"] == "Covid") & (pred["predicted"] == "Covid")).sum() / (
            pred["class"] == "Covid"
        ).sum()
        assert heads[m]["recall"] == pytest.approx(recall_covid, abs=1e-6)  # data.positive vs the rest
        assert set(pd.read_csv(run / "roc.csv")["class"]) == {"Normal", "Covid", "Pneumonia"}
    shown = json.loads(sh(work, "dvc", "metrics", "show", "--json"))
    files = next(iter(shown.values()))["data"]
    rows = [f for f in files if f.startswith("metrics/modes/")]
    assert sorted(rows) == sorted(f"metrics/modes/efficientnet_lite0-{m}.json" for m in modes)
    compare = json.loads((work / "metrics" / "compare.json").read_text())["pairs"]
    assert all({"accuracy", "auroc_macro", "mcnemar_p"} <= set(c) for c in compare.values())
    assert all(c["auroc_macro"]["method"] == "test_set" for c in compare.values())
    skipped = json.loads((work / "metrics" / "external.json").read_text())
    assert skipped["sites"] == [] or all(s["name"] != "site-b" for s in skipped["sites"])
    probe = json.loads((work / "metrics" / "probe.json").read_text())
    assert probe["auroc_average"] == "macro one-vs-rest over 3 classes"
    roc = pd.read_csv(work / "plots" / "roc.csv")
    assert "efficientnet_lite0-fe: Pneumonia vs rest" in set(roc["model"])
    summary = (work / "metrics" / "summary.md").read_text()
    assert "| NETWORK | Precision (macro) |" in summary and "macro AUROC" in summary
    assert (work / "plots" / "gradcam" / "efficientnet_lite0-fe.png").exists()
    # the exported 3-class model predicts the test files with the argmax, as evaluate did
    pred = pd.read_csv(work / "eval" / "efficientnet_lite0-ft-s0" / "predictions.csv")
    sh(
        work,
        sys.executable,
        "-m",
        "cxr_transfer",
        "predict",
        *(f"data/raw/{p}" for p in pred["path"]),
        "--model",
        "exported/efficientnet_lite0-ft",
        "--out",
        "new.csv",
    )
    new = pd.read_csv(work / "new.csv")
    cols = ["p_Normal", "p_Covid", "p_Pneumonia"]
    assert np.abs(new[cols].to_numpy() - pred[cols].to_numpy()).max() < 1e-4
    assert (new["predicted"] == pred["predicted"]).all() and "threshold" not in new
