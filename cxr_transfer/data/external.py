"""An external test set (params' external[i]) indexed and prepared by the training data's rules,
its exact and near copies of internal images dropped and counted: another site's images, never
seen in training, to see whether a result travels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_transfer.core.cli import write_csv
from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import Params
from cxr_transfer.data.groups import group_names
from cxr_transfer.data.index import index_folder
from cxr_transfer.data.neardup import near_pairs_of
from cxr_transfer.data.prepare import decode_into, preprocess_of, write_store


def internal_copies(
    external: pd.DataFrame, internal: pd.DataFrame, limits: dict[str, int | None]
) -> pd.DataFrame:
    """The external images that are exact (same pixels) or near copies (a pHash within its limit:
    resized, re-encoded, cropped) of an internal image: one row each, with the internal image it
    copies and how (`exact` or the hash column and its distance)."""
    exact = external["hash"].isin(set(internal["hash"]))
    first = dict(zip(internal["hash"], internal["path"], strict=True))
    rows = [
        {"path": path, "internal_path": first[h], "how": "exact", "distance": 0}
        for path, h in zip(external.loc[exact, "path"], external.loc[exact, "hash"], strict=True)
    ]
    both = pd.concat([internal, external[~exact]], ignore_index=True)
    n = len(internal)
    i, j, d, col = near_pairs_of(both, limits)
    across = (i < n) != (j < n)
    seen = {r["path"] for r in rows}
    for a, b, dist, c in zip(i[across], j[across], d[across], col[across], strict=True):
        ext_row, int_row = (b, a) if a < n else (a, b)
        path = both["path"].iloc[ext_row]
        if path not in seen:
            seen.add(path)
            rows.append(
                {"path": path, "internal_path": both["path"].iloc[int_row], "how": c, "distance": int(dist)}
            )
    return pd.DataFrame(rows, columns=["path", "internal_path", "how", "distance"])


def join_near_copies(df: pd.DataFrame, limits: dict[str, int | None]) -> tuple[pd.DataFrame, int]:
    """The site's own near-copies (by the split's pHash limits) joined into one resampling group
    with their patient's or pixel group, so the bootstrap never counts one image twice as two
    independent ones. Returns the frame and how many groups were merged away."""
    i, j, _, _ = near_pairs_of(df, limits)
    if not len(i):
        return df, 0
    before = df["group"].nunique()
    names = group_names({"": df["group"].tolist()}, zip(i.tolist(), j.tolist(), strict=True))
    out = df.assign(group=names)
    return out, before - out["group"].nunique()


def relabel(df: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Labels as the internal class order numbers them (the models' output order)."""
    return df.assign(label=df["class"].map({c: i for i, c in enumerate(classes)}).astype(np.int64))


def prepare_external(p: Params, name: str, internal: pd.DataFrame, out: Path) -> tuple[dict, str]:
    """Index, de-duplicate against `internal` (the training data's data.csv) and prepare the
    external set `name` into `out` (data.csv and the store); returns its report and a line."""
    ext = next((e for e in p.external if e.name == name), None)
    if ext is None:
        raise CxrError(
            f"no external set named {name!r} in params.yaml; names: {[e.name for e in p.external]}"
        )
    # each class's folder aliases: the set's own where it names them, else the training data's
    classes = {c: (ext.classes or p.data.classes)[c] for c in (ext.classes or p.data.classes)}
    root = Path(ext.root)
    key = f"external[{[e.name for e in p.external].index(ext.name)}].root"
    df, report = index_folder(
        root,
        classes,
        ext.metadata,
        p.index,
        p.data.bits_stored,
        key,
        all_classes=False,  # a site may hold only some of the classes: scored on what is defined
    )
    df = relabel(df, list(p.data.classes))
    limits = {"phash": p.split.near_duplicate_bits, "phash_framed": p.split.near_duplicate_framed_bits}
    copies = internal_copies(df, internal, limits)
    kept = df[~df["path"].isin(set(copies["path"]))].reset_index(drop=True)
    if kept.empty:
        raise CxrError(
            f"external set {ext.name}: every image is a copy of an internal one; nothing is left to test"
        )
    kept, joined = join_near_copies(kept, limits)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(kept, out / "data.csv")
    size, paths = p.prepare.image_size, [str(root / q) for q in kept["path"]]
    pre = preprocess_of(p.prepare)  # the training data's crop and intensity rule
    desc, bits = f"prepare {ext.name}", p.data.bits_stored
    fill = lambda x: decode_into(x, paths, size, p.prepare.workers, desc, bits, pre)  # noqa: E731
    base = {"classes": list(p.data.classes), "bits_stored": p.data.bits_stored, "preprocess": pre.to_json()}
    write_store(out, fill, kept, size, ext.name, base)
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
        "near_copy_groups_joined": joined,
        "per_class_kept": {str(k): int(v) for k, v in kept["class"].value_counts().sort_index().items()},
    }
    line = (
        f"external {ext.name}: {len(kept)} images {report['per_class_kept']} at {size}x{size}, "
        f"{report['skipped']} skipped, {len(copies)} copies of internal images dropped "
        f"({report['internal_copies']['exact']} exact, {report['internal_copies']['near']} near) "
        f"-> {out}"
    )
    return report, line
