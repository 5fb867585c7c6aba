"""`cxr-transfer experiments`: DVC's experiment table, narrow.

`dvc exp show` prints every param (about 90 here), every dependency and every metric, and DVC has
no setting for a default column set; a metric whose name several files share gets its file's
path as a prefix (`metrics/modes/efficientnet_lite0-fe.json:accuracy`, 49 characters). This
reads `dvc exp show --csv` and prints one row per experiment with the params that differ between
the rows and, per arch x mode, the chosen figures under short names (`fe acc`).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from cxr_transfer.core.errors import CxrError

SHORT = {"accuracy": "acc", "auroc": "AUROC", "auroc_macro": "AUROC", "balanced_accuracy": "bal acc"}
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
    table: pd.DataFrame, figures: list[str], params: set[str], arch_names: bool | None = None
) -> pd.DataFrame:
    """One row per experiment: its name, the `params` (dotted keys) whose values differ between
    rows, and each arch x mode's `figures` (the headline files' columns; a single arch's name is
    left out)."""
    mode_cols = {c: MODE_FILE.match(c) for c in table.columns}
    mode_cols = {c: m for c, m in mode_cols.items() if m}
    names = sorted({m["name"] for m in mode_cols.values()})
    archs = {n.rpartition("-")[0] for n in names}
    keep_arch = len(archs) > 1 if arch_names is None else arch_names
    label = table["Experiment"].where(table["Experiment"] != "", table["rev"])
    out = pd.DataFrame({"experiment": label})
    other = [c for c in table.columns if c in params or c in VERDICTS]
    for c in other:  # params and the probes' verdict, where the rows differ
        if table[c].nunique() > 1:
            out[c] = table[c]
    for n in names:
        short = n if keep_arch else n.rpartition("-")[2]
        for f in figures:
            col = f"metrics/modes/{n}.json:{f}"
            if col in table:
                out[f"{short} {SHORT.get(f, f)}"] = table[col].map(_round)
    return out


def _round(v: str) -> str:
    try:
        return f"{float(v):.3f}"
    except ValueError:
        return v or "-"


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


def show(figures: list[str], dvc_args: list[str]) -> str:
    table = narrow(read_table(dvc_args), figures, param_keys())
    return table.to_string(index=False)
