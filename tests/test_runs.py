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
from cxr_transfer.train.card import ModelInfo
from cxr_transfer.train.engine import predict_proba
from cxr_transfer.train.models import build_model, get_spec

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
