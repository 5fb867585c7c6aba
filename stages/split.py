"""Stage split: data.csv -> train/val/test csv (grouped, stratified, seeded) and split.json."""

import argparse
import sys
from pathlib import Path

from cxr_transfer.core.cli import run, write_csv, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.split import split_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for train/val/test.csv")
    ap.add_argument("--metrics", type=Path, required=True, help="split.json to write")
    args = ap.parse_args()
    cfg = load_params(args.params).split
    parts, folds, summary = split_data(read_table(args.data), cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    if folds is not None:
        write_csv(folds, args.out / "folds.csv")
    for s, part in parts.items():
        write_csv(part, args.out / f"{s}.csv")
    write_json(args.metrics, summary)
    if warning := summary["largest_group"]["warning"]:
        print(f"split: warning: {warning}", file=sys.stderr)
    if folds is not None:
        sizes = [v["test"]["images"] for v in summary["folds"]["folds"].values()]
        k = len(sizes)
        how = "leave-one-source-out " if cfg.folds_by == "source" else ""
        print(f"split: {k} {how}folds, test images per fold {sizes}; fold 0 is written as train/val/test")
    near = summary["near_duplicates"]
    print(
        f"split: {summary['counts']}, group overlap {summary['group_overlap']}, "
        f"{near['pairs']} near-duplicate pairs joined "
        f"({near['groups_before']} -> {near['groups_after']} groups)"
    )


if __name__ == "__main__":
    run(main, "split")
