"""The report page's data and environment sections: what was indexed and split, where the
first run trained, the library versions and the params."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from cxr_transfer.core.versions import versions


def _kv_table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def data_html(index: dict, split: dict) -> str:
    """The index report (images, skips by reason, duplicates, metadata) and the split counts."""
    skips = index.get("skipped_by_reason") or {}
    rows = [
        ("data root", index["root"]),
        ("images indexed", index["images"]),
        ("per class", ", ".join(f"{c} {n}" for c, n in index["per_class"].items())),
        (
            "skipped",
            f"{index['skipped']}"
            + (" (" + ", ".join(f"{r}: {n}" for r, n in skips.items()) + ")" if skips else ""),
        ),
        ("exact duplicate sets (images)", f"{index['duplicate_sets']} ({index['duplicate_images']})"),
        ("groups (kept on one side of the split)", index["groups"]),
        ("patient / source table", index.get("metadata", {}).get("found", "none")),
    ]
    counts = pd.DataFrame(split["counts"]).T
    counts.insert(0, "split", counts.index)
    counts["total"] = counts.drop(columns="split").sum(axis=1)
    near = split.get("near_duplicates", {})
    notes = (
        f"<p>Split seed {split['seed']}, fractions {split['fractions']}; groups shared by two splits: "
        f"{split['group_overlap']}; near-duplicate merging joined {near.get('groups_before', '-')} groups "
        f"into {near.get('groups_after', '-')}.</p>"
    )
    skipped = index.get("skipped_files") or []
    listed = (
        "<details><summary>skipped files</summary><pre>"
        + html.escape(
            "\n".join(
                f"{f.get('path')}: {f.get('reason')}" if isinstance(f, dict) else str(f)
                for f in skipped[:200]
            )
        )
        + "</pre></details>"
        if skipped
        else ""
    )
    return _kv_table(rows) + listed + counts.to_html(index=False, border=0) + notes


def environment_html(meta, params, params_path) -> str:
    """Where the first run trained (device, precision), the library versions and the params."""
    import os
    import platform

    v = versions(
        (
            "torch",
            "torchvision",
            "timm",
            "numpy",
            "pandas",
            "scikit-learn",
            "dvc",
            "dvclive",
            "vl-convert-python",
        )
    )
    rows = [
        ("device (first run)", f"{meta.device} ({meta.precision})"),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"),
        *((k, val or "not installed") for k, val in v.items()),
    ]
    text = Path(params_path).read_text()
    return (
        _kv_table(rows) + f"<details><summary>params.yaml</summary><pre>{html.escape(text)}</pre></details>"
    )
