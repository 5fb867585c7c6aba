"""Each experiment's models against a baseline's, on the same images: `cxr-transfer experiments
--against`.

Two experiments' intervals overlapping, or not, is no test of their difference. Here each mode's
AUROC in an experiment is set against the same mode's in the baseline on the same test images
(and the same external images, site by site), paired by seed and by image, under the verdict
procedures of docs/verdicts.md: one seed, the paired bootstrap over the test set's groups (at most
suggestive: it holds the test set's noise, not training's); several, seeds x test set; k folds
(internal), Nadeau and Bengio's corrected t over the fold means. Every interval printed is at a
Bonferroni confidence over all of them, so that any one "ahead" among them is wrong at most
1 - confidence of the time. Each experiment's predictions are read from its git commit (eval/ is
committed with it); the working tree's from disk.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import parse_params
from cxr_transfer.evaluate import compare, crossval, verdicts
from cxr_transfer.report import summary

RUN_DIR = re.compile(r"^(?P<name>.+)-s(?P<seed>\d+)$")
INTERNAL = "internal"


class Tree:
    """The committed files of one row of the experiment table (a git revision), or the working
    tree's (rev None)."""

    def __init__(self, rev: str | None, root: Path = Path(".")):
        self.rev, self.root = rev, Path(root)

    def _git(self, *args: str) -> str | None:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=self.root, check=False)
        return out.stdout if out.returncode == 0 else None

    def read(self, path: str) -> str | None:
        if self.rev is None:
            f = self.root / path
            return f.read_text() if f.is_file() else None
        return self._git("show", f"{self.rev}:{path}")

    def files(self, path: str) -> list[str]:
        if self.rev is None:
            d = self.root / path
            return sorted(q.name for q in d.iterdir() if q.is_file()) if d.is_dir() else []
        out = self._git("ls-tree", "--name-only", f"{self.rev}:{path}")
        return sorted(out.split()) if out else []

    def folders(self, path: str) -> list[str]:
        if self.rev is None:
            d = self.root / path
            return sorted(q.name for q in d.iterdir() if q.is_dir()) if d.is_dir() else []
        out = self._git("ls-tree", "-d", "--name-only", f"{self.rev}:{path}")
        return sorted(out.split()) if out else []


def frames_at(tree: Tree, where: str) -> dict[str, dict[int, list[pd.DataFrame]]]:
    """name -> seed -> its predictions on `where` (INTERNAL: the test split, with a fold column
    for k folds; a site: one frame per model, fold models included)."""
    folder = "eval" if where == INTERNAL else f"eval/external/{where}"
    out: dict[str, dict[int, list[pd.DataFrame]]] = {}
    for d in tree.folders(folder):
        m = RUN_DIR.match(d)
        text = tree.read(f"{folder}/{d}/predictions.csv") if m else None
        if text is None:
            continue
        frames = [pd.read_csv(io.StringIO(text))]
        if where != INTERNAL:
            folds = sorted(
                (f for f in tree.folders(f"{folder}/{d}") if re.fullmatch(r"fold\d+", f)),
                key=lambda f: int(f[4:]),
            )
            frames += [
                pd.read_csv(io.StringIO(tree.read(f"{folder}/{d}/{f}/predictions.csv"))) for f in folds
            ]
        out.setdefault(m["name"], {})[int(m["seed"])] = frames
    return out


def scored(frames: list[pd.DataFrame], classes: list[str], positive):
    """One run's view of a set: one model's scores, or the mean figure over fold models (k folds:
    on the internal test split each image by the model that never saw it; on a site, every fold
    model on every image)."""
    from cxr_transfer.report.build import internal_view

    if len(frames) == 1:
        return internal_view(frames[0], classes, positive)
    parts = tuple((verdicts.Scored.of(f, classes, positive), None) for f in frames)
    return verdicts.FoldAverage(parts, len(frames[0]))


def aligned(frames: list[pd.DataFrame], order: pd.Series) -> list[pd.DataFrame] | None:
    """`frames` with their rows in `order` (the baseline's paths), or None when the images differ."""
    if set(frames[0]["path"]) != set(order) or len(frames[0]) != len(order):
        return None
    return [f.set_index("path").loc[order].reset_index() for f in frames]


def per_fold(tree: Tree, name: str, seeds: list[int]) -> dict | None:
    """(seed, fold) -> that fold's figures (k folds), from each run's metrics.json; None without."""
    metrics = []
    for s in seeds:
        text = tree.read(f"eval/{name}-s{s}/metrics.json")
        m = json.loads(text) if text else {}
        if not m.get("folds"):
            return None
        metrics.append(m)
    return crossval.by_run(seeds, metrics)


def against(
    table: pd.DataFrame, baseline: str | None, root: Path = Path("."), modes: list[str] | None = None
) -> list[str]:
    """The lines of `cxr-transfer experiments --against`: each other row's modes (`modes`: only
    these) minus the baseline row's, internal and at every external site both have, on the AUROC."""
    label = table["Experiment"].where(table["Experiment"] != "", table["rev"])
    rows = list(zip(label, table["rev"], table["typ"], strict=True))
    if baseline is None:
        base = next((r for r in rows if r[2] == "baseline" and r[1] != "workspace"), rows[0])
    else:
        base = next((r for r in rows if baseline in (r[0], r[1])), None)
        if base is None:
            raise CxrError(f"--against {baseline}: no such experiment; the rows are {[r[0] for r in rows]}")
    tree_of = lambda r: Tree(None if r[1] == "workspace" else r[1], root)  # noqa: E731
    btree = tree_of(base)
    text = btree.read("params.yaml")
    if text is None:
        raise CxrError(
            f"--against {base[0]}: its params.yaml cannot be read (git show {base[1]}:params.yaml)"
        )
    p = parse_params(yaml.safe_load(text) or {})
    classes, positive, cfg = list(p.data.classes), p.data.positive, p.evaluate
    figure = summary.figures_for(len(classes))[1]
    sets = [INTERNAL, *[e for e in btree.folders("eval/external")]]
    base_frames = {w: frames_at(btree, w) for w in sets}
    todo, notes, same = [], [], {}
    state = dict(zip(label, table["State"] if "State" in table else [""] * len(table), strict=True))
    for r in rows:
        if state.get(r[0]) in ("Running", "Queued", "Failed"):
            notes.append(f"{r[0]}: {state[r[0]].lower()}, not compared")
            continue
        if r == base or (r[1] == "workspace" and base[1] != "workspace" and _same_as(table, r, base)):
            continue
        tree = tree_of(r)
        for where in sets:
            theirs, ours = base_frames[where], frames_at(tree, where)
            for name in sorted(set(theirs) & set(ours)):
                if modes and name.rpartition("-")[2] not in modes:
                    continue
                seeds = sorted(set(theirs[name]) & set(ours[name]))
                order = theirs[name][seeds[0]][0]["path"] if seeds else None
                mine = [aligned(ours[name][s], order) for s in seeds] if seeds else [None]
                if any(m is None for m in mine):
                    notes.append(f"{r[0]} {name} {where}: not the same images as {base[0]}'s; not compared")
                    continue
                if all(_same_scores(m, theirs[name][s]) for m, s in zip(mine, seeds, strict=True)):
                    same.setdefault(r[0], []).append(f"{name} {where}")
                    continue
                todo.append((r, tree, where, name, seeds, mine))
    for exp, what in same.items():  # the same models (DVC's run cache): no test, and none counted
        notes.append(
            f"{exp}: {len(what)} of its runs score exactly as {base[0]}'s (the same models); not compared"
        )
    if not todo:
        return [f"Nothing to compare with {base[0]}: no other experiment shares its runs and images.", *notes]
    conf = verdicts.bonferroni(cfg.confidence, len(todo))
    rng_seed, reps = cfg.seed, cfg.bootstrap
    one_arch = len({n.rpartition("-")[0] for *_, n, _, _ in todo}) == 1
    lines = [
        f"Against {base[0]} ({figure}: each experiment's model minus {base[0]}'s, same images, paired "
        f"by seed; {100 * conf:.2f}% intervals, Bonferroni over {len(todo)} comparisons):",
    ]
    for r, tree, where, name, seeds, mine in todo:
        ref = [base_frames[where][name][s] for s in seeds]
        folds = per_fold(tree, name, seeds) if where == INTERNAL else None
        base_folds = per_fold(btree, name, seeds) if folds else None
        if folds and base_folds:
            d, ratio = compare.folds_difference(folds, base_folds, figure)
            iv = verdicts.over_folds(d, ratio, conf)
        else:
            a = [scored(f, classes, positive) for f in mine]
            b = [scored(f, classes, positive) for f in ref]
            groups = ref[0][0]["group"].to_numpy()
            rs = verdicts.resample(groups, len(groups), reps, np.random.default_rng(rng_seed))
            iv = verdicts.difference(figure, a, b, rs, conf)
        mode = name.rpartition("-")[2] if one_arch else name
        lines.append(
            f"  {r[0]} {mode} {'internal' if where == INTERNAL else 'at ' + where}: {_iv(iv)} -> "
            f"{verdicts.ahead(r[0], base[0], iv)}"
        )
    return lines + notes


def _same_scores(mine: list[pd.DataFrame], theirs: list[pd.DataFrame]) -> bool:
    """Whether two runs' predictions (already in the same row order) are identical."""
    cols = [c for c in theirs[0].columns if c == "probability" or c.startswith("p_")]
    return len(mine) == len(theirs) and all(
        a[cols].to_numpy().tolist() == b[cols].to_numpy().tolist() for a, b in zip(mine, theirs, strict=True)
    )


def _same_as(table: pd.DataFrame, row, base) -> bool:
    """Whether the workspace row shows exactly the baseline commit's metrics (nothing changed)."""
    label = table["Experiment"].where(table["Experiment"] != "", table["rev"])
    a, b = table[label == row[0]], table[label == base[0]]
    cols = [c for c in table.columns if c.startswith("metrics/")]
    return len(a) == 1 and len(b) == 1 and a[cols].to_numpy().tolist() == b[cols].to_numpy().tolist()


def _iv(iv: verdicts.Interval) -> str:
    if iv.point is None:
        return "n/a"
    if iv.ci is None:
        return f"{iv.point:+.3f} (no interval)"
    return f"{iv.point:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}], {iv.runs} run{'s' * (iv.runs > 1)} ({iv.method})"
