"""Stage evaluate@<arch>-<mode>-<seed>: predict the test split with the best checkpoint and score it."""

import argparse
from pathlib import Path

import numpy as np
import torch

from cxr_transfer.core.cli import run
from cxr_transfer.core.params import load_params
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.prepare import load_folds, load_store
from cxr_transfer.evaluate.crossval import fold_figures, spread
from cxr_transfer.evaluate.evaluation import per_source, score_split, write_scored
from cxr_transfer.train.engine import pick_device, predict_proba, store_budget
from cxr_transfer.train.models import load_trained
from cxr_transfer.train.speed import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prepared", type=Path, required=True, help="prepare's folder (val/ and test/ are read)")
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument(
        "--eval-dir", type=Path, required=True, help="headline and full metrics, predictions and curves"
    )
    args = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.train.speed)
    p = load_params(args.params)
    cfg = p.evaluate
    device = pick_device(p.train.device)
    budget = store_budget(device, p.train.memory_budget)

    def score(model_dir: Path, stores: dict) -> tuple[dict[str, np.ndarray], dict]:
        model, meta = load_trained(model_dir)
        args_ = (meta["arch"], meta["mean"], meta["std"])
        return {
            s: predict_proba(model, *args_, x, device, budget=budget).numpy() for s, x in stores.items()
        }, meta

    folds, fold = load_folds(args.prepared), None
    if folds is None:
        probs, meta = score(args.model, {s: load_store(args.prepared, s)[0] for s in ("val", "test")})
        test, val = read_table(args.splits / "test.csv"), read_table(args.splits / "val.csv")
        seconds = meta["train_seconds"]
    else:  # out of fold: each image scored by the one model that never saw it
        x, _ = load_store(args.prepared, "folds")
        runs = [
            score(args.model / f"fold{i}" if i else args.model, {s: x[f[s]] for s in ("val", "test")})
            for i, f in enumerate(folds["folds"])
        ]
        meta = runs[0][1]  # fold 0's model stands for the run (its sidecar); training time is every fold's
        seconds = sum(m["train_seconds"] for _, m in runs)
        rows = {s: np.concatenate([f[s] for f in folds["folds"]]).astype(int) for s in ("val", "test")}
        pool = read_table(args.splits / "folds.csv")
        test, val = (pool.iloc[rows[s]].reset_index(drop=True) for s in ("test", "val"))
        probs = {s: np.concatenate([q[s] for q, _ in runs]) for s in ("val", "test")}
        fold = np.concatenate([np.full(len(f["test"]), i) for i, f in enumerate(folds["folds"])])
    classes = meta["classes"]
    m, pred, (roc, pr), (y, p_test), cal = score_split(test, val, probs, classes, p.data.positive, cfg)
    said = (
        f"AUROC {m['auroc']} (95% CI {m['ci']['auroc']})"
        if len(classes) == 2
        else f"macro AUROC {m['auroc_macro']} (95% CI {m['ci']['auroc_macro']}), {len(classes)} classes"
    )
    keep = ("images_per_s", "best_epoch", "epochs_run", "trainable_params", "total_params")
    full = {"arch": meta["arch"], "mode": meta["mode"], **m, "train_seconds": round(seconds, 2)}
    full |= {k: meta[k] for k in keep}
    if fold is not None:  # each fold's figures on its own test images, and their spread
        n_train = {i: len(f["train"]) for i, f in enumerate(folds["folds"])}
        per_fold = fold_figures(y, p_test, fold, n_train, cfg.ece_bins)
        full["folds"] = {"k": folds["k"], "per_fold": per_fold, "spread": spread(per_fold)}
        pred.insert(0, "fold", fold)
        said += f", out of fold over {folds['k']} folds"
    full["per_source"] = per_source(test, y, p_test, cfg.ece_bins)
    full["calibration"] = cal
    write_scored(args.eval_dir, full, pred, roc, pr)
    print(f"evaluate {args.model.name}: accuracy {m['accuracy']}, {said} on {len(y)} test images")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "evaluate")
