"""The static charts for readers without DVC: training curves, ROC, confusion matrices and
Grad-CAM grids as PNGs (the same data `dvc plots show` and the report page draw)."""

from __future__ import annotations

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
from cxr_transfer.report.summary import fmt  # noqa: E402

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
            ax.plot(g["fpr"], g["tpr"], label=f"{name} (AUROC {fmt(auc)})")
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
