"""Stage evaluate@<arch>-<mode>-<seed>: predict the test split with the best checkpoint and score it
(cxr_transfer.evaluate.runs; k folds: out of fold)."""

import argparse
from pathlib import Path

import torch

from cxr_transfer.core.cli import run
from cxr_transfer.core.params import load_params
from cxr_transfer.evaluate.runs import Scorer, evaluate_run, models_of
from cxr_transfer.runtime.speed import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prepared", type=Path, required=True, help="prepare's folder (val/ and test/ are read)")
    ap.add_argument("--splits", type=Path, required=True)
    ap.add_argument(
        "--eval-dir", type=Path, required=True, help="headline and full metrics, predictions, curves"
    )
    a = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.runtime.speed)
    p = load_params(a.params)
    score = Scorer(p.train.device, p.train.memory_budget, models_of(a.prepared))
    print(evaluate_run(a.model, a.prepared, a.splits, a.eval_dir, p.data.positive, p.evaluate, score))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "evaluate")
