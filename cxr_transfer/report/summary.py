"""Every arch x mode in one comparison: the summary table and its Markdown, mode-vs-mode
statistics, the probes' trust lines and the Grad-CAM lung-share table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def fmt(v, ci=None) -> str:
    if v is None or v != v:  # None, or NaN where a DataFrame column held a None
        return "n/a"
    s = f"{v:.3f}"
    return f"{s} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else s


FIGURES = {
    "Precision": "precision",
    "Recall": "recall",
    "F1-Score": "f1",
    "Accuracy": "accuracy",
    "Specificity": "specificity",
    "AUROC": "auroc",
    "Train seconds": "train_seconds",
    "Images/s": "images_per_s",
}
FIGURES_K = {  # more than two classes: macro averages over the classes, AUROC one-vs-rest
    "Precision (macro)": "precision_macro",
    "Recall (macro)": "recall_macro",
    "F1 (macro)": "f1_macro",
    "Accuracy": "accuracy",
    "Balanced accuracy": "balanced_accuracy",
    "Kappa": "kappa",
    "AUROC (macro)": "auroc_macro",
    "Train seconds": "train_seconds",
    "Images/s": "images_per_s",
}
TIMES = ("Train seconds", "Images/s")


def figures_for(n_classes: int) -> tuple[dict[str, str], str]:
    """The summary table's columns (column -> metric key) and the AUROC key compared."""
    return (FIGURES, "auroc") if n_classes == 2 else (FIGURES_K, "auroc_macro")


def summary_table(
    runs: dict[str, list[dict]],
    figures=FIGURES,
    auroc_key: str = "auroc",
    marks: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The seed's results table (NETWORK, Precision, Recall, F1-Score, Accuracy, Specificity),
    extended with AUROC, 95% intervals and training time; `marks` (name -> "best, conclusive"...,
    from the verdict procedures) fills the Best column, so a row is called best only where the
    intervals support it.

    `runs` maps each arch-mode to its runs' metrics, one per seed. Each figure is the mean over
    seeds; with several seeds the table adds each figure's standard deviation ("<figure> SD") and
    the number of seeds, and leaves out the single-run bootstrap intervals. More than two classes:
    `figures_for(K)`."""
    rows = []
    for name, ms in runs.items():
        row = {"NETWORK": name}
        for col, k in figures.items():
            vals = [m[k] for m in ms]
            ok = all(v is not None for v in vals)
            row[col] = float(np.mean(vals)) if ok else None
            if len(ms) > 1:
                row[f"{col} SD"] = float(np.std(vals, ddof=1)) if ok else None
        one = len(ms) == 1
        row["Accuracy CI"] = ms[0]["ci"]["accuracy"] if one else None
        row["AUROC CI"] = ms[0]["ci"][auroc_key] if one else None
        if not one:
            row["Seeds"] = len(ms)
        row["Best"] = (marks or {}).get(name, "")
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(r: dict, col: str, ci_col: str | None = None) -> str:
    """mean ± SD over seeds, or the single run's figure with its interval."""
    if f"{col} SD" in r and r[col] is not None and r[f"{col} SD"] == r[f"{col} SD"]:
        return f"{r[col]:.3f} ± {r[f'{col} SD']:.3f}"
    return fmt(r[col], r.get(ci_col) if ci_col else None)


def summary_markdown(
    df: pd.DataFrame,
    compare: list[str],
    notes: list[str] = (),
    probe: dict | None = None,
    answer: list[str] = (),
    figures=FIGURES,
    auroc_key: str = "auroc",
    unit: str = "patients",
) -> str:
    """The summary page; `compare`: the mode-against-mode table's lines (compare.table_lines);
    `unit` names what the bootstrap resamples (`resampling_unit`)."""
    seeds = int(df["Seeds"].iloc[0]) if "Seeds" in df else 1
    spread = f"mean ± SD over {seeds} seeds" if seeds > 1 else "95% CI"
    ci_cols = {"accuracy": "Accuracy CI", auroc_key: "AUROC CI"}
    shown = [c for c in figures if c not in TIMES]
    heads = [f"{c} ({spread})" if figures[c] in ci_cols else c for c in shown]
    lines = ["# Results on the test split", "", *answer]
    lines += trust_lines(probe) if probe else []
    lines += ["## The results", "", "| " + " | ".join(["NETWORK", *heads, "Train s"]) + " |"]
    lines += ["|" + " --- |" * (len(shown) + 2)]
    for r in df.to_dict("records"):
        name = f"**{r['NETWORK']}** ({r['Best']})" if r["Best"] else r["NETWORK"]
        cells = [_cell(r, c, ci_cols.get(figures[c])) for c in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['Train seconds']:.1f} |")
    lines += ["", "## Mode against mode (same test images)", ""]
    if not compare:
        lines += ["Nothing to compare: one mode per architecture ran (`train.modes`).", ""]
    else:
        lines += compare
    lines += [
        f"Intervals: bootstrap over {unit}, paired between modes (the verdict's procedure per row: "
        "compare.json, docs/verdicts.md). ECE has no interval: it is biased upward on resamples, so a "
        "percentile interval can miss its own point estimate.",
        "",
    ]
    lines += [f"Note: {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(lines)


def stale_runs(folders: dict[str, Path], current: set[str]) -> list[str]:
    """Run folders (eval/<run>, dvclive/<run>) that the params no longer produce: left by an
    earlier run with more archs, modes or seeds, they would read as current."""
    out = []
    for kind, folder in folders.items():
        if Path(folder).is_dir():
            out += [
                f"{kind}/{d.name}"
                for d in sorted(Path(folder).iterdir())
                if d.is_dir() and d.name not in current and d.name not in ("probe", "external")
            ]
    return out


def resampling_unit(groups) -> str:
    """What the bootstrap resamples, in words: patients where every test image has a patient id,
    else images, saying what that means for the split."""
    g = pd.Series(groups, dtype=str)
    if len(g) and g.str.startswith("patient:").all():
        return "patients"
    if g.str.startswith("patient:").any():
        return "patients, and images where no patient is known (those may share a patient across splits)"
    return (
        "images: there is no patient table, so the split keeps identical and near-identical images "
        "together but images of one patient may sit in train and test"
    )


def _auc(r: dict) -> str:
    return fmt(
        r["auroc"], [r["auroc_ci_low"], r["auroc_ci_high"]] if r.get("auroc_ci_low") is not None else None
    )


def _mark(flagged: bool) -> str:
    return "**FLAG**" if flagged else "ok"


def trust_lines(probe: dict) -> list[str]:
    """The "Can these results be trusted?" table: each probe's figure, its threshold and a verdict
    in plain words (metrics/probe.json, written by the probe stage)."""
    rows = _trust_rows(probe)
    n = sum(f for *_, f, _ in rows)
    head = "Nothing is flagged." if n == 0 else f"**{n} probe(s) flagged**: read the results below with care."
    lines = [
        "## Can these results be trusted?",
        "",
        head,
        "",
        "| probe | figure (95% CI) | flagged at | verdict | what it means |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {_mark(f)} | {d} |" for a, b, c, f, d in rows]
    return [*lines, ""]


def flagged_probes(probe: dict) -> int:
    """How many probes flag a shortcut."""
    return sum(f for *_, f, _ in _trust_rows(probe))


def _trust_rows(probe: dict) -> list[tuple]:
    """(probe, figure, threshold, flagged, plain words) per probe."""
    t = probe["flag_auroc"]
    auc = "macro AUROC" if probe.get("auroc_average") else "AUROC"  # more than two classes: one-vs-rest
    rows = []
    for k in sorted((k for k in probe if k.startswith("pixels_")), key=lambda k: int(k.split("_")[1])):
        r, n = probe[k], k.split("_")[1]
        say = (
            f"a logistic regression on {n}x{n} thumbnails separates the classes: they differ in ways "
            "that need no disease detail; high accuracy here is not evidence of disease detection"
            if r["flagged"]
            else f"{n}x{n} thumbnails alone do not separate the classes well"
        )
        rows.append((f"pixels {n}x{n}", f"{auc} {_auc(r)}", f">= {t}", r["flagged"], say))
    r = probe["acquisition"]
    say = (
        f"image size, format, file size and intensity statistics separate the classes (most: "
        f"{r['top_features']}): the classes were acquired differently"
        if r["flagged"]
        else f"acquisition facts do not separate the classes (most: {r['top_features']})"
    )
    rows.append(("acquisition facts", f"{auc} {_auc(r)}", f">= {t}", r["flagged"], say))
    for arch, r in probe.get("outside_lungs", {}).items():
        say = (
            "with the lung fields blacked out, ImageNet features still separate the classes: the "
            "signal lies outside the lungs (borders, labels, devices, body habitus)"
            if r["flagged"]
            else "with the lung fields blacked out the classes are not separable; the lungs-only "
            f"images reach AUROC {fmt(r['centre_only']['auroc'])}: the signal lies in the lungs"
        )
        rows.append(
            (f"outside the lungs ({arch})", f"{auc} {_auc(r['masked'])}", f">= {t}", r["flagged"], say)
        )
    r = probe["near_duplicates"]
    if "skipped" in r:
        rows.append(("near-duplicates", "-", "-", False, f"skipped: {r['skipped']}"))
    else:
        within = f"within {r['max_bits']} / {r['max_framed_bits']} bits"
        say = (
            f"{r['test_pairs_same_class']} test image(s) of one class with a near pair in training or "
            f"validation ({within}: looser than the split's join): probable near copies the split did not "
            "join (eval/probe/near_duplicates.csv lists them)"
            if r["flagged"]
            else f"{r['pairs']} near pairs {within} (looser than the split's join), none a test image with "
            "one of its class elsewhere"
            + (
                f"; {r['cross_split_pairs']} across other splits or classes (different images can hash alike)"
                if r["cross_split_pairs"]
                else ""
            )
        )
        rows.append(
            (
                "near-duplicates",
                f"{r['pairs']} pairs, {r['cross_split_pairs']} across splits",
                "> 0 across",
                r["flagged"],
                say,
            )
        )
    rows.append(source_row(probe["source"], probe["flag_cramers_v"]))
    return rows


def source_row(r: dict, flag_v: float) -> tuple:
    """The trust table's source-confounding row: Cramer's V of source x class, and plainly what
    the data cannot tell when no source holds every class."""
    if "skipped" in r:
        return ("source confounding", "-", "-", False, f"skipped: {r['skipped']}")
    say = (
        "the image source predicts the class: a model can score by recognising the hospital"
        if r["flagged"]
        else "the sources hold both classes in similar proportions"
    )
    table = r.get("table") or {}
    if table and not any(all(n > 0 for n in row.values()) for row in table.values()):
        say = (
            "no source holds every class: the data cannot separate source from label (a model may "
            "score by recognising the source, and no split of these images can tell); only an "
            "external set can tell them apart"
        )
    return (
        "source confounding",
        f"Cramer's V {fmt(r['cramers_v'])} over {r['sources']} sources",
        f">= {flag_v}",
        r["flagged"],
        say,
    )


def gradcam_share_lines(shares: dict, box: float, classes: list[str], positive: str | None) -> str:
    """The "Where do the models look?" section: per model, the share of its Grad-CAM mass on the
    central lung box, overall and per true class, beside what a map spread evenly would give."""
    if not shares:
        return ""
    toward = f"toward {positive}" if len(classes) == 2 else "toward each image's predicted class"
    uniform = next(iter(shares.values()))["uniform_map"]
    lines = [
        "",
        "## Where do the models look?",
        "",
        f"Share of each model's Grad-CAM mass ({toward}) inside the central box of {box:.0%} of each "
        f"side, the crude lung fields of the outside-the-lungs probe; a map spread evenly puts "
        f"{uniform:.0%} there. A low share means the evidence lies at the borders, labels or devices; a "
        "high one does not prove the model reads disease (a crude box, no lung segmentation).",
        "",
        "| model | images | all | " + " | ".join(f"{c} images" for c in classes) + " |",
        "|" + " --- |" * (len(classes) + 3),
    ]
    for n, s in shares.items():
        cells = [pct(s["by_class"].get(c)) for c in classes]
        lines.append(f"| {n} | {s['images']} | {pct(s['all'])} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""]) + "\n"


def pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"
