"""Stage train@<arch>-<mode>-<seed>: train one architecture one way from one seed (with k folds,
one model per fold); write weights, sidecar and DVCLive logs (cxr_transfer.train.job)."""

import argparse
from pathlib import Path

from cxr_transfer.core.cli import run
from cxr_transfer.core.params import load_params
from cxr_transfer.runtime.speed import keep_freed_memory
from cxr_transfer.train.job import TrainJob, run_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument(
        "--seed", type=int, required=True, help="one of train.seeds: initialisation and batch order"
    )
    ap.add_argument(
        "--prepared", type=Path, required=True, help="prepare's folder (train/ and val/ are read)"
    )
    ap.add_argument("--out", type=Path, required=True, help="model folder")
    ap.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    ap.add_argument("--curves", type=Path, help="CSV of every epoch's figures, for dvc plots while it trains")
    ap.add_argument("--resume-dir", type=Path, default=Path(".resume"))
    a = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.runtime.speed)
    job = TrainJob(a.arch, a.mode, a.seed, a.prepared, a.out, a.live, a.resume_dir, a.curves)
    run_training(load_params(a.params), job)


if __name__ == "__main__":
    run(main, "train")
