"""Mode against mode on the internal test set: each pair's difference in AUROC and accuracy with
the interval its design allows (one run per mode, seeds x test set, or k folds), the mode that is
best where the intervals support one, and the answer in those words (evaluate/verdicts.py).

AUROC (threshold-free; macro one-vs-rest for K classes) decides who is ahead; accuracy at the one
decision rule is given beside it."""

from __future__ import annotations

import numpy as np

from cxr_transfer.core.errors import CxrError
from cxr_transfer.evaluate import verdicts
from cxr_transfer.evaluate.metrics import mcnemar_p


def comparisons(names: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs to compare: every mode against each earlier mode of the same arch, scratch
    always the baseline b (the default order gives fe and ft against scratch, ft against fe)."""
    pairs = []
    for i, n in enumerate(names):
        arch = n.rpartition("-")[0]
        for m in names[:i]:
            if m.rpartition("-")[0] == arch:
                pairs.append((m, n) if n.endswith("-scratch") else (n, m))
    return pairs


def check_same_images(paths: dict[str, list]) -> None:
    """Every run was scored on the same images in the same order (else nothing is paired)."""
    names = list(paths)
    for n in names[1:]:
        if paths[n] != paths[names[0]]:
            raise CxrError(f"{n} and {names[0]} were evaluated on different test images; rerun evaluate")


def folds_difference(
    a: dict[tuple[int, int], dict], b: dict[tuple[int, int], dict], key: str, minus: bool = True
):
    """(k, S) a minus b on every (seed, fold) run both have, paired by that key (NaN where a figure
    is undefined), and n_test / n_train; `minus=False`: a's own figures."""
    common = set(a) & set(b)
    seeds, folds = sorted({s for s, _ in common}), sorted({f for _, f in common})
    d = np.array(
        [
            [
                _num(a[(s, f)].get(key)) - (_num(b[(s, f)].get(key)) if minus else 0.0)
                if (s, f) in common
                else np.nan
                for s in seeds
            ]
            for f in folds
        ]
    )
    ratio = float(np.mean([a[r]["n_test"] / a[r]["n_train"] for r in common])) if common else 0.0
    return d, ratio


def _num(v) -> float:
    return np.nan if v is None else float(v)


def compare_modes(
    runs: dict[str, dict[int, verdicts.Scored]],
    groups,
    keys: tuple[str, str],
    boot: tuple[int, int, float],
    per_fold: dict[str, dict] | None = None,
) -> dict:
    """Every pair of `comparisons`: {pair: {figure: Interval, "mcnemar_p", "discordant"}} for
    `keys` (the AUROC key, "accuracy"). `runs`: name -> {seed: its scores on the test set} (the
    same images; runs are paired by seed); `boot`: (resamples, seed, confidence). With `per_fold`
    (name -> {(seed, fold): that fold's figures}) the verdict is over folds."""
    reps, seed, conf = boot
    n = len(next(iter(next(iter(runs.values())).values())).y)
    rs = verdicts.resample(groups, n, reps, np.random.default_rng(seed))
    out = {}
    for a, b in comparisons(list(runs)):
        seeds = sorted(set(runs[a]) & set(runs[b]))
        ra, rb = [runs[a][s] for s in seeds], [runs[b][s] for s in seeds]
        entry = {"seeds": seeds}
        for key in keys:
            if per_fold:
                d, ratio = folds_difference(per_fold[a], per_fold[b], key)
                entry[key] = verdicts.over_folds(d, ratio, conf)
            else:
                entry[key] = verdicts.difference(key, ra, rb, rs, conf)
        ca, cb = ra[0].correct, rb[0].correct
        entry["mcnemar_p"] = mcnemar_p(ca, cb)
        entry["discordant"] = {
            "a_right_b_wrong": int((ca & ~cb).sum()),
            "a_wrong_b_right": int((~ca & cb).sum()),
        }
        out[f"{a} vs {b}"] = entry
    return out


def figure_intervals(
    runs: dict[str, dict[int, verdicts.Scored]],
    groups,
    keys: tuple[str, ...],
    boot: tuple[int, int, float],
    per_fold: dict[str, dict] | None = None,
) -> dict[str, dict[str, verdicts.Interval]]:
    """Each run's own figures with the interval of the procedure its runs allow (one run: the
    test-set bootstrap; seeds: over runs; k folds: over the fold means), on the same resamples
    as the comparisons."""
    reps, seed, conf = boot
    n = len(next(iter(next(iter(runs.values())).values())).y)
    rs = verdicts.resample(groups, n, reps, np.random.default_rng(seed))
    out = {}
    for name, by_seed in runs.items():
        mine = [by_seed[s] for s in sorted(by_seed)]
        out[name] = {}
        for key in keys:
            if per_fold:
                values, ratio = folds_difference(per_fold[name], per_fold[name], key, minus=False)
                out[name][key] = verdicts.over_folds(values, ratio, conf)
            else:
                out[name][key] = verdicts.combine(*verdicts.run_draws(key, mine, rs.w), conf, rs.units)
    return out


def as_json(compare: dict) -> dict:
    """compare.json: each interval as its dict (point, ci, runs, method, level)."""
    return {
        pair: {k: v.as_dict() if isinstance(v, verdicts.Interval) else v for k, v in c.items()}
        for pair, c in compare.items()
    }


def best_modes(compare: dict, names: list[str], key: str, points: dict[str, float | None]) -> dict:
    """Per arch: the mode whose AUROC lead over every other mode its intervals support (with the
    level of that claim), or none; and the point leader, which is only a point. `points`:
    name -> its AUROC (the mean over seeds)."""
    out = {}
    for arch in dict.fromkeys(n.rpartition("-")[0] for n in names):
        mine = [n for n in names if n.rpartition("-")[0] == arch]
        known = [n for n in mine if points.get(n) is not None]
        leader = max(known, key=lambda n: points[n]) if known else None
        best, level = None, verdicts.INCONCLUSIVE
        if leader is not None and len(mine) > 1:
            leads = {}
            for other in mine:
                if other == leader:
                    continue
                iv, sign = _pair(compare, leader, other, key)
                leads[other] = iv if sign > 0 else _flip(iv)
            level = verdicts.best_level(leads)
            best = leader if level != verdicts.INCONCLUSIVE else None
        mode = lambda n: None if n is None else n.rpartition("-")[2]  # noqa: E731
        tied = [mode(n) for n in known if n != leader and round(points[n], 6) == round(points[leader], 6)]
        out[arch] = {
            "best": mode(best),
            "level": level,
            "leader": mode(leader),
            "tied_with": tied,  # the same AUROC as the leader: the order of params.yaml picked it
            "modes": len(mine),
        }
    return out


def _pair(compare: dict, a: str, b: str, key: str) -> tuple[verdicts.Interval, int]:
    """The interval of a minus b (sign +1) or b minus a (-1), whichever compare holds."""
    if f"{a} vs {b}" in compare:
        return compare[f"{a} vs {b}"][key], 1
    return compare[f"{b} vs {a}"][key], -1


def _flip(iv: verdicts.Interval) -> verdicts.Interval:
    neg = lambda v: None if v is None else -v  # noqa: E731
    return verdicts.Interval(neg(iv.point), neg(iv.hi), neg(iv.lo), iv.runs, iv.method, iv.confidence)


def _ci(iv: verdicts.Interval) -> str:
    if iv.point is None:
        return "n/a (undefined on this test set)"
    over = {"over_runs": f" over {iv.runs} seeds x the test set", "over_folds": " over the folds"}
    said = f"{iv.point:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]" if iv.ci else f"{iv.point:+.3f} [no interval]"
    return said + over.get(iv.method, "")


def answer_lines(
    compare: dict, best: dict, keys: tuple[str, str], flagged: int | None, unit: str
) -> list[str]:
    """The comparison the user came for, in plain words: each pair's AUROC and accuracy difference
    with its interval and level, who is ahead where the level allows, and the best mode per arch
    where one is supported."""
    auc_key, _ = keys
    auc = "AUROC" if auc_key == "auroc" else "macro AUROC"
    lines = ["## Which way of training wins?", ""]
    if flagged:
        lines += [
            f"**{flagged} shortcut probe(s) flagged below**: a win may be a shortcut, not disease detection.",
            "",
        ]
    if not compare:
        return [*lines, "Only one way of training ran (`train.modes`): nothing to compare.", ""]
    methods = set()
    for pair, c in compare.items():
        (arch, _, a), (_, _, b) = (n.rpartition("-") for n in pair.split(" vs "))
        iv, acc = c[auc_key], c["accuracy"]
        methods.add(iv.method)
        lines.append(
            f"- **{arch}, {a} vs {b}: {verdicts.ahead(a, b, iv)}.** {a} minus {b}: "
            f"{auc} {_ci(iv)}, {iv.level()}; accuracy {_ci(acc)}, {acc.level()}."
        )
    lines.append("")
    for arch, r in best.items():
        if r["modes"] < 2:
            continue
        if r["best"]:
            lines.append(
                f"**Best on the internal test set: {arch}-{r['best']}** (ahead of every other mode "
                f"by {auc}, {r['level']})."
            )
        else:
            tie = f" (tied with {', '.join(r['tied_with'])})" if r.get("tied_with") else ""
            lead = f"{r['leader']}{tie} has the highest {auc}, but" if r["leader"] else "AUROC is undefined:"
            lines.append(
                f"**No best mode is established for {arch}**: {lead} its lead over every other mode "
                "is not supported by the intervals."
            )
    return [*lines, "", _how(methods, unit), ""]


def _how(methods: set[str], unit: str) -> str:
    """What the intervals are and what their words mean."""
    what = unit.split(":")[0]
    parts = {
        "test_set": f"paired bootstrap over {what} of one run per mode: it carries the test set's noise "
        "only, so a gap it supports is *suggestive*; another seed may move it "
        "(`dvc exp run -S 'train.seeds=[0,1,2]'` measures that)",
        "over_runs": "seeds x test set: the paired per-seed differences' spread and the paired bootstrap "
        f"over {what} combined (Student's t, docs/verdicts.md); a gap it supports is *conclusive*",
        "over_folds": "Nadeau-Bengio corrected t over the folds' paired differences (seeds sharing the "
        "partition averaged within each fold first); a gap it supports is *conclusive*",
    }
    said = "; ".join(parts[m] for m in ("test_set", "over_runs", "over_folds") if m in methods)
    return (
        f"95% intervals: {said}. AUROC decides who is ahead; *best* needs a supported lead over every "
        "other mode; each pair is a separate 95% statement (docs/verdicts.md)."
    )


def table_lines(compare: dict, keys: tuple[str, str]) -> list[str]:
    """The summary's mode-against-mode table."""
    auc_key, _ = keys
    auc = "AUROC" if auc_key == "auroc" else "macro AUROC"
    lines = [
        f"| comparison | {auc} diff (95% CI) | accuracy diff (95% CI) | verdict | McNemar p (first seed) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, c in compare.items():
        iv, acc = c[auc_key], c["accuracy"]
        lines.append(f"| {key} | {_ci(iv)} | {_ci(acc)} | {iv.level()} | {c['mcnemar_p']:.3g} |")
    return [*lines, ""]
