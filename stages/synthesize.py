"""Stage synthesize: write the embedded demo dataset (synthetic chest radiographs)."""

import argparse
import shutil
from pathlib import Path

from cxr_transfer.core.cli import run
from cxr_transfer.core.params import load_params
from cxr_transfer.data.synth import synthesize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="folder to write <CLASS>/*.png into")
    ap.add_argument("--external", type=Path, required=True, help="folder of the second site's images")
    args = ap.parse_args()
    cfg = load_params(args.params).synthesize
    shutil.rmtree(args.out, ignore_errors=True)
    counts = synthesize(
        args.out, cfg.n_per_class, cfg.image_size, cfg.seed, shortcut=cfg.shortcut, classes=cfg.classes
    )
    print(f"synthesize: wrote {sum(counts.values())} images {counts} to {args.out}")
    shutil.rmtree(args.external, ignore_errors=True)
    args.external.mkdir(parents=True)  # empty when synthesize.external is none
    if cfg.external == "site-b":
        counts = synthesize(
            args.external, cfg.n_per_class, cfg.image_size, cfg.seed, classes=cfg.classes, site="b"
        )
        print(
            f"synthesize: wrote {sum(counts.values())} external images (site b) {counts} to {args.external}"
        )


if __name__ == "__main__":
    run(main, "synthesize")
