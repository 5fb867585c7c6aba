"""`cxr-transfer experiments`: DVC's experiment table, narrow, and each experiment against a baseline.

`dvc exp show` prints every param (about 90 here), every dependency and every metric, and DVC has
no setting for a default column set; a metric whose name several files share gets its file's
path as a prefix (`metrics/modes/efficientnet_lite0-fe.json:accuracy`, 49 characters). This
reads `dvc exp show --csv` and prints one row per experiment with the params that differ between
the rows and, per arch x mode, the chosen figures under short names (`fe acc`), internal and at
each external site, each with its interval (the report's verdict procedure, from
metrics/modes/<run>.json).

Intervals that overlap or not say little about two experiments: `against` compares each
experiment's models with the baseline's on the same images (their predictions, read from each
experiment's commit), paired by seed, under the verdict procedures (docs/verdicts.md), with a
Bonferroni confidence over every comparison it prints.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from cxr_transfer.core.errors import CxrError

SHORT = {"accuracy": "acc", "auroc": "AUROC", "auroc_macro": "AUROC", "balanced_accuracy": "bal acc"}
SITE_FIGURE = re.compile(r"^external\.(?P<site>.+)\.(?P<figure>[^.]+)$")
MODE_FILE = re.compile(r"^metrics/modes/(?P<name>.+)\.json:(?P<figure>.+)$")
VERDICTS = {"shortcut_flags"}
FIXED = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


def read_table(dvc_args: list[str]) -> pd.DataFrame:
    """`dvc exp show --csv` (with `dvc_args`) as a DataFrame of strings."""
    beside = Path(sys.executable).parent / "dvc"  # the venv's dvc, activated or not
    cmd = [str(beside) if beside.exists() else "dvc", "exp", "show", "--csv", "--no-fetch", *dvc_args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CxrError("dvc is not on PATH: activate the project's virtual environment (.venv)") from None
    if out.returncode != 0:
        raise CxrError(f"`{' '.join(cmd)}` failed: {out.stderr.strip().splitlines()[-1:]}")
    return pd.read_csv(io.StringIO(out.stdout), dtype=str, keep_default_na=False)


def narrow(
    table: pd.DataFrame,
    figures: list[str],
    params: set[str],
    arch_names: bool | None = None,
    modes: list[str] | None = None,
    intervals: dict | None = None,
) -> pd.DataFrame:
    """One row per experiment: its name, the `params` (dotted keys) whose values differ between
    rows, and each arch x mode's `figures` (the headline files' columns; a single arch's name is
    left out), internal and at each external site, with the intervals of `intervals` (row index ->
    run name -> its metrics/intervals file) where a row has them."""
    mode_cols = {c: MODE_FILE.match(c) for c in table.columns}
    mode_cols = {c: m for c, m in mode_cols.items() if m}
    names = sorted({m["name"] for m in mode_cols.values()})
    names = [n for n in names if not modes or n.rpartition("-")[2] in modes]
    archs = {n.rpartition("-")[0] for n in names}
    keep_arch = len(archs) > 1 if arch_names is None else arch_names
    label = table["Experiment"].where(table["Experiment"] != "", table["rev"])
    if "State" in table:  # a running or queued experiment shows its baseline's files until it ends
        busy = table["State"].isin(["Running", "Queued", "Failed"])
        label = label.where(~busy, label + " (" + table["State"].str.lower() + ")")
    out = pd.DataFrame({"experiment": label})
    other = [c for c in table.columns if c in params or c in VERDICTS]
    for c in other:  # params and the probes' verdict, where the rows differ
        if table[c].nunique() > 1:
            out[c] = table[c]
    intervals = intervals or {}
    sites = sorted(
        {site for files in intervals.values() for f in files.values() for site in f.get("external", {})}
    )
    for n in names:
        short = n if keep_arch else n.rpartition("-")[2]
        for where in ["", *sites]:
            for f in figures:
                col = f"metrics/modes/{n}.json:{f}"
                cells = []
                for row, v in zip(
                    table.index, table[col] if col in table else [""] * len(table), strict=True
                ):
                    own = (intervals.get(row) or {}).get(n) or {}
                    at = own.get("external", {}).get(where, {}) if where else own
                    point = at.get(f) if where else v
                    cells.append(
                        _cell(
                            str(point if point is not None else ""),
                            at.get(f"{f}_ci_low"),
                            at.get(f"{f}_ci_high"),
                        )
                    )
                if any(c != "-" for c in cells):
                    out[f"{short} {where + ' ' if where else ''}{SHORT.get(f, f)}"] = cells
    return out


def _cell(v: str, lo, hi) -> str:
    """A figure to 3 decimals, with its interval where the run has one; '-' where none."""
    fig = _round(v)
    if lo is None or hi is None or fig == "-":
        return fig
    return f"{fig} [{float(lo):.3f}, {float(hi):.3f}]"


def _round(v: str) -> str:
    try:
        return f"{float(v):.3f}"
    except ValueError:
        return v or "-"


def interval_files(table: pd.DataFrame, root: Path = Path(".")) -> dict:
    """Each row's metrics/intervals/<run>.json files, from its commit (the workspace's from disk)."""
    from cxr_transfer.report.paired import Tree

    out = {}
    for i, rev in zip(table.index, table["rev"], strict=True):
        tree = Tree(None if rev == "workspace" else rev, root)
        files = {}
        for name in tree.files("metrics/intervals"):
            text = tree.read(f"metrics/intervals/{name}")
            if name.endswith(".json") and text:
                files[name[: -len(".json")]] = json.loads(text)
        out[i] = files
    return out


def param_keys(path: Path = Path("params.yaml")) -> set[str]:
    """Every dotted key of a params file, inner nodes included (`modes.ft.lr`, `modes.ft`)."""
    import yaml

    out: set[str] = set()

    def walk(node, prefix):
        for k, v in node.items():
            out.add(prefix + str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    if path.exists():
        walk(yaml.safe_load(path.read_text()) or {}, "")
    return out


def show(
    figures: list[str],
    dvc_args: list[str],
    against: str | None = None,
    modes: list[str] | None = None,
    intervals: bool = False,
) -> str:
    """The narrow table (`intervals`: each figure with its interval, and at each external site);
    with `against` ("" = the baseline commit's row) each experiment's modes against that row's,
    paired (report/paired.py); `modes`: only these modes' columns and comparisons."""
    raw = read_table(dvc_args)
    files = interval_files(raw) if intervals else None
    out = narrow(raw, figures, param_keys(), modes=modes, intervals=files).to_string(index=False)
    if against is None:
        return out
    from cxr_transfer.report.paired import against as paired

    return "\n".join([out, "", *paired(raw, against or None, modes=modes)])
