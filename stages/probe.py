"""Stage probe: shortcut probes beside the results (pixels, acquisition, outside the lungs,
near-duplicates, source confounding) -> metrics/probe.json and details in eval/probe/."""

import argparse
from pathlib import Path

import pandas as pd
import torch

from cxr_transfer.audit import probes as P
from cxr_transfer.core.cli import run, write_csv, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.prepare import load_meta, load_store
from cxr_transfer.data.split import SPLITS
from cxr_transfer.train.engine import pick_device
from cxr_transfer.train.speed import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--splits", type=Path, required=True, help="split csvs (acquisition facts, pHashes)")
    ap.add_argument(
        "--prepared", type=Path, required=True, help="prepare's folder (train/ and test/ are read)"
    )
    ap.add_argument("--out", type=Path, required=True, help="every probe's figures (JSON)")
    ap.add_argument("--verdict", type=Path, required=True, help="the lean metrics file: flags, top AUROC")
    ap.add_argument("--details", type=Path, required=True, help="folder for the listed pairs and tables")
    args = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.train.speed)
    p = load_params(args.params)
    cfg = p.probe
    parts = {s: read_table(args.splits / f"{s}.csv") for s in SPLITS}
    classes = load_meta(args.prepared, "train")["classes"]
    (x_tr, y_tr), (x_te, y_te) = load_store(args.prepared, "train"), load_store(args.prepared, "test")
    if len(classes) == 2:  # the positive class against the other
        pos = classes.index(p.data.positive)
        y_tr, y_te = (y_tr == pos).astype(int), (y_te == pos).astype(int)
    groups = parts["test"]["group"].to_numpy()

    def score(p_test):
        return P.scored(y_te, p_test, groups, cfg.bootstrap, cfg.seed, cfg.confidence, cfg.flag_auroc)

    out = P.baselines(x_tr, y_tr, x_te, y_te, parts["train"], parts["test"], cfg.thumbnails, score)
    device = pick_device(p.train.device)
    if p.weights.source == "imagenet":
        out["outside_lungs"] = {}
        for arch in p.archs:
            extract = P.feature_extractor(arch, p.weights.dir, device)
            out["outside_lungs"][arch] = P.outside_lungs(extract, x_tr, y_tr, x_te, cfg.box, score)
    near, pairs = P.near_duplicate_report(
        parts, p.split.near_duplicate_bits, p.split.near_duplicate_framed_bits
    )
    out["near_duplicates"] = near
    out["source"] = P.source_probe(pd.concat(parts.values(), ignore_index=True), cfg.flag_cramers_v)
    flags = [k for k, v in out.items() if v.get("flagged")]
    flags += [f"outside_lungs.{a}" for a, v in out.get("outside_lungs", {}).items() if v["flagged"]]
    out["n_flagged"], out["flagged"] = len(flags), sorted(flags)
    out["flag_auroc"], out["flag_cramers_v"], out["box"] = cfg.flag_auroc, cfg.flag_cramers_v, cfg.box
    if len(classes) > 2:  # multinomial probes: the AUROCs are one-vs-rest, averaged over the classes
        out["auroc_average"] = f"macro one-vs-rest over {len(classes)} classes"
    write_json(args.out, out)
    write_json(args.verdict, P.verdict(out))
    args.details.mkdir(parents=True, exist_ok=True)
    write_csv(pairs, args.details / "near_duplicates.csv")
    print(
        f"probe: flagged {out['flagged'] or 'nothing'}; "
        + ", ".join(f"{k} AUROC {v['auroc']}" for k, v in out.items() if isinstance(v, dict) and "auroc" in v)
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "probe")
