"""External test sets: another site's images, kept apart from everything that trains, selects or
thresholds a model, and checked for copies of the internal images (public COVID collections
reuse each other's images, so an "external" set often holds some of the training data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_transfer.core.decision import decide, decide_positive
from cxr_transfer.evaluate.metrics import auroc, group_indices, interval


def _figures(y: np.ndarray, p: np.ndarray) -> tuple[float, float | None]:
    """Accuracy (argmax / 0.5) and AUROC (macro one-vs-rest for K classes) of scores `p`."""
    if p.ndim == 1:
        return float((decide_positive(p) == y).mean()), auroc(y, p)
    aucs = [auroc(y == c, p[:, c]) for c in range(p.shape[1])]
    return float((decide(p) == y).mean()), None if None in aucs else float(np.mean(aucs))


def scores_of(pred: pd.DataFrame, classes: list[str], positive: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(y, scores) from a predictions.csv: P(positive) for two classes, the (N, K) columns for more."""
    if len(classes) == 2:
        return (pred["class"] == positive).to_numpy().astype(int), pred["probability"].to_numpy(float)
    return pred["label"].to_numpy(), pred[[f"p_{c}" for c in classes]].to_numpy(float)


def drop(
    internal: pd.DataFrame, external: pd.DataFrame, classes, positive, reps: int, seed: int, conf: float
) -> dict:
    """External minus internal accuracy and AUROC of one model, with a percentile interval from
    resampling each set's groups on its own (two independent samples, not paired images)."""
    (yi, pi), (ye, pe) = scores_of(internal, classes, positive), scores_of(external, classes, positive)
    (ai, ui), (ae, ue) = _figures(yi, pi), _figures(ye, pe)
    rng = np.random.default_rng(seed)
    units = [group_indices(d["group"].to_numpy(), len(d)) for d in (internal, external)]
    acc, auc = [], []
    for _ in range(reps):
        i, e = (np.concatenate([u[k] for k in rng.integers(0, len(u), len(u))]) for u in units)
        (bi, bui), (be, bue) = _figures(yi[i], pi[i]), _figures(ye[e], pe[e])
        acc.append(be - bi)
        auc.append(None if bui is None or bue is None else bue - bui)
    return {
        "internal": {"accuracy": round(ai, 6), "auroc": None if ui is None else round(ui, 6), "n": len(yi)},
        "external": {"accuracy": round(ae, 6), "auroc": None if ue is None else round(ue, 6), "n": len(ye)},
        "accuracy_drop": round(ae - ai, 6),
        "accuracy_drop_ci": interval(acc, conf),
        "auroc_drop": None if ui is None or ue is None else round(ue - ui, 6),
        "auroc_drop_ci": interval(auc, conf),
    }


def ranking(figures: dict[str, float | None]) -> list[str]:
    """Modes from best to worst by a figure (undefined last)."""
    return sorted(figures, key=lambda m: -(figures[m] if figures[m] is not None else -np.inf))


def _holds(internal: float | None, external: float | None) -> bool | None:
    """Whether an AUROC keeps at least half of its margin over chance on the external set."""
    if internal is None or external is None or internal <= 0.5:
        return None
    return external - 0.5 >= 0.5 * (internal - 0.5)


def shortcut_line(
    name: str, probe: dict, base: dict, cnn: str, cnn_int: float | None, cnn_ext: float | None
) -> str:
    """The probes' verdict on one external set: do the baselines trained on the internal data (pixels,
    acquisition facts) still separate the classes there, and does the best internal CNN?"""
    keys = [k for k in base if k in probe and probe[k].get("auroc") is not None]
    if not keys:
        return f"- **{name}**: no baseline to compare."
    k = max(keys, key=lambda q: probe[q]["auroc"])
    bi, be = probe[k]["auroc"], base[k]["auroc"]
    b_holds, c_holds = _holds(bi, be), _holds(cnn_int, cnn_ext)
    fig = f"AUROC {bi:.2f} internal -> {be:.2f} on {name}" if be is not None else f"AUROC {bi:.2f} internal"
    cnn_fig = "n/a" if cnn_int is None or cnn_ext is None else f"{cnn_int:.2f} -> {cnn_ext:.2f}"
    what = k.replace("_", " ")
    head = f"- **{name}**: the strongest baseline ({what}, fit on the internal training split): {fig}; "
    head += f"{cnn}: {cnn_fig}. "
    if b_holds is None:
        return head + "The baselines did not separate the classes internally: no shortcut to carry over."
    if b_holds and c_holds:
        return (
            head + "Both hold: what the baseline reads (a shortcut or coarse disease signal) carries over to "
            "this site, so it cannot be ruled out as part of the CNN's result."
        )
    if not b_holds and c_holds:
        return (
            head + "The baseline collapses and the CNN holds: evidence that the CNN reads more than the "
            "shortcut the baseline found."
        )
    if not b_holds and not c_holds:
        return head + "Both collapse: the internal figure was most likely the shortcut, not disease."
    return (
        head
        + "The baseline holds but the CNN collapses: the CNN did not learn what carries over between sites."
    )


def compare_sites(
    name: str,
    n_images: int,
    internal: dict[str, pd.DataFrame],
    external: dict[str, pd.DataFrame],
    classes: list[str],
    positive: str | None,
    boot: tuple[int, int, float],
) -> dict:
    """One external set against the internal test set: each run's figures, drop and interval, and
    per arch the modes ranked by accuracy in both (`reversed`: the internal winner is beaten at this
    site; a tie is not a reversal)."""
    runs = {n: drop(internal[n], external[n], classes, positive, *boot) for n in internal}
    ranks = {}
    for arch in dict.fromkeys(n.rpartition("-")[0] for n in runs):
        mine = {n.rpartition("-")[2]: r for n, r in runs.items() if n.rpartition("-")[0] == arch}
        acc = {w: {m: r[w]["accuracy"] for m, r in mine.items()} for w in ("internal", "external")}
        inside, outside = ranking(acc["internal"]), ranking(acc["external"])
        beaten = acc["external"][inside[0]] < acc["external"][outside[0]]
        ranks[arch] = {"internal": inside, "external": outside, "accuracy": acc, "reversed": beaten}
    return {"name": name, "images": n_images, "runs": runs, "ranking": ranks}


def _order(modes: list[str], figure: dict[str, float]) -> str:
    """'ft > fe = ft_gradual > scratch': modes best first, ties (equal to 3 decimals) with '='."""
    out = modes[0]
    for a, b in zip(modes, modes[1:], strict=False):
        out += (" = " if round(figure[a], 3) == round(figure[b], 3) else " > ") + b
    return out


def answer_lines(sites: list[dict]) -> list[str]:
    """'Which way wins?' at each external site, beside the internal ranking, said plainly when the
    best mode is another one."""
    lines = []
    for s in sites:
        for arch, r in s["ranking"].items():
            outside, inside = (
                _order(r["external"], r["accuracy"]["external"]),
                _order(r["internal"], r["accuracy"]["internal"]),
            )
            line = (
                f"- **At {s['name']}** (external, {s['images']} images, never used to train, select or "
                f"threshold), {arch} ranks {outside} by accuracy (internal: {inside})."
            )
            best = r["internal"][0]
            if r["reversed"]:
                line += (
                    f" **The ranking reverses: internally {best} wins, at {s['name']} "
                    f"{r['external'][0]} does**; an internal-only verdict would name the wrong winner here."
                )
            elif sum(v == r["accuracy"]["external"][best] for v in r["accuracy"]["external"].values()) > 1:
                line += f" The internal winner, {best}, is no longer ahead: it ties at this site."
            else:
                line += f" The internal winner, {best}, holds."
            lines.append(line)
    return [*lines, ""] if lines else []


def _pm(v, ci) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{v:+.3f}"


def markdown(sites: list[dict], unit: str) -> list[str]:
    """The summary's external section: each run internal vs external, the drop with its interval."""
    lines = ["## External test sets", ""]
    for s in sites:
        lines += [
            f"**{s['name']}**: {s['images']} images from another site, scored by each model as trained "
            "(threshold and calibration from the internal validation split).",
            "",
            "| model | accuracy internal | external | drop (95% CI) "
            "| AUROC internal | external | drop (95% CI) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n, r in s["runs"].items():
            i, e = r["internal"], r["external"]
            f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            acc, auc = (
                _pm(r["accuracy_drop"], r["accuracy_drop_ci"]),
                _pm(r["auroc_drop"], r["auroc_drop_ci"]),
            )
            lines.append(
                f"| {n} | {f(i['accuracy'])} | {f(e['accuracy'])} | {acc} "
                f"| {f(i['auroc'])} | {f(e['auroc'])} | {auc} |"
            )
        lines.append("")
    lines += [
        f"Drops are external minus internal; intervals resample {unit.split(':')[0]} of each set on its own "
        "(two independent samples). Whether the shortcut baselines carry over to each site is in "
        "*Can these results be trusted?* above.",
        "",
    ]
    return lines
