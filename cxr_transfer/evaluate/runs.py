"""A trained run scored on the test split (k folds: out of fold, each image by the one model that
never saw it), and every run scored on an external set with the threshold and temperature chosen
on the internal validation split. What the evaluate and external_eval stages do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_transfer.core.params import EvaluateConfig
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.prepare import load_folds, load_store
from cxr_transfer.evaluate.crossval import fold_figures, spread
from cxr_transfer.evaluate.evaluation import per_source, score_split, write_scored
from cxr_transfer.train.card import ModelInfo
from cxr_transfer.train.engine import pick_device, predict_proba, store_budget
from cxr_transfer.train.models import load_trained

KEPT = ("images_per_s", "best_epoch", "epochs_run", "trainable_params", "total_params")


class Scorer:
    """Trained models' float32 probabilities on image stores, on the device and memory budget the
    params name (train.device, train.memory_budget)."""

    def __init__(self, device: str, memory_budget):
        self.device = pick_device(device)
        self.budget = store_budget(self.device, memory_budget)

    def __call__(self, model_dir: Path, stores: dict) -> tuple[dict[str, np.ndarray], ModelInfo]:
        model, info = load_trained(model_dir)
        norm = (info.arch, info.mean, info.std)
        probs = {
            s: predict_proba(model, *norm, x, self.device, budget=self.budget).numpy()
            for s, x in stores.items()
        }
        return probs, info


def evaluate_run(
    model: Path,
    prepared: Path,
    splits: Path,
    eval_dir: Path,
    positive: str,
    cfg: EvaluateConfig,
    score: Scorer,
) -> str:
    """Score `model` (a run folder) on the test split, threshold and calibrate on validation,
    write eval_dir's files; returns the line the stage prints."""
    folds, fold = load_folds(prepared), None
    if folds is None:
        probs, info = score(model, {s: load_store(prepared, s)[0] for s in ("val", "test")})
        test, val = read_table(splits / "test.csv"), read_table(splits / "val.csv")
        seconds = info.summary["train_seconds"]
    else:  # out of fold: each image scored by the one model that never saw it
        x, _ = load_store(prepared, "folds")
        runs = [
            score(model / f"fold{i}" if i else model, {s: x[f[s]] for s in ("val", "test")})
            for i, f in enumerate(folds["folds"])
        ]
        info = runs[0][1]  # fold 0's model stands for the run (its sidecar); training time is every fold's
        seconds = sum(m.summary["train_seconds"] for _, m in runs)
        rows = {s: np.concatenate([f[s] for f in folds["folds"]]).astype(int) for s in ("val", "test")}
        pool = read_table(splits / "folds.csv")
        test, val = (pool.iloc[rows[s]].reset_index(drop=True) for s in ("test", "val"))
        probs = {s: np.concatenate([q[s] for q, _ in runs]) for s in ("val", "test")}
        fold = np.concatenate([np.full(len(f["test"]), i) for i, f in enumerate(folds["folds"])])
    classes = info.classes
    m, pred, (roc, pr), (y, p_test), cal = score_split(test, val, probs, classes, positive, cfg)
    said = (
        f"AUROC {m['auroc']} (95% CI {m['ci']['auroc']})"
        if len(classes) == 2
        else f"macro AUROC {m['auroc_macro']} (95% CI {m['ci']['auroc_macro']}), {len(classes)} classes"
    )
    full = {"arch": info.arch, "mode": info.mode, **m, "train_seconds": round(seconds, 2)}
    full |= {k: info.summary[k] for k in KEPT}
    if fold is not None:  # each fold's figures on its own test images, and their spread
        n_train = {i: len(f["train"]) for i, f in enumerate(folds["folds"])}
        per_fold = fold_figures(y, p_test, fold, n_train, cfg.ece_bins)
        full["folds"] = {"k": folds["k"], "per_fold": per_fold, "spread": spread(per_fold)}
        pred.insert(0, "fold", fold)
        said += f", out of fold over {folds['k']} folds"
    full["per_source"] = per_source(test, y, p_test, cfg.ece_bins)
    full["calibration"] = cal
    write_scored(eval_dir, full, pred, roc, pr)
    return f"evaluate {model.name}: accuracy {m['accuracy']}, {said} on {len(y)} test images"


def evaluate_external(
    name: str,
    runs: dict[str, Path],
    external: Path,
    prepared: Path,
    splits: Path,
    classes: list[str],
    positive: str,
    cfg: EvaluateConfig,
    score: Scorer,
    out: Path,
) -> list[str]:
    """Every run (name -> model folder; k folds: fold 0's model stands in) on the external set
    prepared in `external`, thresholded and calibrated on the internal validation split (prepare's
    val store, the split's val.csv); writes out/<run>/, returns a line per run."""
    x_ext, table = load_store(external.parent, external.name)[0], read_table(external / "data.csv")
    x_val, val = load_store(prepared, "val")[0], read_table(splits / "val.csv")
    lines = []
    for run_dir, model in runs.items():
        probs, info = score(model, {"val": x_val, "test": x_ext})
        m, pred, (roc, pr), (y, p_ext), cal = score_split(table, val, probs, classes, positive, cfg)
        full = {"arch": info.arch, "mode": info.mode, "external": name, **m, "calibration": cal}
        full["per_source"] = per_source(table, y, p_ext, cfg.ece_bins)
        (out / run_dir).mkdir(parents=True, exist_ok=True)
        write_scored(out / run_dir, full, pred, roc, pr)
        lines.append(f"{run_dir} accuracy {m['accuracy']}, AUROC {m.get('auroc', m.get('auroc_macro'))}")
    return lines
