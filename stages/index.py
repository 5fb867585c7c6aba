"""Stage index: walk data.root and write data.csv plus a report of everything skipped."""

import argparse
from pathlib import Path

from cxr_transfer.cli import run, write_json
from cxr_transfer.index import build_index, read_columns
from cxr_transfer.metadata import plan
from cxr_transfer.params import load_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="data.csv to write")
    ap.add_argument("--report", type=Path, required=True, help="index report JSON to write")
    args = ap.parse_args()
    p = load_params(args.params)
    meta = p.data.metadata
    mp = plan(
        Path(p.data.root),
        p.data.classes,
        p.data.metadata_paths(),
        meta.filename_column,
        meta.patient_column,
        meta.source_column,
    )
    groups = sources = None
    if mp.tables and mp.patient_column:
        groups = read_columns(mp.tables, meta.filename_column, mp.patient_column, "patient_column")
    if mp.tables and mp.source_column:
        sources = read_columns(mp.tables, meta.filename_column, mp.source_column, "source_column")
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
    report["metadata"] = {
        "tables": [t.name for t in mp.tables],
        "found": mp.found,
        "patient_column": mp.patient_column,
        "source_column": mp.source_column,
        "notes": mp.notes,
    }
    # a committed file: an absolute data.root (a personal or hospital path) is not written, its name is
    root = p.data.root if not Path(p.data.root).is_absolute() else f"<absolute>/{Path(p.data.root).name}"
    write_json(args.report, {"root": root, **report})
    print(
        f"index: {report['images']} images {report['per_class']}, {report['skipped']} skipped "
        f"{report['skipped_by_reason']}, {report['duplicate_images']} duplicates -> {args.out}"
    )


if __name__ == "__main__":
    run(main, "index")
