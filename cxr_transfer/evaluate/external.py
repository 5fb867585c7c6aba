"""External test sets: another site's images, kept apart from everything that trains, selects or
thresholds a model. At each site: every mode's AUROC (threshold-free, so comparable across sites)
and accuracy at the internal rule beside the site's prevalence and the majority-class accuracy;
each mode's drop from the internal test set; whether the internal leader is behind another mode
there; and whether the shortcut baselines and the CNN keep their margin over chance. Every word
comes from evaluate/verdicts.py."""

from __future__ import annotations

import numpy as np

from cxr_transfer.evaluate import verdicts


def _mean(points: np.ndarray) -> float | None:
    return None if np.isnan(points).any() else float(points.mean())


def mode_at_site(
    figure: str,
    internal: dict[int, verdicts.Scored],
    external: dict[int, verdicts.Scored],
    rs_int: verdicts.Resamples,
    rs_ext: verdicts.Resamples,
    conf: float,
) -> dict:
    """One mode's figures internal and external (means over its runs, paired by seed), the drops
    with their intervals (each set resampled on its own) and the AUROC's retention of its margin
    over chance."""
    seeds = sorted(set(internal) & set(external))
    internal, external = [internal[s] for s in seeds], [external[s] for s in seeds]
    out = {"seeds": seeds}
    for key in (figure, "accuracy"):
        out[key] = {
            "internal": _mean(verdicts.run_draws(key, internal, np.ones((1, len(internal[0].y))))[0]),
            "external": _mean(verdicts.run_draws(key, external, np.ones((1, len(external[0].y))))[0]),
            # the figure at the site with its interval: the site's images resampled (over seeds)
            "external_interval": verdicts.combine(
                *verdicts.run_draws(key, external, rs_ext.w), conf, rs_ext.units
            ),
            # k folds: each a mean over the fold models, like for like
            "drop": verdicts.two_sets(key, internal, external, rs_int, rs_ext, conf),
        }
    kept = verdicts.two_sets(figure, internal, external, rs_int, rs_ext, conf, verdicts.retention)
    out["retention"], out["retention_word"] = kept, verdicts.retention_word(kept)
    return out


def prevalence(y: np.ndarray, classes: list[str], positive: str | None) -> dict:
    """The site's class shares and the accuracy of always calling its most common class."""
    y = np.asarray(y)
    if len(classes) == 2:
        other = classes[1 - classes.index(positive)]
        shares = {positive: float(y.mean()), other: float(1 - y.mean())}
    else:
        shares = {c: float((y == i).mean()) for i, c in enumerate(classes)}
    top = max(shares, key=shares.get)
    return {
        "shares": {k: round(v, 4) for k, v in shares.items()},
        "majority": top,
        "majority_accuracy": round(shares[top], 4),
    }


def site_verdicts(
    name: str,
    internal: dict[str, dict[int, verdicts.Scored]],
    external: dict[str, dict[int, verdicts.Scored]],
    groups: tuple,
    best: dict,
    figure: str,
    boot: tuple[int, int, float],
    classes: list[str],
    positive: str | None,
) -> dict:
    """One external set against the internal test set. `internal`, `external`: name -> {seed: its
    scores}; `groups`: (internal groups, external groups), the resampling units; `best`:
    compare.best_modes' result. Per arch, the leader (the established best, else the internal
    point leader) against every other mode at the site, at a Bonferroni confidence over those
    comparisons: who is shown ahead of it there, and whether the ranking reverses."""
    reps, seed, conf = boot
    rng = np.random.default_rng(seed)
    ext0, int0 = (next(iter(next(iter(d.values())).values())) for d in (external, internal))
    rs_int = verdicts.resample(groups[0], len(int0.y), reps, rng)
    rs_ext = verdicts.resample(groups[1], len(ext0.y), reps, rng)
    runs = {n: mode_at_site(figure, internal[n], external[n], rs_int, rs_ext, conf) for n in internal}
    ranks = {}
    for arch, b in best.items():
        mine = {n.rpartition("-")[2]: n for n in runs if n.rpartition("-")[0] == arch}
        leader = b["best"] or b["leader"]
        if leader is None or len(mine) < 2:
            continue
        c = verdicts.bonferroni(conf, len(mine) - 1)
        leads = {}
        for m, n in mine.items():
            if m != leader:
                seeds = sorted(set(external[mine[leader]]) & set(external[n]))
                first, second = ([external[x][s] for s in seeds] for x in (mine[leader], n))
                leads[m] = verdicts.difference(figure, first, second, rs_ext, c)
        ahead, level = verdicts.ahead_of(leads)
        ranks[arch] = {
            "leader": leader,
            "leader_established": b["level"],
            "tied_with": b.get("tied_with", []),
            "leads": leads,
            "confidence": c,
            "ahead_at_site": ahead,
            "ahead_level": level,
            "reversed": verdicts.reverses(b["level"], level),
        }
    return {
        "name": name,
        "images": len(ext0.y),
        "site": prevalence(ext0.y, classes, positive),
        "runs": runs,
        "ranking": ranks,
    }


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _ci(iv: verdicts.Interval) -> str:
    if iv.point is None:
        return "n/a"
    return f"{iv.point:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]" if iv.ci else f"{iv.point:+.3f}"


def answer_lines(sites: list[dict], figure: str) -> list[str]:
    """'Which way wins?' at each external site, in the words the site's intervals allow."""
    auc = "AUROC" if figure == "auroc" else "macro AUROC"
    lines = []
    for s in sites:
        maj = s["site"]
        for arch, r in s["ranking"].items():
            mine = {n.rpartition("-")[2]: v for n, v in s["runs"].items() if n.rpartition("-")[0] == arch}
            order = sorted(mine, key=lambda m: -(mine[m][figure]["external"] or -1))
            said = ", ".join(f"{m} {_f(mine[m][figure]['external'])}" for m in order)
            acc = ", ".join(f"{m} {_f(mine[m]['accuracy']['external'])}" for m in order)
            line = (
                f"- **At {s['name']}** (external, {s['images']} images, never used to train, select or "
                f"threshold): {arch}'s {auc} {said}; accuracy at the internal rule {acc}, against "
                f"{_f(maj['majority_accuracy'])} for always calling {maj['majority']}."
            )
            lines.append(line + " " + _site_words(s["name"], r, mine, figure))
    return [*lines, ""] if lines else []


def _site_words(site: str, r: dict, mine: dict, figure: str) -> str:
    """Reverses (the internal best conclusive, another mode conclusively ahead here), ahead
    (weaker: said with its level and why it is no reversal), or inconclusive."""
    leader, level = r["leader"], r["leader_established"]
    tie = f" (tied with {', '.join(r['tied_with'])})" if r.get("tied_with") else ""
    who = (
        f"the internal best, {leader},"
        if level != verdicts.INCONCLUSIVE
        else f"the internal leader, {leader}{tie},"
    )
    if mine[leader][figure]["external"] is None:
        return f"AUROC is undefined at {site} (it holds one class): no ranking there."
    rivals = ", ".join(r["ahead_at_site"])
    if r["reversed"]:
        return (
            f"**The ranking reverses**: {rivals} is ahead of {who} at {site} (conclusive; "
            f"{r['confidence']:.1%} intervals over the {len(r['leads'])} comparisons)."
        )
    if not rivals:
        return f"No mode is shown ahead of {who} at {site} (inconclusive at this site)."
    why = (
        "one run per mode"
        if r["ahead_level"] == verdicts.SUGGESTIVE
        else f"{leader}'s internal lead was {level}, not conclusive"
    )
    return f"{rivals} is ahead of {who} at {site} ({r['ahead_level']}; no reversal is claimed: {why})."


def shortcut_line(name: str, base: dict, cnn: str, cnn_row: dict | None, figure: str) -> str:
    """The probes' verdict at one site: does the strongest shortcut baseline that separated the
    classes internally keep its margin over chance there, and does the CNN? `base`: external_eval's
    baselines.json (each with internal and external AUROC and the retention interval)."""
    sep = {k: v for k, v in base.items() if v.get("separates_internally")}
    if not sep:
        return (
            f"- **{name}**: no shortcut baseline separated the classes internally (each interval holds 0.5): "
            "nothing to carry over."
        )
    k = max(sep, key=lambda q: sep[q]["internal"]["auroc"])
    b = sep[k]
    head = (
        f"- **{name}**: the strongest baseline ({k.replace('_', ' ')}, fit on the internal training split): "
        f"AUROC {_f(b['internal']['auroc'])} internal -> {_f(b['external']['auroc'])} here, retention "
        f"{_ci(verdicts.Interval(**_iv(b['retention'])))}: {b['retention_word']}; "
    )
    if cnn_row is None or cnn_row["retention"].point is None:
        return head + f"{cnn}: AUROC undefined at this site."
    r = cnn_row[figure]
    head += (
        f"{cnn}: {_f(r['internal'])} -> {_f(r['external'])}, retention {_ci(cnn_row['retention'])}: "
        f"{cnn_row['retention_word']}. "
    )
    return head + _shortcut_words(b["retention_word"], cnn_row["retention_word"])


def _iv(d: dict) -> dict:
    lo, hi = d["ci"] or (None, None)
    return {"point": d["point"], "lo": lo, "hi": hi, "runs": d["runs"], "method": d["method"]}


def _shortcut_words(base: str, cnn: str) -> str:
    if "unclear" in (base, cnn):
        which = [w for w, v in (("the baseline", base), ("the CNN", cnn)) if v == "unclear"]
        known = [f"{w} {v}" for w, v in (("the baseline", base), ("the CNN", cnn)) if v != "unclear"]
        return (
            f"No verdict on a shortcut: for {' and '.join(which)} the interval holds the line of keeping "
            "half the margin over chance (more images at this site would tell)"
            + (f"; {known[0]}." if known else ".")
        )
    return {
        (
            "holds",
            "holds",
        ): "Both hold: what the baseline reads (a shortcut or coarse disease signal) carries "
        "over to this site, so it cannot be ruled out as part of the CNN's result.",
        ("collapses", "holds"): "The baseline collapses and the CNN holds: the CNN reads something that "
        "carries over where the baseline's signal does not.",
        (
            "collapses",
            "collapses",
        ): "Both collapse: either both rested on something particular to the internal "
        "data (a shortcut), or this site's images differ enough (domain shift) to defeat both; this set "
        "alone cannot tell which.",
        ("holds", "collapses"): "The baseline holds but the CNN collapses: the CNN did not learn what "
        "carries over between these sites.",
    }[(base, cnn)]


def markdown(sites: list[dict], figure: str, unit: str) -> list[str]:
    """The summary's external section: each run internal vs external, the drops with their
    intervals, and the retention of the AUROC's margin over chance."""
    auc = "AUROC" if figure == "auroc" else "macro AUROC"
    lines = ["## External test sets", ""]
    for s in sites:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in s["site"]["shares"].items())
        lines += [
            f"**{s['name']}**: {s['images']} images from another site ({shares}; always calling "
            f"{s['site']['majority']} scores accuracy {s['site']['majority_accuracy']:.3f}), scored by each "
            "model as trained (threshold and calibration from the internal validation split).",
            "",
            f"| model | {auc} internal | external | drop (95% CI) | accuracy internal | external "
            "| drop (95% CI) | margin over chance |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n, r in s["runs"].items():
            a, c = r[figure], r["accuracy"]
            lines.append(
                f"| {n} | {_f(a['internal'])} | {_f(a['external'])} | {_ci(a['drop'])} | {_f(c['internal'])} "
                f"| {_f(c['external'])} | {_ci(c['drop'])} | {r['retention_word']} |"
            )
        lines.append("")
    lines += [
        f"Drops are external minus internal; intervals resample {unit.split(':')[0]} of each set on its own "
        "(two independent samples; with several seeds, combined with the seeds' spread). *Margin over "
        "chance*: whether the external AUROC keeps at least half of the internal margin over 0.5 (holds) "
        "or loses more than half (collapses), by the interval of (external - 0.5) - (internal - 0.5) / 2; "
        "unclear where it holds 0.",
        "",
    ]
    return lines
