"""Stage index: walk data.root and write data.csv plus a report of everything skipped."""

import argparse
from pathlib import Path

from cxr_transfer.core.cli import run, write_csv, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.data.index import index_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="data.csv to write")
    ap.add_argument("--report", type=Path, required=True, help="index report JSON to write")
    args = ap.parse_args()
    p = load_params(args.params)
    d = p.data
    df, report = index_folder(
        Path(d.root), d.classes, d.metadata, p.index, d.bits_stored, labels=d.labels, sources=d.sources
    )
    write_csv(df, args.out)
    # a committed file: an absolute data.root (a personal or hospital path) is not written, its name is
    root = p.data.root if not Path(p.data.root).is_absolute() else f"<absolute>/{Path(p.data.root).name}"
    write_json(args.report, {"root": root, **report})
    print(
        f"index: {report['images']} images {report['per_class']}, {report['skipped']} skipped "
        f"{report['skipped_by_reason']}, {report['duplicate_images']} duplicates -> {args.out}"
    )


if __name__ == "__main__":
    run(main, "index")
