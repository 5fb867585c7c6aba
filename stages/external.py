"""Stage external@<i>: index and prepare one external test set (params' external[i]) by the training
data's rules; its exact and near copies of internal images are dropped and counted."""

import argparse
from pathlib import Path

from cxr_transfer.core.cli import run, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.core.sites import skip_if_not_this_data
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.external import prepare_external


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="the external set's name in params.yaml")
    ap.add_argument("--internal", type=Path, required=True, help="the internal data.csv (copies are dropped)")
    ap.add_argument("--out", type=Path, required=True, help="folder: data.csv, x.npy, y.npy, meta.json")
    ap.add_argument("--report", type=Path, required=True, help="what was indexed, skipped and dropped (JSON)")
    a = ap.parse_args()
    p = load_params(a.params)
    if why := skip_if_not_this_data(p, a.name, a.out, a.report):  # the demo's site, the user's data
        print(f"external {a.name}: skipped, {why}")
        return
    report, line = prepare_external(p, a.name, read_table(a.internal), a.out)
    write_json(a.report, report)
    print(line)


if __name__ == "__main__":
    run(main, "external")
