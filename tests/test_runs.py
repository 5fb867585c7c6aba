"""evaluate/runs.py, the evaluate stage's work, on a tiny model and stores built in tmp_path:
what it writes is the metrics engine's verdict on predict_proba's probabilities."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_transfer.core.params import EvaluateConfig
from cxr_transfer.data.prepare import write_store
from cxr_transfer.evaluate.binary import point_metrics
from cxr_transfer.evaluate.runs import Scorer, evaluate_run
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.engine import predict_proba
from cxr_transfer.runtime.models import build_model, get_spec

CLASSES = ["Normal", "Covid"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A resnet18 run folder (random weights) and val/test stores of 16 images at 32 px each."""
    root = tmp_path_factory.mktemp("run")
    spec = get_spec("resnet18")
    net = build_model("resnet18", None, 2, 0)
    (root / "model").mkdir()
    torch.save(net.state_dict(), root / "model" / "best.pt")
    info = ModelInfo("resnet18", "fe", CLASSES, 32, list(spec.mean), list(spec.std), summary={})
    summary = {"train_seconds": 1.5, "images_per_s": 10.0, "best_epoch": 1, "epochs_run": 1}
    summary |= {"trainable_params": 1026, "total_params": 11_177_538}
    ModelInfo(**{**vars(info), "summary": summary}).write(root / "model")
    rng = np.random.default_rng(0)
    (root / "prepared" / "folds").mkdir(parents=True)  # as prepare writes it without split.folds
    (root / "prepared" / "folds" / "meta.json").write_text(json.dumps({"split": "folds", "k": None}))
    for split in ("val", "test"):
        y = np.array([0, 1] * 8)
        df = pd.DataFrame(
            {
                "path": [f"{split}/{i}.png" for i in range(16)],
                "group": [f"{split}-{i // 2}" for i in range(16)],
            }
        ).assign(label=y, **{"class": [CLASSES[v] for v in y]})
        x = rng.integers(0, 256, (16, 32, 32), dtype=np.uint8)
        write_store(
            root / "prepared" / split,
            lambda out, x=x: out.__setitem__(slice(None), x),
            df,
            32,
            split,
            {"classes": CLASSES},
        )
        (root / "splits").mkdir(exist_ok=True)
        df.to_csv(root / "splits" / f"{split}.csv", index=False)
    return root


def test_evaluate_run_writes_the_engines_figures_of_predict_probas_probabilities(run):
    cfg = EvaluateConfig(bootstrap=20)
    line = evaluate_run(
        run / "model", run / "prepared", run / "splits", run / "eval", "Covid", cfg, Scorer("cpu", "auto")
    )
    full = json.loads((run / "eval" / "metrics.json").read_text())
    head = json.loads((run / "eval" / "headline.json").read_text())
    pred = pd.read_csv(run / "eval" / "predictions.csv")
    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, 0)
    model.load_state_dict(torch.load(run / "model" / "best.pt", weights_only=True))
    x = np.load(run / "prepared" / "test" / "x.npy")
    p = predict_proba(model.eval(), "resnet18", spec.mean, spec.std, x, torch.device("cpu")).numpy()[:, 1]
    assert pred["probability"].to_numpy() == pytest.approx(p.round(6), abs=2e-6)
    y = np.array([0, 1] * 8)
    m = point_metrics(y, p)
    for k in ("accuracy", "recall", "specificity", "auroc", "brier"):
        assert full[k] == pytest.approx(m[k], abs=1e-6) and head[k] == full[k]
    assert full["n_test"] == 16 and full["n_groups"] == 8 and full["train_seconds"] == 1.5
    assert full["arch"] == "resnet18" and full["mode"] == "fe" and full["ci_level"] == 0.95
    assert line.startswith(f"evaluate model: accuracy {full['accuracy']}, AUROC {full['auroc']}")
    assert line.endswith("on 16 test images")


@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    """A 3-fold run: fold models of three seeds (model/, model/fold1, model/fold2) and a folds
    store of 36 images at 32 px, each fold testing 12 and validating on 8."""
    root = tmp_path_factory.mktemp("folds")
    spec = get_spec("resnet18")
    summary = {"train_seconds": 1.0, "images_per_s": 10.0, "best_epoch": 1, "epochs_run": 1}
    summary |= {"trainable_params": 1026, "total_params": 11_177_538}
    for k, sub in enumerate(("model", "model/fold1", "model/fold2")):
        (root / sub).mkdir(parents=True)
        torch.save(build_model("resnet18", None, 2, k).state_dict(), root / sub / "best.pt")
        ModelInfo("resnet18", "fe", CLASSES, 32, list(spec.mean), list(spec.std), summary=summary).write(
            root / sub
        )
    y = np.array([0, 1] * 18)
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(36)], "group": [f"g{i // 2}" for i in range(36)]})
    df = df.assign(label=y, **{"class": [CLASSES[v] for v in y]})
    x = np.random.default_rng(1).integers(0, 256, (36, 32, 32), dtype=np.uint8)
    write_store(
        root / "prepared" / "folds",
        lambda out: out.__setitem__(slice(None), x),
        df,
        32,
        "folds",
        {"classes": CLASSES},
    )
    meta = json.loads((root / "prepared" / "folds" / "meta.json").read_text())
    (root / "prepared" / "folds" / "meta.json").write_text(json.dumps({**meta, "k": 3}))
    parts = np.arange(36).reshape(3, 12)
    folds = []
    for f in range(3):
        rest = np.concatenate([parts[g] for g in range(3) if g != f])
        folds.append({"test": parts[f].tolist(), "val": rest[:8].tolist(), "train": rest[8:].tolist()})
    (root / "prepared" / "folds" / "folds.json").write_text(json.dumps({"k": 3, "folds": folds}))
    (root / "splits").mkdir()
    df.to_csv(root / "splits" / "folds.csv", index=False)
    return root, folds, x, y


def test_k_folds_headline_is_the_mean_of_each_fold_s_own_figures_thresholded_on_its_own_validation(folds_run):
    root, folds, x, y = folds_run
    cfg = EvaluateConfig(bootstrap=20)
    line = evaluate_run(
        root / "model",
        root / "prepared",
        root / "splits",
        root / "eval",
        "Covid",
        cfg,
        Scorer("cpu", "auto", 3),
    )
    full = json.loads((root / "eval" / "metrics.json").read_text())
    head = json.loads((root / "eval" / "headline.json").read_text())
    pred = pd.read_csv(root / "eval" / "predictions.csv")
    spec, aucs, accs = get_spec("resnet18"), [], []
    for f, sub in enumerate(("model", "model/fold1", "model/fold2")):
        model = build_model("resnet18", None, 2, 0)
        model.load_state_dict(torch.load(root / sub / "best.pt", weights_only=True))
        test = folds[f]["test"]
        p = predict_proba(
            model.eval(), "resnet18", spec.mean, spec.std, x[test], torch.device("cpu")
        ).numpy()[:, 1]
        m = point_metrics(y[test], p)
        aucs.append(m["auroc"])
        accs.append(m["accuracy"])
        assert pred.loc[pred["fold"] == f, "probability"].to_numpy() == pytest.approx(p.round(6), abs=2e-6)
        row = full["folds"]["per_fold"][f]
        assert row["accuracy"] == pytest.approx(m["accuracy"], abs=1e-6)
        assert "youden_threshold" in row and "temperature" in row
    assert head["auroc"] == pytest.approx(np.mean(aucs), abs=1e-6)  # not the pooled AUROC of three scales
    assert head["accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert full["pooled"]["accuracy"] == pytest.approx((pred["predicted"] == pred["class"]).mean(), abs=1e-6)
    assert full["ci_method"] == "over_folds" and len(full["calibration"]["per_fold"]) == 3
    assert sum(full["confusion"].values()) == 36 and full["n_test"] == 36
    assert "the mean over 3 folds" in line


def test_every_fold_model_is_scored_on_an_external_set_with_its_own_validation(folds_run, tmp_path):
    from cxr_transfer.evaluate.runs import evaluate_external

    root, folds, x, y = folds_run
    ext = tmp_path / "external" / "site"
    df = pd.DataFrame({"path": [f"e{i}.png" for i in range(10)], "group": [f"e{i}" for i in range(10)]})
    ye = np.array([0, 1] * 5)
    df = df.assign(label=ye, **{"class": [CLASSES[v] for v in ye]})
    xe = np.random.default_rng(2).integers(0, 256, (10, 32, 32), dtype=np.uint8)
    write_store(ext, lambda out: out.__setitem__(slice(None), xe), df, 32, "site", {"classes": CLASSES})
    df.to_csv(ext / "data.csv", index=False)
    out = tmp_path / "eval"
    cfg = EvaluateConfig(bootstrap=20)
    lines = evaluate_external(
        {"run": root / "model"},
        ext,
        root / "prepared",
        root / "splits",
        CLASSES,
        "Covid",
        cfg,
        Scorer("cpu", "auto", 3),
        out,
    )
    assert lines[0].endswith("(3 fold models)")
    for sub in ("", "fold1", "fold2"):
        assert len(pd.read_csv(out / "run" / sub / "predictions.csv")) == 10
    temps = [
        json.loads((out / "run" / s / "metrics.json").read_text())["calibration"]
        for s in ("", "fold1", "fold2")
    ]
    assert len(temps) == 3  # each fold model calibrated on its own fold's validation part
