"""Stage evaluate@<arch>-<mode>-<seed>: predict the test split with the best checkpoint and score it."""

import argparse
from pathlib import Path

import torch

from cxr_transfer.calibration import calibrate
from cxr_transfer.cli import run, write_json
from cxr_transfer.engine import pick_device, predict_proba
from cxr_transfer.evaluation import curves, evaluate, headline, per_source, prediction_table
from cxr_transfer.models import load_trained
from cxr_transfer.params import load_params
from cxr_transfer.prepare import load_store
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
    p = load_params(args.params)
    cfg = p.evaluate
    model, meta = load_trained(args.model)
    pos = meta["classes"].index(p.data.positive)
    device = pick_device(p.train.device)
    probs = {}
    for split in ("val", "test"):
        x, _ = load_store(args.prepared, split)
        probs[split] = predict_proba(model, meta["mean"], meta["std"], x, 64, device)[:, pos].numpy()
    test, val = read_table(args.splits / "test.csv"), read_table(args.splits / "val.csv")
    y, y_val = (test["label"] == pos).to_numpy(), (val["label"] == pos).to_numpy()
    m = evaluate(
        y,
        probs["test"],
        test["group"].to_numpy(),
        y_val,
        probs["val"],
        cfg.bootstrap,
        cfg.seed,
        cfg.confidence,
        cfg.ece_bins,
    )
    keep = ("train_seconds", "images_per_s", "best_epoch", "epochs_run", "trainable_params", "total_params")
    full = {"arch": meta["arch"], "mode": meta["mode"], **m, **{k: meta[k] for k in keep}}
    full["per_source"] = per_source(test, y, probs["test"], cfg.ece_bins)
    cal, p_cal = calibrate(y_val, probs["val"], y, probs["test"], cfg.ece_bins)
    full["calibration"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in cal.items()}
    write_json(args.eval_dir / "metrics.json", full)
    write_json(args.eval_dir / "headline.json", headline(full))  # the report averages it over seeds
    pred = prediction_table(test, probs["test"], meta["classes"], p.data.positive)
    if p_cal is not None:
        pred["probability_calibrated"] = p_cal.round(6)  # temperature-scaled on validation
    pred.to_csv(args.eval_dir / "predictions.csv", index=False)
    roc, pr = curves(y, probs["test"])
    roc.to_csv(args.eval_dir / "roc.csv", index=False)
    pr.to_csv(args.eval_dir / "pr.csv", index=False)
    print(
        f"evaluate {args.model.name}: accuracy {m['accuracy']}, AUROC {m['auroc']} "
        f"(95% CI {m['ci']['auroc']}) on {len(y)} test images"
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "evaluate")
