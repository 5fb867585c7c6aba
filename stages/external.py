"""Stage external@<i>: index and prepare one external test set (params' external[i]) by the training
data's rules; its exact and near copies of internal images are dropped and counted."""

import argparse
from pathlib import Path

from cxr_transfer.core.cli import run, write_csv, write_json
from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import load_params
from cxr_transfer.core.tables import read_table
from cxr_transfer.data.index import index_folder
from cxr_transfer.data.prepare import decode_into, write_store
from cxr_transfer.evaluate.external import internal_copies, relabel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="the external set's name in params.yaml")
    ap.add_argument("--internal", type=Path, required=True, help="the internal data.csv (copies are dropped)")
    ap.add_argument("--out", type=Path, required=True, help="folder: data.csv, x.npy, y.npy, meta.json")
    ap.add_argument("--report", type=Path, required=True, help="what was indexed, skipped and dropped (JSON)")
    args = ap.parse_args()
    p = load_params(args.params)
    ext = next((e for e in p.external if e.name == args.name), None)
    if ext is None:
        raise CxrError(
            f"no external set named {args.name!r} in params.yaml; names: {[e.name for e in p.external]}"
        )
    # each class's folder aliases: the set's own where it names them, else the training data's
    classes = {c: (ext.classes or p.data.classes)[c] for c in (ext.classes or p.data.classes)}
    root = Path(ext.root)
    metadata_paths = [root / f for f in ext.metadata.file or ()]
    key = f"external[{[e.name for e in p.external].index(ext.name)}].root"
    df, report = index_folder(
        root,
        classes,
        ext.metadata,
        metadata_paths,
        p.index.max_pixels,
        p.index.workers,
        p.data.bits_stored,
        key,
    )
    df = relabel(df, list(p.data.classes))
    limits = {"phash": p.split.near_duplicate_bits, "phash_framed": p.split.near_duplicate_framed_bits}
    copies = internal_copies(df, read_table(args.internal), limits)
    kept = df[~df["path"].isin(set(copies["path"]))].reset_index(drop=True)
    if kept.empty:
        raise CxrError(
            f"external set {ext.name}: every image is a copy of an internal one; nothing is left to test"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(kept, args.out / "data.csv")
    size, paths = p.prepare.image_size, [str(root / q) for q in kept["path"]]
    fill = lambda x: decode_into(x, paths, size, p.prepare.workers, f"prepare {ext.name}", p.data.bits_stored)  # noqa: E731
    write_store(
        args.out,
        fill,
        kept,
        size,
        ext.name,
        {"classes": list(p.data.classes), "bits_stored": p.data.bits_stored},
    )
    shown_root = ext.root if not root.is_absolute() else f"<absolute>/{root.name}"  # a committed file
    report = {
        "name": ext.name,
        "root": shown_root,
        **report,
        "internal_copies": {
            "dropped": len(copies),
            "exact": int((copies["how"] == "exact").sum()),
            "near": int((copies["how"] != "exact").sum()),
            "pairs": copies.to_dict("records"),
        },
        "images_kept": len(kept),
        "per_class_kept": {str(k): int(v) for k, v in kept["class"].value_counts().sort_index().items()},
    }
    write_json(args.report, report)
    print(
        f"external {ext.name}: {len(kept)} images {report['per_class_kept']} at {size}x{size}, "
        f"{report['skipped']} skipped, {len(copies)} copies of internal images dropped "
        f"({report['internal_copies']['exact']} exact, {report['internal_copies']['near']} near) "
        f"-> {args.out}"
    )


if __name__ == "__main__":
    run(main, "external")
