"""Gather every arch x mode into the comparison: the summary table, mode-vs-mode statistics, the
combined plot data that `dvc plots show` reads, and static PNGs for readers without DVC."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cxr_transfer.audit.gradcam import overlay  # noqa: E402
from cxr_transfer.core.cli import save_figure  # noqa: E402
from cxr_transfer.core.errors import CxrError  # noqa: E402
from cxr_transfer.evaluate import multiclass  # noqa: E402
from cxr_transfer.evaluate.metrics import paired_difference  # noqa: E402

CURVE_FILES = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
}


def read_curves(live_dir: Path) -> pd.DataFrame:
    """One row per epoch from a DVCLive folder's TSVs (step = epoch)."""
    out = None
    for col, rel in CURVE_FILES.items():
        t = pd.read_csv(Path(live_dir) / "plots" / "metrics" / f"{rel}.tsv", sep="\t")
        t = t.rename(columns={"step": "epoch", rel.split("/")[1]: col})[["epoch", col]]
        out = t if out is None else out.merge(t, on="epoch")
    return out


def _fmt(v, ci=None) -> str:
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


def summary_table(runs: dict[str, list[dict]], figures=FIGURES, auroc_key: str = "auroc") -> pd.DataFrame:
    """The seed's results table (NETWORK, Precision, Recall, F1-Score, Accuracy, Specificity),
    extended with AUROC, 95% intervals and training time; the best accuracy row is marked.

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
        rows.append(row)
    df = pd.DataFrame(rows)
    acc = df["Accuracy"].astype(float).fillna(-1)
    df["Best"] = np.where(acc == acc.max(), "*", "")
    return df


def _cell(r: dict, col: str, ci_col: str | None = None) -> str:
    """mean ± SD over seeds, or the single run's figure with its interval."""
    if f"{col} SD" in r and r[col] is not None and r[f"{col} SD"] == r[f"{col} SD"]:
        return f"{r[col]:.3f} ± {r[f'{col} SD']:.3f}"
    return _fmt(r[col], r.get(ci_col) if ci_col else None)


def summary_markdown(
    df: pd.DataFrame,
    compare: dict,
    notes: list[str] = (),
    probe: dict | None = None,
    answer: list[str] = (),
    figures=FIGURES,
    auroc_key: str = "auroc",
    unit: str = "patients",
) -> str:
    """The summary page; `unit` names what the bootstrap resamples (`resampling_unit`)."""
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
        name = f"**{r['NETWORK']}** (best)" if r["Best"] else r["NETWORK"]
        cells = [_cell(r, c, ci_cols.get(figures[c])) for c in shown]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['Train seconds']:.1f} |")
    first = ", the first seed's runs" if seeds > 1 else ""
    auc = "AUROC" if auroc_key == "auroc" else "macro AUROC"
    lines += ["", f"## Mode against mode (same test images{first})", ""]
    if not compare:
        lines += ["Nothing to compare: one mode per architecture ran (`train.modes`).", ""]
    else:
        lines += [
            f"| comparison | accuracy diff (95% CI) | {auc} diff (95% CI) | McNemar p |",
            "| --- | --- | --- | --- |",
        ]
        for key, c in compare.items():
            lines.append(
                f"| {key} | {_fmt(c['accuracy_diff'], c['accuracy_diff_ci'])} "
                f"| {_fmt(c[f'{auroc_key}_diff'], c[f'{auroc_key}_diff_ci'])} | {c['mcnemar_p']:.3g} |"
            )
        lines.append("")
    lines += [
        f"Intervals: percentile bootstrap over {unit}; differences are paired. ECE has no interval: it "
        "is biased upward on resamples, so a percentile interval can miss its own point estimate.",
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


def compare_modes(
    preds: dict[str, pd.DataFrame], positive: str | None, reps: int, seed: int, conf: float, classes=()
) -> dict:
    """Every pair of `comparisons` on the same test images; more than two `classes`: accuracy
    and macro AUROC from the p_<class> columns."""
    out = {}
    for a, b in comparisons(list(preds)):
        pa, pb = preds[a], preds[b]
        if list(pa["path"]) != list(pb["path"]):
            raise CxrError(f"{a} and {b} were evaluated on different test images; rerun evaluate")
        if len(classes) > 2:
            cols = [f"p_{c}" for c in classes]
            out[f"{a} vs {b}"] = multiclass.paired_difference(
                pa["label"].to_numpy(), pa[cols], pb[cols], pa["group"].to_numpy(), reps, seed, conf
            )
            continue
        y = (pa["class"] == positive).to_numpy()
        out[f"{a} vs {b}"] = paired_difference(
            y,
            pa["probability"].to_numpy(),
            pb["probability"].to_numpy(),
            pa["group"].to_numpy(),
            reps,
            seed,
            conf,
        )
    return out


def _lines(ax, df: pd.DataFrame, x: str, y: str, title: str, ylabel: str, style="-o"):
    """One line per model; with several seeds, each seed's line faint and their mean bold."""
    for i, (name, g) in enumerate(df.groupby("model", sort=False)):
        color = f"C{i}"
        seeds = g["seed"].nunique() if "seed" in g else 1
        if seeds > 1:
            for _, gs in g.groupby("seed"):
                ax.plot(gs[x], gs[y], "-", color=color, alpha=0.25, lw=0.8)
            g = g.groupby(x, as_index=False)[y].mean()
            name = f"{name} (mean of {seeds} seeds)"
        ax.plot(g[x], g[y], style, color=color, label=name, markersize=3)
    ax.set(title=title, xlabel=x, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_curves(curves: pd.DataFrame, out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    _lines(
        ax, curves, "epoch", "val_acc", "Validation accuracy: pretrained vs scratch", "validation accuracy"
    )
    fig.tight_layout()
    save_figure(fig, out_dir / "val_accuracy.png")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
    _lines(axes[0], curves, "epoch", "train_loss", "Training loss", "cross-entropy")
    _lines(axes[1], curves, "epoch", "val_loss", "Validation loss", "cross-entropy")
    fig.tight_layout()
    save_figure(fig, out_dir / "loss.png")
    plt.close("all")


def plot_roc(roc: pd.DataFrame, metrics: dict[str, dict], out_dir: Path) -> None:
    """One panel for two classes; one per class (that class against the rest) for more."""
    panels = list(roc.groupby("class", sort=False)) if "class" in roc else [(None, roc)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), dpi=110, squeeze=False)
    for ax, (cls, part) in zip(axes[0], panels, strict=True):
        for name, g in part.groupby("model", sort=False):
            auc = metrics[name]["auroc"] if cls is None else metrics[name]["per_class"][cls]["auroc"]
            ax.plot(g["fpr"], g["tpr"], label=f"{name} (AUROC {_fmt(auc)})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        title = "ROC on the test split" if cls is None else f"{cls} vs the rest (test split)"
        ax.set(title=title, xlabel="1 - specificity", ylabel="sensitivity")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, out_dir / "roc.png")
    plt.close(fig)


def confusion_of(m: dict, classes: list[str], positive: str | None) -> tuple[np.ndarray, list[str]]:
    """A model's confusion matrix (rows actual, columns predicted) and its class labels."""
    if "confusion_matrix" in m:
        return np.array(m["confusion_matrix"]["rows_true_columns_predicted"]), list(classes)
    c = m["confusion"]
    neg = next(x for x in classes if x != positive)
    return np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]]), [neg, positive]


def plot_confusions(metrics: dict[str, dict], classes: list[str], positive: str | None, out_dir: Path):
    """Every model's confusion matrix side by side (2x2, or KxK for K classes)."""
    k = len(classes)
    side = 3.2 if k == 2 else 1.1 * k + 1.2
    fig, axes = plt.subplots(1, len(metrics), figsize=(side * len(metrics), side), dpi=110, squeeze=False)
    for ax, (name, m) in zip(axes[0], metrics.items(), strict=True):
        mat, labels = confusion_of(m, classes, positive)
        ax.imshow(mat, cmap="Blues", vmin=0)  # the text colour rule below assumes a scale from 0
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > mat.max() / 2 else "black")
        ax.set(
            title=name,
            xticks=range(k),
            yticks=range(k),
            xlabel="predicted",
            ylabel="actual",
        )
        ax.set_xticklabels(labels, rotation=30 if k > 2 else 0, ha="right" if k > 2 else "center")
        ax.set_yticklabels(labels)
    fig.tight_layout()
    save_figure(fig, out_dir / "confusion.png")
    plt.close(fig)


def plot_gradcam_grid(images, cams, titles, out_path: Path, suptitle: str) -> None:
    """Rows of Grad-CAM overlays on one colour scale with its colour bar; images (N,S,S) uint8,
    cams (N,S,S) in [0,1] (`gradcam.shared_scale`), titles of two short lines."""
    n = max(len(images), 1)
    cols = 4
    rows = -(-n // cols)
    w, h = 2.2 * cols + 1.0, 2.6 * rows + 0.8  # inches; a fixed layout (constrained layout is slow)
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), dpi=100, squeeze=False)
    fig.subplots_adjust(
        left=0.1 / w, right=1 - 1.0 / w, bottom=0.1 / h, top=1 - 0.75 / h, wspace=0.04, hspace=0.3
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cam, title in zip(axes.flat, images, cams, titles, strict=False):
        ax.imshow(overlay(img, cam), interpolation="nearest")  # the stored pixels, not invented ones
        ax.set_title(title, fontsize=7)
    if len(images):
        cax = fig.add_axes((1 - 0.8 / w, 0.2, 0.15 / w, 0.6))
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), cax=cax, alpha=0.35)
        bar.set_label("Grad-CAM, one scale for the grid (1 = its largest value)", fontsize=7)
    fig.suptitle(suptitle, fontsize=10, y=1 - 0.2 / h)
    save_figure(fig, out_path)
    plt.close(fig)


def _auc(r: dict) -> str:
    return _fmt(
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
            f"images reach AUROC {_fmt(r['centre_only']['auroc'])}: the signal lies in the lungs"
        )
        rows.append(
            (f"outside the lungs ({arch})", f"{auc} {_auc(r['masked'])}", f">= {t}", r["flagged"], say)
        )
    r = probe["near_duplicates"]
    if "skipped" in r:
        rows.append(("near-duplicates", "-", "-", False, f"skipped: {r['skipped']}"))
    else:
        say = (
            f"{r['cross_split_pairs']} near-identical image pairs straddle the splits: test images "
            "have near-copies in training"
            if r["flagged"]
            else f"{r['pairs']} near-identical pairs, none across splits"
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
    r = probe["source"]
    if "skipped" in r:
        rows.append(("source confounding", "-", "-", False, f"skipped: {r['skipped']}"))
    else:
        say = (
            "the image source predicts the class: a model can score by recognising the hospital"
            if r["flagged"]
            else "the sources hold both classes in similar proportions"
        )
        rows.append(
            (
                "source confounding",
                f"Cramer's V {_fmt(r['cramers_v'])} over {r['sources']} sources",
                f">= {probe['flag_cramers_v']}",
                r["flagged"],
                say,
            )
        )
    return rows


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
        cells = [_pct(s["by_class"].get(c)) for c in classes]
        lines.append(f"| {n} | {s['images']} | {_pct(s['all'])} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""]) + "\n"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def _kv_table(rows: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def data_html(index: dict, split: dict) -> str:
    """The index report (images, skips by reason, duplicates, metadata) and the split counts."""
    skips = index.get("skipped_by_reason") or {}
    rows = [
        ("data root", index["root"]),
        ("images indexed", index["images"]),
        ("per class", ", ".join(f"{c} {n}" for c, n in index["per_class"].items())),
        (
            "skipped",
            f"{index['skipped']}"
            + (" (" + ", ".join(f"{r}: {n}" for r, n in skips.items()) + ")" if skips else ""),
        ),
        ("exact duplicate sets (images)", f"{index['duplicate_sets']} ({index['duplicate_images']})"),
        ("groups (kept on one side of the split)", index["groups"]),
        ("patient / source table", index.get("metadata", {}).get("found", "none")),
    ]
    counts = pd.DataFrame(split["counts"]).T
    counts.insert(0, "split", counts.index)
    counts["total"] = counts.drop(columns="split").sum(axis=1)
    near = split.get("near_duplicates", {})
    notes = (
        f"<p>Split seed {split['seed']}, fractions {split['fractions']}; groups shared by two splits: "
        f"{split['group_overlap']}; near-duplicate merging joined {near.get('groups_before', '-')} groups "
        f"into {near.get('groups_after', '-')}.</p>"
    )
    skipped = index.get("skipped_files") or []
    listed = (
        "<details><summary>skipped files</summary><pre>"
        + html.escape(
            "\n".join(
                f"{f.get('path')}: {f.get('reason')}" if isinstance(f, dict) else str(f)
                for f in skipped[:200]
            )
        )
        + "</pre></details>"
        if skipped
        else ""
    )
    return _kv_table(rows) + listed + counts.to_html(index=False, border=0) + notes


def environment_html(meta: dict, params, params_path) -> str:
    """Where the first run trained (device, precision), the library versions and the params."""
    import os
    import platform

    from cxr_transfer.core.versions import versions

    v = versions(
        (
            "torch",
            "torchvision",
            "timm",
            "numpy",
            "pandas",
            "scikit-learn",
            "dvc",
            "dvclive",
            "vl-convert-python",
        )
    )
    rows = [
        ("device (first run)", f"{meta.get('device')} ({meta.get('precision')})"),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"),
        *((k, val or "not installed") for k, val in v.items()),
    ]
    text = Path(params_path).read_text()
    return (
        _kv_table(rows) + f"<details><summary>params.yaml</summary><pre>{html.escape(text)}</pre></details>"
    )
