"""Cross-validation's figures: each fold's score, their spread, and mode-vs-mode differences with
the Nadeau-Bengio corrected resampled t-interval.

The k fold models share (k - 2) / (k - 1) of their training images, so their scores are not
independent: a plain t-test over folds is too confident. Nadeau & Bengio (2003) inflate the
variance of the mean difference from s^2 / J to (1 / J + n_test / n_train) s^2 for J paired
differences (Bouckaert & Frank 2004 apply it to repeated k-fold, J = seeds x folds).
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy.stats import t as student_t

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


def corrected_t_interval(diffs: list[float], test_over_train: float, confidence: float) -> list[float] | None:
    """The Nadeau-Bengio interval for the mean of `diffs` (paired per-fold differences, over seeds
    too): mean -/+ t(J-1) * sqrt((1/J + n_test/n_train) * s^2). None with fewer than two."""
    n = len(diffs)
    if n < 2:
        return None
    m, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd <= 1e-12 * max(1.0, abs(m)):  # identical differences: no spread, no interval (never width 0)
        return None
    half = student_t.ppf((1 + confidence) / 2, n - 1) * math.sqrt((1 / n + test_over_train) * sd**2)
    return [m - half, m + half]


def by_run(seeds, metrics: list[dict]) -> dict[tuple[int, int], dict]:
    """(seed, fold) -> that fold's figures, from each seed's metrics.json (evaluate's `folds`)."""
    return {(s, f["fold"]): f for s, m in zip(seeds, metrics, strict=True) for f in m["folds"]["per_fold"]}


def paired_over_folds(a: dict, b: dict, keys, confidence: float) -> dict:
    """Mode A minus mode B run by run, on the (seed, fold) pairs both have (values: fold_figures
    rows): per-run differences, their mean and SD, the corrected interval and, beside it for
    comparison, the plain t-interval that ignores the overlap of the training sets."""
    runs = sorted(set(a) & set(b))
    ratio = statistics.fmean(a[r]["n_test"] / a[r]["n_train"] for r in runs) if runs else 0.0
    out = {"runs": [list(r) for r in runs], "test_over_train": round(ratio, 6)}
    for k in keys:
        d = [a[r][k] - b[r][k] for r in runs if a[r][k] is not None and b[r][k] is not None]
        ci = corrected_t_interval(d, ratio, confidence)
        plain = corrected_t_interval(d, 0.0, confidence)
        out[k] = {
            "per_run": [round(x, 6) for x in d],
            "mean": round(statistics.fmean(d), 6) if d else None,
            "std": round(statistics.stdev(d), 6) if len(d) > 1 else None,
            "ci": [round(x, 6) for x in ci] if ci else None,
            "ci_uncorrected": [round(x, 6) for x in plain] if plain else None,
        }
    return out


def markdown(full: dict[str, list[dict]], auroc_key: str) -> list[str]:
    """The summary's cross-validation section: each run's per-fold figures and their spread
    (`full`: name -> metrics.json of each seed's run, the first seed's shown)."""
    first = next(iter(full.values()))[0]["folds"]
    k = first["k"]
    auc = "AUROC" if auroc_key == "auroc" else "macro AUROC"
    lines = [
        f"## Cross-validation: {k} folds",
        "",
        f"Every image was tested once, by the one model of the {k} that never saw it (grouped, stratified "
        "folds); the results table is those pooled out-of-fold predictions. Each fold's own figures:",
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
        "(the mode comparisons above use the Nadeau-Bengio corrected interval for that reason).",
        "",
    ]
    return lines
