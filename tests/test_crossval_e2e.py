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


def _with_sources(work, where: dict) -> None:
    """The tiny project's images copied to own/ with a metadata table giving each a source:
    `where(cls, i)` -> the source of the i-th image of class cls."""
    import shutil

    from tests.test_pipeline import sh

    sh(work, "dvc", "repro", "synthesize")
    shutil.copytree(work / "data" / "raw", work / "own")
    rows = []
    for folder, cls in (("NORMAL", "Normal"), ("COVID", "Covid")):
        for i, f in enumerate(sorted((work / "own" / folder).iterdir())):
            rows.append({"FILE NAME": f.name, "SOURCE": where[cls](i)})
    pd.DataFrame(rows).to_csv(work / "own" / "meta.csv", index=False)


SOURCE_KEYS = [
    "-S", "data.root=own", "-S", "data.metadata.file=meta.csv", "-S", "data.metadata.source_column=SOURCE",
    "-S", "data.metadata.patient_column=null", "-S", "split.folds_by=source", "-S", "train.modes=[fe]",
]  # fmt: skip


def test_leave_one_source_out_runs_where_two_sources_hold_both_classes(tmp_path):
    """h1 and h2 hold both classes, h3 only Covid: `dvc exp run -S split.folds_by=source` gives
    two folds, each source's images scored by the model trained without that source; h3 trains
    in both and is never scored; the summary says which sources were the folds."""
    work = make_project(tmp_path / "proj", TINY)
    _with_sources(
        work,
        {"Normal": lambda i: "h1" if i < 7 else "h2", "Covid": lambda i: ("h1", "h2", "h3")[min(i // 5, 2)]},
    )
    would_run(work, "exp", "run", "report", *SOURCE_KEYS)
    split = json.loads((work / "metrics" / "split.json").read_text())
    assert split["folds"]["by_source"]["folds"] == {"f0": "h1", "f1": "h2"}
    assert split["folds"]["by_source"]["never_tested"] == 4  # Covid images 10-13
    data = pd.read_csv(work / "data" / "data.csv")
    pred = pd.read_csv(work / "eval" / "efficientnet_lite0-fe-s0" / "predictions.csv")
    src = dict(zip(data["path"], data["source"], strict=True))
    assert sorted(pred["path"]) == sorted(p for p, s in src.items() if s in ("h1", "h2"))
    assert (pred["fold"] == pred["path"].map(src).map({"h1": 0, "h2": 1})).all()
    summary = (work / "metrics" / "summary.md").read_text()
    assert "## Cross-validation: 2 folds (one per source)" in summary
    assert "Leave-one-source-out: each of the 2 sources that hold every class (h1, h2)" in summary


def test_leave_one_source_out_refuses_sources_that_each_hold_one_class(tmp_path):
    """Each source one class (the COVID-19 Radiography Database's case), here given as one folder
    of class folders per source (data.sources): the split stage stops with one line saying the
    data cannot separate source from label, and nothing is trained."""
    import shutil
    import subprocess
    import sys

    from tests.test_pipeline import sh

    work = make_project(tmp_path / "proj", TINY)
    sh(work, "dvc", "repro", "synthesize")  # the sources as folders under data.root (data.sources)
    shutil.copytree(work / "data" / "raw" / "NORMAL", work / "own" / "hospital-a" / "NORMAL")
    shutil.copytree(work / "data" / "raw" / "COVID", work / "own" / "archive-b" / "COVID")
    keys = ["-S", "data.root=own", "-S", "data.sources={hospital-a: hospital-a, archive-b: archive-b}"]
    keys += ["-S", "split.folds_by=source", "-S", "train.modes=[fe]"]
    env = {"PATH": f"{sys.executable.rpartition('/')[0]}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(["dvc", "exp", "run", *keys], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode != 0
    said = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("split: error:")]
    why = [
        "split.folds_by: source: 0 of 2 sources hold every class (archive-b: Covid; hospital-a: Normal),",
        "so the data cannot separate source from label: a model may score by recognising the source,",
        "and no split of these images can tell; only an external set can (params.yaml external:).",
        "Use folds_by: group, and read its results beside the source-confounding probe",
    ]
    assert said == ["split: error: " + " ".join(why)]
    assert "Running stage 'split'" in r.stdout and "Running stage 'train" not in r.stdout
