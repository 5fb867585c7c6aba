"""Which external test sets go with the data being trained on: a set tied to one data.root
(`with_root`: the demo's synthetic site-b goes with data/raw) is scored only while data.root is
that folder, so a user's own data is never "externally validated" on the demo's synthetic
radiographs. The external stages write why they skip; the report leaves such sets out."""

from __future__ import annotations

from pathlib import Path

from cxr_transfer.core.cli import write_json
from cxr_transfer.core.params import ExternalConfig, Params


def belongs(e: ExternalConfig, data_root: str) -> bool:
    """Whether external set `e` goes with data.root `data_root`."""
    return e.with_root is None or Path(e.with_root) == Path(data_root)


def skipped_sites(p: Params) -> dict:
    """{"skipped": {name: why}} for the external sets that do not go with data.root (empty when none)."""
    why = {
        e.name: f"scored only while data.root is {e.with_root} (its with_root); data.root is {p.data.root}"
        for e in p.external
        if not belongs(e, p.data.root)
    }
    return {"skipped": why} if why else {}


def skip_if_not_this_data(p: Params, name: str, out: Path, report: Path | None = None) -> str | None:
    """Why external set `name` does not go with data.root, after writing out/skipped.json (and
    `report`) saying so; None when it does (nothing is written)."""
    why = skipped_sites(p).get("skipped", {}).get(name)
    if why:
        out.mkdir(parents=True, exist_ok=True)
        for f in (out / "skipped.json", report):
            if f is not None:
                write_json(f, {"name": name, "skipped": why})
    return why
