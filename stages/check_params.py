"""Stage check_params: validate the whole params.yaml before anything runs.

Every other stage lists only the keys it reads, so a misspelled key (`train.epoch`) would change
no stage and `dvc repro` would report "up to date". This stage depends on the whole file and
fails on any unknown key, wrong type or out-of-range value with one line naming it; its output
is the same bytes for every valid file, so a change to one valid key reruns only this cheap
check and what depends on that key.

It also lists every entry under data.root and the external roots that DVC cannot hash (dangling
links, link loops, names that are not UTF-8, FIFOs and other special files): DVC hashes those
folders before `index` or `external_prepare` runs and would stop at the first of them with its own
error. dvc.yaml marks this stage always changed, so it runs first on every `dvc repro` (a
fraction of a second) and a folder that gains such an entry after the last check is caught too.
"""

import argparse
from pathlib import Path

from cxr_transfer.core.cli import run, write_text
from cxr_transfer.core.params import load_params
from cxr_transfer.data.hashable import check_hashable

OK = "params.yaml is valid\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="a marker written when the file is valid")
    args = ap.parse_args()
    check_hashable(load_params(args.params))
    write_text(args.out, OK)


if __name__ == "__main__":
    run(main, "check_params")
