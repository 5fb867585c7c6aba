"""Stage index: walk data.root and write data.csv plus a report of everything skipped."""

import argparse
from pathlib import Path

from cxr_transfer.cli import run, write_json
from cxr_transfer.index import build_index, read_columns
from cxr_transfer.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="data.csv to write")
    ap.add_argument("--report", type=Path, required=True, help="index report JSON to write")
    args = ap.parse_args()
    p = load_params(args.params)
    meta, tables = p.data.metadata, p.data.metadata_paths()
    groups = sources = None
    if tables and meta.patient_column:
        groups = read_columns(tables, meta.filename_column, meta.patient_column, "patient_column")
    if tables and meta.source_column:
        sources = read_columns(tables, meta.filename_column, meta.source_column, "source_column")
    df, report = build_index(
        Path(p.data.root),
        p.data.classes,
        p.index.max_pixels,
        p.index.workers,
        groups,
        p.data.bits_stored,
        sources,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    write_json(args.report, {"root": p.data.root, **report})
    print(
        f"index: {report['images']} images {report['per_class']}, {report['skipped']} skipped "
        f"{report['skipped_by_reason']}, {report['duplicate_images']} duplicates -> {args.out}"
    )


if __name__ == "__main__":
    run(main, "index")
