"""Stage probe: shortcut probes beside the results (pixels, acquisition, outside the lungs,
near-duplicates, source confounding) -> metrics/probe.json and details in eval/probe/."""

import argparse
from pathlib import Path

import torch

from cxr_transfer.audit.probes import verdict
from cxr_transfer.audit.suite import run_probes
from cxr_transfer.core.cli import run, write_csv, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.prepare import load_meta, load_store
from cxr_transfer.data.split import SPLITS
from cxr_transfer.runtime.speed import keep_freed_memory


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
    a = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.runtime.speed)
    parts = {s: read_table(a.splits / f"{s}.csv") for s in SPLITS}
    classes = load_meta(a.prepared, "train")["classes"]
    train, test = load_store(a.prepared, "train"), load_store(a.prepared, "test")
    out, pairs = run_probes(load_params(a.params), parts, train, test, classes)
    write_json(a.out, out)
    write_json(a.verdict, verdict(out))
    a.details.mkdir(parents=True, exist_ok=True)
    write_csv(pairs, a.details / "near_duplicates.csv")
    aucs = ", ".join(
        f"{k} AUROC {v['auroc']}" for k, v in out.items() if isinstance(v, dict) and "auroc" in v
    )
    print(f"probe: flagged {out['flagged'] or 'nothing'}; {aucs}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "probe")
