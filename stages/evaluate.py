"""Stage evaluate@<arch>-<mode>-<seed>: predict the test split with the best checkpoint and score it."""

import argparse
from pathlib import Path

import torch

from cxr_transfer.calibration import calibrate, calibrate_k
from cxr_transfer.cli import run, write_json
from cxr_transfer.engine import pick_device, predict_proba, store_budget
from cxr_transfer.evaluation import (
    curves,
    curves_k,
    evaluate,
    evaluate_k,
    headline,
    headline_k,
    per_source,
    prediction_table,
    prediction_table_k,
)
from cxr_transfer.models import load_trained
from cxr_transfer.params import load_params
from cxr_transfer.prepare import load_store
from cxr_transfer.speed import keep_freed_memory
from cxr_transfer.tables import read_table


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
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.speed)
    p = load_params(args.params)
    cfg = p.evaluate
    model, meta = load_trained(args.model)
    classes = meta["classes"]
    device = pick_device(p.train.device)
    probs = {}
    for split in ("val", "test"):
        x, _ = load_store(args.prepared, split)
        budget = store_budget(device, p.train.memory_budget)
        probs[split] = predict_proba(
            model, meta["arch"], meta["mean"], meta["std"], x, device, budget=budget
        ).numpy()
    test, val = read_table(args.splits / "test.csv"), read_table(args.splits / "val.csv")
    groups = test["group"].to_numpy()
    if len(classes) == 2:
        pos = classes.index(p.data.positive)
        y, y_val = (test["label"] == pos).to_numpy(), (val["label"] == pos).to_numpy()
        p_test, p_val = probs["test"][:, pos], probs["val"][:, pos]
        m = evaluate(y, p_test, groups, y_val, p_val, cfg.bootstrap, cfg.seed, cfg.confidence, cfg.ece_bins)
        cal, p_cal = calibrate(y_val, p_val, y, p_test, cfg.ece_bins)
        pred = prediction_table(test, p_test, classes, p.data.positive)
        if p_cal is not None:
            pred["probability_calibrated"] = p_cal.round(6)  # temperature-scaled on validation
        roc, pr = curves(y, p_test)
        said = f"AUROC {m['auroc']} (95% CI {m['ci']['auroc']})"
    else:
        y, y_val, p_test = test["label"].to_numpy(), val["label"].to_numpy(), probs["test"]
        m = evaluate_k(
            y, p_test, groups, classes, p.data.positive, cfg.bootstrap, cfg.seed, cfg.confidence, cfg.ece_bins
        )
        cal = calibrate_k(y_val, probs["val"], y, p_test, cfg.ece_bins)
        pred = prediction_table_k(test, p_test, classes)
        roc, pr = curves_k(y, p_test, classes)
        said = f"macro AUROC {m['auroc_macro']} (95% CI {m['ci']['auroc_macro']}), {len(classes)} classes"
    keep = ("train_seconds", "images_per_s", "best_epoch", "epochs_run", "trainable_params", "total_params")
    full = {"arch": meta["arch"], "mode": meta["mode"], **m, **{k: meta[k] for k in keep}}
    full["per_source"] = per_source(test, y, p_test, cfg.ece_bins)
    full["calibration"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in cal.items()}
    write_json(args.eval_dir / "metrics.json", full)
    head = headline(full) if len(classes) == 2 else headline_k(full)
    write_json(args.eval_dir / "headline.json", head)  # the report averages it over seeds
    pred.to_csv(args.eval_dir / "predictions.csv", index=False)
    roc.to_csv(args.eval_dir / "roc.csv", index=False)
    pr.to_csv(args.eval_dir / "pr.csv", index=False)
    print(f"evaluate {args.model.name}: accuracy {m['accuracy']}, {said} on {len(y)} test images")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "evaluate")
