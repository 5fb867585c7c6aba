"""Stage external_eval@<i>: every trained model scored on one external test set, with the threshold
and temperature chosen on the internal validation split (never on the external images); and the
shortcut baselines trained on the internal data (pixels, acquisition facts) applied there too."""

import argparse
from pathlib import Path

import torch

from cxr_transfer.audit.probes import external_baselines
from cxr_transfer.core.cli import run, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.core.sites import skip_if_not_this_data
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.prepare import load_store
from cxr_transfer.evaluate.runs import Scorer, evaluate_external, models_of
from cxr_transfer.evaluate.seeds import run_name
from cxr_transfer.runtime.speed import keep_freed_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="the external set's name in params.yaml")
    ap.add_argument("--external", type=Path, required=True, help="the external stage's folder")
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument(
        "--prepared", type=Path, required=True, help="prepare's folder (train/ and val/ are read)"
    )
    ap.add_argument("--splits", type=Path, required=True, help="val.csv; train.csv: the acquisition baseline")
    ap.add_argument("--out", type=Path, required=True, help="folder: one subfolder per run, baselines.json")
    a = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.runtime.speed)
    p = load_params(a.params)
    if why := skip_if_not_this_data(p, a.name, a.out):  # the demo's site, the user's data
        print(f"external_eval {a.name}: skipped, {why}")
        return
    classes, positive = list(p.data.classes), p.data.positive
    runs = {
        r: a.models / r
        for r in (run_name(x, m, s) for x in p.archs for m in p.train.modes for s in p.train.seeds)
    }
    score = Scorer(p.train.device, p.train.memory_budget, len(runs) * models_of(a.prepared))
    args = (a.external, a.prepared, a.splits, classes, positive, p.evaluate, score, a.out)
    lines = evaluate_external(runs, *args)
    x_ext, table = load_store(a.external.parent, a.external.name)[0], read_table(a.external / "data.csv")
    boot = (p.probe.bootstrap, p.probe.seed, p.probe.confidence)
    base = external_baselines(p.probe, classes, positive, a.prepared, a.splits, x_ext, table, boot)
    write_json(a.out / "baselines.json", base)
    print(f"external_eval {a.name} ({len(table)} images): " + "; ".join(lines))
    print(
        "  baselines fit on the internal training split: "
        + ", ".join(f"{k} AUROC {v['auroc']} ({v['retention_word']})" for k, v in base.items())
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "external_eval")
