"""Cross-validation's figures: each fold's score on its own test images and their spread. The
mode-vs-mode verdict over folds (Nadeau and Bengio's corrected t: the k fold models share
(k - 2) / (k - 1) of their training images, so their scores are not independent) is
evaluate/verdicts.py's `over_folds`.
"""

from __future__ import annotations

import statistics

import numpy as np

from cxr_transfer.evaluate.binary import point_metrics
from cxr_transfer.evaluate.metrics import figures


def fold_figures(y, p, fold, n_train: dict[int, int], bins: int = 10) -> list[dict]:
    """Each fold's accuracy and AUROC (`auroc_macro` for K classes) on its own test images: `p` is
    P(positive) (two classes) or the (N, K) probabilities, `fold` each image's test fold."""
    y, p, fold = np.asarray(y), np.asarray(p, dtype=float), np.asarray(fold)
    out = []
    for f in sorted(set(fold.tolist())):
        i = fold == f
        if p.ndim == 1:
            m = point_metrics(y[i].astype(int), p[i], 0.5, bins)
            key, auc = "auroc", m["auroc"]
        else:
            m = figures(y[i], p[i], bins)
            key, auc = "auroc_macro", m["auroc_macro"]
        out.append(
            {
                "fold": int(f),
                "n_test": int(i.sum()),
                "n_train": int(n_train[f]),
                "accuracy": round(float(m["accuracy"]), 6),
                key: None if auc is None else round(float(auc), 6),
            }
        )
    return out


def spread(per_fold: list[dict]) -> dict:
    """Mean and sample standard deviation over folds of accuracy and AUROC (None where undefined)."""
    out = {}
    for k in [k for k in per_fold[0] if k.startswith(("accuracy", "auroc"))]:
        v = [f[k] for f in per_fold if f[k] is not None]
        out[k] = {
            "mean": round(statistics.fmean(v), 6) if v else None,
            "sd": round(statistics.stdev(v), 6) if len(v) > 1 else None,
        }
    return out


def by_run(seeds, metrics: list[dict]) -> dict[tuple[int, int], dict]:
    """(seed, fold) -> that fold's figures, from each seed's metrics.json (evaluate's `folds`)."""
    return {(s, f["fold"]): f for s, m in zip(seeds, metrics, strict=True) for f in m["folds"]["per_fold"]}


def markdown(full: dict[str, list[dict]], auroc_key: str, sources: list[str] | None = None) -> list[str]:
    """The summary's cross-validation section: each run's per-fold figures and their spread
    (`full`: name -> metrics.json of each seed's run, the first seed's shown; `sources`: the
    fold's sources, in fold order, for leave-one-source-out)."""
    first = next(iter(full.values()))[0]["folds"]
    k = first["k"]
    auc = "AUROC" if auroc_key == "auroc" else "macro AUROC"
    grouped = f"Every image was tested once, by the one model of the {k} that never saw it (grouped, "
    grouped += "stratified folds)"
    by_source = (
        f"Leave-one-source-out: each of the {k} sources that hold every class ({', '.join(sources or [])}) "
        "was one fold's test part, scored by the one model trained without it (sources of one class "
        "only trained, in every fold, and were never tested)"
    )
    how = by_source if sources else grouped
    lines = [
        f"## Cross-validation: {k} folds" + (" (one per source)" if sources else ""),
        "",
        f"{how}, thresholded and calibrated on its own fold's validation part. The results table gives "
        "the mean of each fold's own figures with the interval over folds (pooling the k models' scores "
        "would mix their score scales; the pooled figures are in eval/<run>/metrics.json, `pooled`). "
        "Each fold's own figures:",
        "",
        f"| NETWORK | accuracy per fold | mean ± SD | {auc} per fold | mean ± SD |",
        "| --- | --- | --- | --- | --- |",
    ]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, runs in full.items():
        f = runs[0]["folds"]
        cells = []
        for key in ("accuracy", auroc_key):
            per = " ".join(fmt(r[key]) for r in f["per_fold"])
            sp = f["spread"][key]
            cells += [per, f"{fmt(sp['mean'])} ± {fmt(sp['sd'])}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = first["per_fold"][0]
    lines += [
        "",
        f"Each fold trains on {n['n_train']} images and tests on {n['n_test']}: the training sets of two "
        f"folds share {(k - 2) / (k - 1):.0%} of their images, so the folds' figures are not independent "
        "(the mode comparisons above use the Nadeau-Bengio corrected interval over the folds for that "
        "reason; seeds that share the folds are averaged within each fold, they add no folds).",
        "",
    ]
    return lines
