"""Repeated training runs: the spread of each figure over seeds, and each pair of modes compared
seed by seed (paired: same seed, same test images) with a t-interval over seeds.

One training run per mode answers "which is better" only up to the luck of its initialisation and
batch order; on small medical sets another seed moves accuracy by several points. The test-set
bootstrap (compare.json) measures the other uncertainty: which test images happened to be drawn.
A gap is conclusive here when both intervals exclude zero.
"""

from __future__ import annotations

import math
import statistics

from scipy.stats import t as student_t


def run_name(arch: str, mode: str, seed: int) -> str:
    """The folder of one training run: models/, dvclive/ and eval/ use it."""
    return f"{arch}-{mode}-s{seed}"


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def aggregate(headlines: list[dict]) -> dict:
    """One arch x mode's headline over its seeds: each figure's mean, and with more than one seed
    its sample standard deviation (`<figure>_std`) and the number of seeds. With one seed the
    headline is returned as it is, bootstrap intervals included; with more, the intervals of single
    runs are dropped (the spread over seeds replaces them)."""
    if len(headlines) == 1:
        return dict(headlines[0])
    out = {}
    for k, v in headlines[0].items():
        if k.endswith(("_ci_low", "_ci_high")):
            continue
        vals = [h[k] for h in headlines]
        if not _number(v) or any(x is None for x in vals):
            out[k] = v if not _number(v) else None
            continue
        if all(isinstance(x, int) and x == v for x in vals):  # a count every run shares (n_test)
            out[k] = v
            continue
        out[k] = round(statistics.fmean(vals), 6)
        out[f"{k}_std"] = round(statistics.stdev(vals), 6)
    out["seeds"] = len(headlines)
    return out


def t_interval(values: list[float], confidence: float) -> list[float] | None:
    """Student's t interval for the mean of `values`; None with fewer than two, or when they are
    all equal: a zero spread (common: accuracy moves in steps of 1/n_test) estimates no
    interval, and a zero-width one would read as certainty."""
    n = len(values)
    if n < 2:
        return None
    m, sd = statistics.fmean(values), statistics.stdev(values)
    if sd <= 1e-12 * max(1.0, abs(m)):
        return None
    half = student_t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return [m - half, m + half]


def paired_over_seeds(a: dict[int, dict], b: dict[int, dict], keys, confidence: float) -> dict:
    """Mode A minus mode B, seed by seed on the seeds both have: per-seed differences, their mean,
    standard deviation and t-interval, for each of `keys` (headline figures)."""
    seeds = sorted(set(a) & set(b))
    out = {"seeds": seeds}
    for k in keys:
        diffs = [a[s][k] - b[s][k] for s in seeds if a[s].get(k) is not None and b[s].get(k) is not None]
        out[k] = {
            "per_seed": [round(d, 6) for d in diffs],
            "mean": round(statistics.fmean(diffs), 6) if diffs else None,
            "std": round(statistics.stdev(diffs), 6) if len(diffs) > 1 else None,
            "ci": [round(x, 6) for x in ci] if (ci := t_interval(diffs, confidence)) else None,
        }
    return out


def _excludes_zero(ci) -> int:
    """+1 if the interval lies above zero, -1 below, 0 if it holds zero (or is missing)."""
    if not ci:
        return 0
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def verdict(boot_ci, seed_ci, n_seeds: int, over: str | None = None) -> str:
    """Plain words on whether a difference is established on this data; `over` names the runs of
    the second interval (default: "<n> seeds")."""
    over = over or f"{n_seeds} seeds"
    b, s = _excludes_zero(boot_ci), _excludes_zero(seed_ci)
    if n_seeds < 2:
        return "not conclusive (the interval includes 0)" if b == 0 else "suggestive (one run per mode)"
    if not seed_ci:
        return (
            f"not conclusive (no interval over {over}: their differences are identical, no spread to measure)"
        )
    if b != 0 and s == b:
        return "conclusive (both intervals exclude 0)"
    if s != 0 and b == 0:
        return "not conclusive (the test-set interval includes 0)"
    if s != 0:
        return "not conclusive (the seeds and the test set disagree in sign)"
    return f"not conclusive (the interval over {over} includes 0)"


def _ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "[n/a]"


def _claim(key: str, c: dict, seeds: dict | None, n_seeds: int, over: str | None = None) -> tuple[str, str]:
    """(figure text, verdict) for one headline figure of one pair; `over` names the runs behind
    `seeds` (folds: "5 folds"; default "<n> seeds")."""
    point = c[f"{key}_diff"]
    if point is None:
        return "n/a (undefined on this test set)", "not conclusive"
    boot = c[f"{key}_diff_ci"]
    if n_seeds > 1 and seeds and seeds[key]["mean"] is not None:
        s = seeds[key]
        where = "pooled out of fold" if over else "first seed on the test set"
        first = f"{where} {point:+.3f} {_ci(boot)}"
        text = f"{s['mean']:+.3f} over {over or f'{n_seeds} seeds'} {_ci(s['ci'])} ({first})"
        return text, verdict(boot, s["ci"], n_seeds, over)
    return f"{point:+.3f} {_ci(boot)}", verdict(boot, None, 1)


def answer_lines(
    compare: dict,
    over_seeds: dict,
    n_seeds: int,
    flagged: int | None = None,
    auroc_key: str = "auroc",
    unit: str = "patients",
    folds: int | None = None,
) -> list[str]:
    """The comparison the user came for, in plain words: for each pair of modes, which is ahead,
    by how much, with the test-set bootstrap interval and (several seeds) the t-interval over
    seeds, and whether that is conclusive. Accuracy decides which is called ahead. More than two
    classes: auroc_key "auroc_macro" (one-vs-rest, averaged over the classes). With `folds`,
    `over_seeds` holds the per-fold (x seed) differences with the Nadeau-Bengio interval."""
    runs = n_seeds * folds if folds else n_seeds
    over = f"{folds} folds" + (f" x {n_seeds} seeds" if n_seeds > 1 else "") if folds else None
    lines = ["## Which way of training wins?", ""]
    if flagged:
        lines += [
            f"**{flagged} shortcut probe(s) flagged below**: a win may be a shortcut, not disease detection.",
            "",
        ]
    if not compare:
        return [*lines, "Only one way of training ran (`train.modes`): nothing to compare.", ""]
    for pair, c in compare.items():
        (arch, _, a), (_, _, b) = (n.rpartition("-") for n in pair.split(" vs "))
        seeds = over_seeds.get(pair)
        acc, acc_verdict = _claim("accuracy", c, seeds, runs, over)
        auc, auc_verdict = _claim(auroc_key, c, seeds, runs, over)
        d = seeds["accuracy"]["mean"] if runs > 1 and seeds else c["accuracy_diff"]
        head = "a tie" if not d else f"{a} ahead" if d > 0 else f"{b} ahead"
        lines.append(
            f"- **{arch}, {a} vs {b}: {head}.** {a} minus {b}: accuracy {acc}, {acc_verdict}; "
            f"{'AUROC' if auroc_key == 'auroc' else 'macro AUROC'} {auc}, {auc_verdict}."
        )
    if folds:
        how = (
            f"95% intervals: over folds = the Nadeau-Bengio corrected resampled t-interval over the {runs} "
            "paired per-fold differences (its variance inflated by n_test/n_train, since the folds' training "
            "sets overlap; the plain t-interval is in compare.json); pooled out of fold = paired bootstrap "
            f"over {unit.split(':')[0]} of every image's score from the one model that never saw it"
            + (" (first seed)." if n_seeds > 1 else ".")
        )
    elif n_seeds > 1:
        how = (
            f"95% intervals: over seeds = Student's t over the {n_seeds} paired per-seed differences; "
            f"test set = paired bootstrap over {unit.split(':')[0]} of the first seed's runs."
        )
    else:
        how = (
            f"95% paired bootstrap intervals over {unit.split(':')[0]}, one training run per mode. "
            "Suggestive: the test-set interval excludes 0, but one run per mode cannot show that the gap "
            "survives another seed; `dvc exp run -S 'train.seeds=[0,1,2]'` measures that."
        )
    return [*lines, "", how, ""]
