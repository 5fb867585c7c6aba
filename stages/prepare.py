"""Stage prepare: decode each split once into a uint8 array store at prepare.image_size."""

import argparse
from pathlib import Path

from cxr_transfer.core.cli import run
from cxr_transfer.core.params import load_params
from cxr_transfer.data.prepare import prepare_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    p = load_params(args.params)
    metas = prepare_splits(args.splits, args.out, p.data, p.prepare)
    counts = {s: m["n"] for s, m in metas.items()}
    print(f"prepare: {counts} images at {p.prepare.image_size}x{p.prepare.image_size} -> {args.out}")


if __name__ == "__main__":
    run(main, "prepare")
