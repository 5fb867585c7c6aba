"""A trained run scored on the test split (k folds: out of fold, each image by the one model that
never saw it), and every run scored on an external set with the threshold and temperature chosen
on the internal validation split. What the evaluate and external_eval stages do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_transfer.core.params import EvaluateConfig
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.prepare import load_folds, load_store
from cxr_transfer.evaluate import verdicts
from cxr_transfer.evaluate.crossval import fold_figures, spread
from cxr_transfer.evaluate.evaluation import (
    Scores,
    curves,
    curves_k,
    evaluate,
    evaluate_k,
    headline,
    headline_k,
    per_source,
    score_split,
    write_scored,
)
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.engine import model_logits, pick_device, store_budget
from cxr_transfer.runtime.models import load_trained
from cxr_transfer.runtime.speed import runtime_for

KEPT = ("images_per_s", "best_epoch", "epochs_run", "trainable_params", "total_params")


class Scorer:
    """Trained models' float32 probabilities on image stores, on the device and memory budget the
    params name (train.device, train.memory_budget)."""

    def __init__(self, device: str, memory_budget, models: int = 1):
        self.device = pick_device(device)
        self.budget = store_budget(self.device, memory_budget)
        self.models, self.runtime = models, None  # the runtime: decided at the first call, for all

    def __call__(self, model_dir: Path, stores: dict) -> tuple[dict[str, Scores], ModelInfo]:
        model, info = load_trained(model_dir)
        norm = (info.arch, info.mean, info.std)
        if self.runtime is None:  # once per stage, from its whole work: every model on one runtime
            images, size = sum(len(x) for x in stores.values()), next(iter(stores.values())).shape[-1]
            self.runtime = runtime_for(info.arch, size, images, self.models)
        out = {}
        for s, x in stores.items():
            z = model_logits(model, *norm, x, self.device, budget=self.budget, runtime=self.runtime)
            out[s] = Scores(z.softmax(1).numpy(), z.numpy())
        return out, info


def models_of(prepared: Path) -> int:
    """How many models one run has: k with k folds, else 1."""
    folds = load_folds(prepared)
    return 1 if folds is None else int(folds["k"])


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
    write eval_dir's files; returns the line the stage prints. k folds: `evaluate_folds`."""
    folds = load_folds(prepared)
    if folds is not None:
        return evaluate_folds(model, prepared, splits, eval_dir, positive, cfg, score, folds)
    probs, info = score(model, {s: load_store(prepared, s)[0] for s in ("val", "test")})
    test, val = read_table(splits / "test.csv"), read_table(splits / "val.csv")
    classes = info.classes
    m, pred, (roc, pr), (y, p_test), cal = score_split(test, val, probs, classes, positive, cfg)
    full = {
        "arch": info.arch,
        "mode": info.mode,
        **m,
        "train_seconds": round(info.summary["train_seconds"], 2),
    }
    full |= {k: info.summary[k] for k in KEPT}
    full["per_source"] = per_source(test, y, p_test, cfg.ece_bins)
    full["calibration"] = cal
    write_scored(eval_dir, full, pred, roc, pr)
    return f"evaluate {model.name}: accuracy {m['accuracy']}, {_said(m, classes)} on {len(y)} test images"


def _said(m: dict, classes: list[str]) -> str:
    if len(classes) == 2:
        return f"AUROC {m['auroc']} (95% CI {m['ci']['auroc']})"
    return f"macro AUROC {m['auroc_macro']} (95% CI {m['ci']['auroc_macro']}), {len(classes)} classes"


def evaluate_folds(model, prepared, splits, eval_dir, positive, cfg, score, folds) -> str:
    """k folds: each fold's model on its own test part, thresholded and calibrated on its own
    validation part. The headline is the mean of the per-fold figures with Nadeau and Bengio's
    interval over the folds (pooled k models' scores mix score scales: each fold model has its own);
    the pooled out-of-fold figures are kept beside it, labelled (`pooled`)."""
    x, _ = load_store(prepared, "folds")
    pool = read_table(splits / "folds.csv")
    parts, tests, infos = [], [], []
    for i, f in enumerate(folds["folds"]):
        scores, info = score(model / f"fold{i}" if i else model, {s: x[f[s]] for s in ("val", "test")})
        test, val = (pool.iloc[f[s]].reset_index(drop=True) for s in ("test", "val"))
        parts.append(score_split(test, val, scores, info.classes, positive, cfg))
        tests.append(test)
        infos.append(info)
    classes, info = infos[0].classes, infos[0]  # fold 0's model stands for the run (its sidecar)
    test = pd.concat(tests, ignore_index=True)
    y, p_test = (np.concatenate([q[3][j] for q in parts]) for j in (0, 1))
    fold = np.concatenate([np.full(len(t), i) for i, t in enumerate(tests)])
    pooled = pooled_figures(y, p_test, test, classes, positive, cfg)
    head = headline(pooled) if len(classes) == 2 else headline_k(pooled)
    # pooled: the confusion counts and per-class figures (the decisions are each fold model's own
    # argmax, so they pool exactly); the headline figures and their intervals: over the folds
    full = {"arch": info.arch, "mode": info.mode, **pooled}
    if "youden" in parts[0][0]:  # the exported model is fold 0's: its own validation threshold
        full["youden"] = {**parts[0][0]["youden"], "fold": 0}
    for k, v in head.items():  # the mean over folds of each fold's own figure
        vals = [q[0].get(k) for q in parts]
        full[k] = v if k == "n_test" else None if None in vals else round(float(np.mean(vals)), 6)
    ratio = float(np.mean([len(f["test"]) / len(f["train"]) for f in folds["folds"]]))
    full["ci"] = {  # rounded as every other figure of the file
        k: verdicts.over_folds(
            np.array([[np.nan if q[0].get(k) is None else q[0][k]] for q in parts]), ratio, cfg.confidence
        ).ci
        for k in pooled["ci"]
    }
    full["ci"] = {k: _bounded(k, v) for k, v in full["ci"].items()}
    full |= {"ci_level": cfg.confidence, "ci_method": "over_folds", "n_groups": pooled["n_groups"]}
    full["pooled"] = {
        **head,
        "ci": pooled["ci"],
        "note": "every image scored by its own fold's model, pooled",
    }
    seconds = sum(m.summary["train_seconds"] for m in infos)
    full |= {"train_seconds": round(seconds, 2), **{k: info.summary[k] for k in KEPT}}
    n_train = {i: len(f["train"]) for i, f in enumerate(folds["folds"])}
    per_fold = fold_figures(y, p_test, fold, n_train, cfg.ece_bins)
    for row, q in zip(per_fold, parts, strict=True):
        row["youden_threshold"] = (q[0].get("youden") or {}).get("threshold")
        row["temperature"] = q[4].get("temperature")
    full["folds"] = {"k": folds["k"], "per_fold": per_fold, "spread": spread(per_fold)}
    full["per_source"] = per_source(test, y, p_test, cfg.ece_bins)
    full["calibration"] = {**parts[0][4], "per_fold": [q[4] for q in parts], "note": "fold 0's model's"}
    pred = pd.concat([q[1] for q in parts], ignore_index=True)
    pred.insert(0, "fold", fold)
    roc, pr = curves(y, p_test) if len(classes) == 2 else curves_k(y, p_test, classes)
    write_scored(eval_dir, full, pred, roc, pr)
    said = _said({**full, "ci": full["ci"]}, classes)
    return (
        f"evaluate {model.name}: accuracy {full['accuracy']}, {said}, the mean over {folds['k']} folds, "
        f"each on its own test part ({len(y)} test images)"
    )


def _bounded(key: str, ci: list[float] | None) -> list[float] | None:
    """A t-interval of a figure clipped to the figure's range ([0, 1]; kappa [-1, 1]; log loss
    [0, inf)), rounded as every figure of the file."""
    if ci is None:
        return None
    lo, hi = {"kappa": (-1.0, 1.0), "log_loss": (0.0, np.inf)}.get(key, (0.0, 1.0))
    return [round(float(np.clip(x, lo, hi)), 6) for x in ci]


def pooled_figures(y, p, test: pd.DataFrame, classes: list[str], positive, cfg) -> dict:
    """The pooled out-of-fold metrics (no threshold chosen: each fold's own is in per_fold)."""
    groups = test["group"].to_numpy()
    args = (cfg.bootstrap, cfg.seed, cfg.confidence, cfg.ece_bins)
    if len(classes) == 2:
        return evaluate(y, p, groups, None, None, *args)
    return evaluate_k(y, p, groups, classes, positive, *args)


def validation_parts(prepared: Path, splits: Path) -> list[tuple[str, object, pd.DataFrame]]:
    """(subfolder, validation store, validation table) of each model of a run: one split's val,
    or with k folds each fold's own validation part ("" for fold 0, "fold<i>" for the others, as
    the train stage lays out the models)."""
    folds = load_folds(prepared)
    if folds is None:
        return [("", load_store(prepared, "val")[0], read_table(splits / "val.csv"))]
    x, pool = load_store(prepared, "folds")[0], read_table(splits / "folds.csv")
    return [
        (f"fold{i}" if i else "", x[f["val"]], pool.iloc[f["val"]].reset_index(drop=True))
        for i, f in enumerate(folds["folds"])
    ]


def evaluate_external(
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
    """Every run's every model (name -> model folder; k folds: each fold's model, into
    out/<run>/fold<i>/ as models/ lays them out) on the external set prepared in `external` (its
    folder's name is the set's),
    thresholded and calibrated on its own internal validation part (never on the external
    images); writes out/<run>/, returns a line per run."""
    x_ext, table = load_store(external.parent, external.name)[0], read_table(external / "data.csv")
    name, parts = external.name, validation_parts(prepared, splits)
    lines = []
    for run_dir, model in runs.items():
        accs = []
        for sub, x_val, val in parts:
            probs, info = score(model / sub, {"val": x_val, "test": x_ext})
            m, pred, (roc, pr), (y, p_ext), cal = score_split(table, val, probs, classes, positive, cfg)
            full = {"arch": info.arch, "mode": info.mode, "external": name, **m, "calibration": cal}
            full["per_source"] = per_source(table, y, p_ext, cfg.ece_bins)
            (out / run_dir / sub).mkdir(parents=True, exist_ok=True)
            write_scored(out / run_dir / sub, full, pred, roc, pr)
            accs.append((m["accuracy"], m.get("auroc", m.get("auroc_macro"))))
        said = ", ".join(f"{a} / {u}" for a, u in accs)
        lines.append(
            f"{run_dir} accuracy / AUROC {said}" + (f" ({len(parts)} fold models)" if len(parts) > 1 else "")
        )
    return lines
