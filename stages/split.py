"""Stage split: data.csv -> train/val/test csv (grouped, stratified, seeded) and split.json."""

import argparse
import sys
from pathlib import Path

import pandas as pd

from cxr_transfer.core.cli import run, write_csv, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.split import (
    SPLITS,
    fold_roles,
    fold_summary,
    grouped_split,
    join_near_duplicates,
    largest_group,
    split_summary,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for train/val/test.csv")
    ap.add_argument("--metrics", type=Path, required=True, help="split.json to write")
    args = ap.parse_args()
    cfg = load_params(args.params).split
    df = read_table(args.data)
    groups_before = df["group"].nunique()
    df, n_near = join_near_duplicates(df, cfg.near_duplicate_bits, cfg.near_duplicate_framed_bits)
    args.out.mkdir(parents=True, exist_ok=True)
    if cfg.folds:  # every image in one fold's test part; train/val/test.csv are fold 0's parts
        roles = fold_roles(df, cfg.folds, cfg.val_size, cfg.seed)
        write_csv(pd.concat([df, roles], axis=1), args.out / "folds.csv")
        which = roles["f0"]
    else:
        which = grouped_split(df, cfg.test_size, cfg.val_size, cfg.seed)
    parts = {s: df[which == s] for s in SPLITS}
    for s, part in parts.items():
        write_csv(part, args.out / f"{s}.csv")
    summary = split_summary(parts, cfg.seed, cfg.test_size, cfg.val_size)
    summary["near_duplicates"] = {
        "max_bits": cfg.near_duplicate_bits,
        "max_framed_bits": cfg.near_duplicate_framed_bits,
        "pairs": n_near,
        "groups_before": int(groups_before),
        "groups_after": int(df["group"].nunique()),
    }
    summary["largest_group"] = big = largest_group(df, cfg.test_size)
    summary["folds"] = fold_summary(df, roles) if cfg.folds else None
    write_json(args.metrics, summary)
    if big["warning"]:
        print(f"split: warning: {big['warning']}", file=sys.stderr)
    if cfg.folds:
        sizes = [v["test"]["images"] for v in summary["folds"]["folds"].values()]
        print(f"split: {cfg.folds} folds, test images per fold {sizes}; fold 0 is written as train/val/test")
    print(
        f"split: {summary['counts']}, group overlap {summary['group_overlap']}, "
        f"{n_near} near-duplicate pairs joined ({groups_before} -> {df['group'].nunique()} groups)"
    )


if __name__ == "__main__":
    run(main, "split")
