"""Stage split: data.csv -> train/val/test csv (grouped, stratified, seeded) and split.json."""

import argparse
from pathlib import Path

import pandas as pd

from cxr_transfer.cli import run, write_json
from cxr_transfer.params import load_params
from cxr_transfer.split import SPLITS, grouped_split, split_summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder for train/val/test.csv")
    ap.add_argument("--metrics", type=Path, required=True, help="split.json to write")
    args = ap.parse_args()
    cfg = load_params(args.params).split
    df = pd.read_csv(args.data)
    which = grouped_split(df, cfg.test_size, cfg.val_size, cfg.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {s: df[which == s] for s in SPLITS}
    for s, part in parts.items():
        part.to_csv(args.out / f"{s}.csv", index=False)
    summary = split_summary(parts, cfg.seed, cfg.test_size, cfg.val_size)
    write_json(args.metrics, summary)
    print(f"split: {summary['counts']}, group overlap {summary['group_overlap']}")


if __name__ == "__main__":
    run(main, "split")
