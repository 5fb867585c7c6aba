"""Stage external_eval@<i>: every trained model scored on one external test set, with the threshold
and temperature chosen on the internal validation split (never on the external images); and the
shortcut baselines trained on the internal data (pixels, acquisition facts) applied there too."""

import argparse
from pathlib import Path

import torch

from cxr_transfer.audit import probes as P
from cxr_transfer.core.cli import run, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.prepare import load_store
from cxr_transfer.evaluate.evaluation import per_source, score_split, write_scored
from cxr_transfer.evaluate.seeds import run_name
from cxr_transfer.train.engine import pick_device, predict_proba, store_budget
from cxr_transfer.train.models import load_trained
from cxr_transfer.train.speed import keep_freed_memory


def baselines(p, prepared: Path, splits: Path, x_ext, ext_table) -> dict:
    """The probes' pixel and acquisition baselines, fit on the internal training split and scored
    on the external set: a shortcut that carries over still separates the classes there."""
    cfg, classes = p.probe, list(p.data.classes)
    x_tr, y_tr = load_store(prepared, "train")
    y_ext = ext_table["label"].to_numpy()
    if len(classes) == 2:
        pos = classes.index(p.data.positive)
        y_tr, y_ext = (y_tr == pos).astype(int), (y_ext == pos).astype(int)
    groups = ext_table["group"].to_numpy()

    def score(scores):
        return P.scored(y_ext, scores, groups, cfg.bootstrap, cfg.seed, cfg.confidence, cfg.flag_auroc)

    return P.baselines(
        x_tr, y_tr, x_ext, y_ext, read_table(splits / "train.csv"), ext_table, cfg.thumbnails, score
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="the external set's name in params.yaml")
    ap.add_argument("--external", type=Path, required=True, help="the external stage's folder")
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument(
        "--prepared", type=Path, required=True, help="prepare's folder (train/ and val/ are read)"
    )
    ap.add_argument("--splits", type=Path, required=True, help="train.csv: the acquisition baseline's facts")
    ap.add_argument("--out", type=Path, required=True, help="folder: one subfolder per run, baselines.json")
    args = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.train.speed)
    p = load_params(args.params)
    cfg, classes = p.evaluate, list(p.data.classes)
    x_ext, _ = load_store(args.external.parent, args.external.name)
    table = read_table(args.external / "data.csv")
    x_val, _ = load_store(args.prepared, "val")
    val = read_table(args.splits / "val.csv")
    device = pick_device(p.train.device)
    budget = store_budget(device, p.train.memory_budget)
    lines = []
    for run_dir in (run_name(a, m, s) for a in p.archs for m in p.train.modes for s in p.train.seeds):
        model, meta = load_trained(args.models / run_dir)  # k folds: fold 0's model, the run's stand-in
        norm = (meta["arch"], meta["mean"], meta["std"])
        probs = {
            s: predict_proba(model, *norm, x, device, budget=budget).numpy()
            for s, x in (("val", x_val), ("test", x_ext))
        }
        m, pred, (roc, pr), (y, p_ext), cal = score_split(table, val, probs, classes, p.data.positive, cfg)
        full = {"arch": meta["arch"], "mode": meta["mode"], "external": args.name, **m, "calibration": cal}
        full["per_source"] = per_source(table, y, p_ext, cfg.ece_bins)
        (args.out / run_dir).mkdir(parents=True, exist_ok=True)
        write_scored(args.out / run_dir, full, pred, roc, pr)
        auc = m.get("auroc", m.get("auroc_macro"))
        lines.append(f"{run_dir} accuracy {m['accuracy']}, AUROC {auc}")
    base = baselines(p, args.prepared, args.splits, x_ext, table)
    write_json(args.out / "baselines.json", base)
    print(f"external_eval {args.name} ({len(table)} images): " + "; ".join(lines))
    print(
        "  baselines fit on the internal training split: "
        + ", ".join(f"{k} AUROC {v['auroc']}" for k, v in base.items())
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "external_eval")
