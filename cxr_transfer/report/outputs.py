"""The report's files beyond the tables: plot data for `dvc plots show` and its PNGs, Grad-CAM
grids and lung shares, report/index.html and the offline template for `dvc plots show`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_transfer.audit.cams import Cams, lung_share
from cxr_transfer.audit.gradcam import pick_examples, shared_scale
from cxr_transfer.core.cli import write_csv, write_text
from cxr_transfer.data.prepare import load_store
from cxr_transfer.report import charts, sections, webpage
from cxr_transfer.runtime.card import ModelInfo


def write_gradcam(paths, p, first, preds) -> dict:
    """A Grad-CAM grid per arch x mode (first seed) and the share of its maps' mass on the lungs."""
    classes = list(p.data.classes)
    x_test, _ = load_store(paths.prepared, "test")
    (paths.plots / "gradcam").mkdir(exist_ok=True)
    shares = {}
    for n, r in first.items():
        pred = preds[n]  # k folds: the test store is fold 0's test part, scored by fold 0's model
        pred = pred[pred["fold"] == 0].reset_index(drop=True) if "fold" in pred else pred
        cams = Cams(paths.models / r, pred, classes, p.data.positive)
        if p.report.gradcam_share_images:
            shares[n] = lung_share(cams, x_test, p.report.gradcam_share_images, p.report.seed, p.probe.box)
        gradcam_grid(
            cams, x_test, p.report.gradcam_per_group, p.report.seed, paths.plots / "gradcam" / f"{n}.png"
        )
    return shares


def gradcam_grid(cams: Cams, x_test, per_cell: int, seed: int, out: Path) -> None:
    """A grid of Grad-CAM overlays on one colour scale, `per_cell` images per (true class,
    right/wrong) cell."""
    idx = [i for _, ids in pick_examples(cams.y, cams.pred, per_cell, seed, cams.labels) for i in ids]
    if not idx:
        return
    maps = shared_scale(cams.raw(x_test, idx))
    right = ["right" if cams.pred[i] == cams.y[i] else "WRONG" for i in idx]
    cls, classes = cams.preds["class"], cams.classes
    if len(classes) == 2:
        titles = [f"{cls.iloc[i]}\np={cams.conf[i]:.2f} {r}" for i, r in zip(idx, right, strict=True)]
        toward = f"toward {cams.positive}"
    else:
        titles = [
            f"{cls.iloc[i]} -> {classes[cams.pred[i]]}\np={cams.conf[i]:.2f} {r}"
            for i, r in zip(idx, right, strict=True)
        ]
        toward = "toward the predicted class (true -> predicted)"
    meta = cams.info
    charts.plot_gradcam_grid(
        np.asarray(x_test)[idx], maps, titles, out, f"Grad-CAM {toward}: {meta.arch}-{meta.mode}"
    )


def write_plots(paths, p, runs, first, preds, metrics) -> None:
    """curves.csv (every seed), ROC, PR and confusion data and PNGs (first seed), Grad-CAM grids."""
    paths.plots.mkdir(parents=True, exist_ok=True)
    many = len(p.train.seeds) > 1
    curves = pd.concat(
        [
            charts.read_curves(paths.live / r).assign(model=f"{n}-s{s}" if many else n, seed=s)
            for n, rs in runs.items()
            for r, s in zip(rs, p.train.seeds, strict=True)
        ]
    )
    write_csv(curves, paths.plots / "curves.csv")
    charts.plot_curves(
        curves.assign(model=curves["model"].str.replace(r"-s\d+$", "", regex=True)), paths.plots
    )
    classes = list(p.data.classes)
    for kind in ("roc", "pr"):
        d = pd.concat([pd.read_csv(paths.eval / r / f"{kind}.csv").assign(model=n) for n, r in first.items()])
        if len(classes) > 2:  # `dvc plots show` draws a line per model: here one per model and class
            d["model"] = d["model"] + ": " + d["class"] + " vs rest"
        write_csv(d, paths.plots / f"{kind}.csv")
    pd.concat(
        [
            d[["class", "predicted"]].rename(columns={"class": "actual"}).assign(model=n)
            for n, d in preds.items()
        ]
    ).to_csv(paths.plots / "confusion.csv", index=False)
    roc = pd.concat([pd.read_csv(paths.eval / r / "roc.csv").assign(model=n) for n, r in first.items()])
    charts.plot_roc(roc, metrics, paths.plots)
    charts.plot_confusions(metrics, classes, p.data.positive, paths.plots)
    return curves


def write_pages(paths, p, md: str, curves: pd.DataFrame, first: dict, shares: dict, bundle) -> None:
    """report/index.html (one self-contained page) and the offline template for `dvc plots show`."""
    bundle = bundle.get()
    paths.html.parent.mkdir(parents=True, exist_ok=True)
    write_text(paths.plots_template, webpage.dvc_plots_template(bundle))
    classes = list(p.data.classes)
    read = lambda name: pd.read_csv(paths.plots / name)  # noqa: E731
    specs = {
        **webpage.curve_specs(curves),
        **webpage.roc_pr_specs(read("roc.csv"), read("pr.csv")),
        "confusion": webpage.confusion_spec(read("confusion.csv"), classes),
    }
    grids = "".join(
        webpage.image(paths.plots / "gradcam" / f"{n}.png", f"Grad-CAM grid of {n}")
        for n in first
        if (paths.plots / "gradcam" / f"{n}.png").exists()
    )
    index = json.loads(paths.index_report.read_text())
    split = json.loads(paths.split_report.read_text())
    meta = ModelInfo.read(paths.models / next(iter(first.values())))
    results, _, rest = md.partition("\n## Where do the models look?")
    blocks = [
        ("", webpage.markdown(results.replace("# Results on the test split", "", 1))),
        (
            "Training curves",
            '<div class="charts">'
            + webpage.chart_slot("val_accuracy")
            + webpage.chart_slot("loss")
            + "</div>",
        ),
        (
            "ROC, precision-recall and confusion",
            '<div class="charts">'
            + webpage.chart_slot("roc")
            + webpage.chart_slot("pr")
            + "</div>"
            + webpage.chart_slot("confusion"),
        ),
        ("Where do the models look?", webpage.markdown(rest) + grids),
        ("The data", sections.data_html(index, split)),
        ("Environment", sections.environment_html(meta, p, paths.params)),
    ]
    size = meta.image_size
    subtitle = (
        f"{index['images']} images in {len(classes)} classes ({', '.join(classes)}), {size}x{size} px; "
        f"archs {', '.join(p.archs)}; modes {', '.join(p.train.modes)}; "
        f"seeds {', '.join(map(str, p.train.seeds))}"
    )
    write_text(
        paths.html, webpage.page("cxr-transfer: results on the test split", subtitle, blocks, specs, bundle)
    )
