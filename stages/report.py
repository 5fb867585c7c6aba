"""Stage report: every arch x mode compared over its seeds (table, statistics, plots, Grad-CAM grids)."""

from cxr_transfer.report.webpage import Bundle

BUNDLE = Bundle() if __name__ == "__main__" else None  # built on the other core while torch imports

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_transfer.audit.gradcam import gradcam, mass_inside, pick_examples, shared_scale
from cxr_transfer.core.cli import run, write_csv, write_json, write_text
from cxr_transfer.core.params import ModeConfig, load_params
from cxr_transfer.data.prepare import load_store
from cxr_transfer.evaluate import crossval
from cxr_transfer.evaluate import external as EXT
from cxr_transfer.evaluate.seeds import aggregate, answer_lines, paired_over_seeds, run_name
from cxr_transfer.report import summary as R
from cxr_transfer.report import webpage as W
from cxr_transfer.train.batches import Normalizer
from cxr_transfer.train.models import equivalent_modes, get_spec, load_trained
from cxr_transfer.train.speed import keep_freed_memory


class Cams:
    """A trained run's model ready for Grad-CAM on stored test images, with each image's true
    and predicted label: two classes, maps toward the positive class; more, toward each image's
    predicted class."""

    def __init__(self, model_dir: Path, preds: pd.DataFrame, classes: list[str], positive: str):
        self.model, self.meta = load_trained(model_dir)
        self.layer = self.model.get_submodule(get_spec(self.meta["arch"]).cam_layer)
        self.norm = Normalizer(self.meta["mean"], self.meta["std"])
        self.classes, self.positive, self.preds = classes, positive, preds
        if len(classes) == 2:
            self.y = (preds["class"] == positive).to_numpy().astype(int)
            self.pred = (preds["probability"] >= 0.5).to_numpy().astype(int)
            self.labels, self.conf = (1, 0), preds["probability"].to_numpy()
        else:
            self.y = preds["label"].to_numpy()
            self.pred = preds["predicted"].map(classes.index).to_numpy()
            self.labels = range(len(classes))
            self.conf = preds[[f"p_{c}" for c in classes]].max(axis=1).to_numpy()

        self._maps: dict[int, np.ndarray] = {}

    def raw(self, x_test, idx) -> np.ndarray:
        """Raw (unscaled) maps of the test images `idx`, in batches; each image's map is computed
        once (the grid reuses the lung share's)."""
        todo = [int(i) for i in idx if int(i) not in self._maps]
        for i in range(0, len(todo), 32):
            part = todo[i : i + 32]
            xb = torch.as_tensor(np.asarray(x_test)[part])[:, None]
            targets = self.classes.index(self.positive) if len(self.classes) == 2 else self.pred[part]
            maps = gradcam(self.model, self.layer, self.norm(xb), targets, each=False)
            self._maps.update(zip(part, maps, strict=True))
        return np.stack([self._maps[int(i)] for i in idx]) if len(idx) else np.zeros((0, 1, 1))


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
    meta = cams.meta
    R.plot_gradcam_grid(
        np.asarray(x_test)[idx], maps, titles, out, f"Grad-CAM {toward}: {meta['arch']}-{meta['mode']}"
    )


def lung_share(cams: Cams, x_test, n: int, seed: int, box: float) -> dict:
    """The share of Grad-CAM mass on the lung box (the probes' central box), averaged over a
    seeded sample of at most `n` test images, overall and per true class."""
    rng = np.random.default_rng(seed)
    total = len(cams.preds)
    idx = np.sort(rng.choice(total, size=min(n, total), replace=False))
    share = mass_inside(cams.raw(x_test, idx), box)
    cls = cams.preds["class"].to_numpy()[idx]
    mean = lambda v: None if np.isnan(v).all() else round(float(np.nanmean(v)), 4)  # noqa: E731
    return {
        "images": len(idx),
        "all": mean(share),
        "by_class": {c: mean(share[cls == c]) for c in cams.classes if (cls == c).any()},
        "empty_maps": int(np.isnan(share).sum()),
        "uniform_map": round(box**2, 4),
    }


def same_mode_notes(models: Path, runs: dict[str, str]) -> list[str]:
    """A line for each mode that trains exactly what another shown mode trains on its arch."""
    notes = []
    by_arch: dict[str, dict[str, ModeConfig]] = {}
    for name, run_dir in runs.items():
        arch, _, mode = name.rpartition("-")
        cfg = json.loads((models / run_dir / "model.json").read_text())["mode_config"]
        by_arch.setdefault(arch, {})[mode] = ModeConfig(**cfg)
    for arch, cfgs in by_arch.items():
        for m, other in equivalent_modes(get_spec(arch), cfgs).items():
            notes.append(
                f"{arch}-{m} trains exactly what {arch}-{other} trains (on {arch} the classifier block "
                "is the last layer): the two rows are one result, not two."
            )
    return notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--out-metrics", type=Path, default=Path("metrics"))
    ap.add_argument(
        "--modes-metrics",
        type=Path,
        default=Path("metrics/modes"),
        help="headline per arch-mode (over seeds)",
    )
    ap.add_argument("--plots", type=Path, default=Path("plots"))
    ap.add_argument("--eval", type=Path, default=Path("eval"), help="evaluate stages' folders")
    ap.add_argument("--live", type=Path, default=Path("dvclive"), help="train stages' DVCLive folders")
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument(
        "--probe", type=Path, default=Path("metrics/probe.json"), help="the probe stage's figures"
    )
    ap.add_argument("--index-report", type=Path, default=Path("metrics/index_report.json"))
    ap.add_argument("--split-report", type=Path, default=Path("metrics/split.json"))
    ap.add_argument("--html", type=Path, default=Path("report/index.html"), help="the offline report page")
    ap.add_argument(
        "--plots-template",
        type=Path,
        default=Path("report/dvc_plots_template.html"),
        help="offline HTML template for `dvc plots show` (.dvc/config plots.html_template)",
    )
    args = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.train.speed)
    p = load_params(args.params)
    seeds, cfg = p.train.seeds, p.evaluate
    classes = list(p.data.classes)
    figures, auroc_key = R.figures_for(len(classes))
    runs = {f"{a}-{m}": [run_name(a, m, s) for s in seeds] for a in p.archs for m in p.train.modes}
    first = {n: rs[0] for n, rs in runs.items()}  # plots, curves and Grad-CAM show the first seed's run
    full = {
        n: [json.loads((args.eval / r / "metrics.json").read_text()) for r in rs] for n, rs in runs.items()
    }
    heads = {
        n: [json.loads((args.eval / r / "headline.json").read_text()) for r in rs] for n, rs in runs.items()
    }
    preds = {n: pd.read_csv(args.eval / r / "predictions.csv") for n, r in first.items()}
    compare = R.compare_modes(preds, p.data.positive, cfg.bootstrap, cfg.seed, cfg.confidence, classes)
    over = {}
    folds = full[next(iter(full))][0].get("folds")  # k-fold runs: the per-fold figures of each
    if folds:
        for pair in compare:
            a, b = (crossval.by_run(seeds, full[n]) for n in pair.split(" vs "))
            over[pair] = crossval.paired_over_folds(a, b, ("accuracy", auroc_key), cfg.confidence)
            compare[pair]["over_folds"] = over[pair]
    elif len(seeds) > 1:
        for pair in compare:
            a, b = (dict(zip(seeds, heads[n], strict=True)) for n in pair.split(" vs "))
            over[pair] = paired_over_seeds(a, b, ("accuracy", auroc_key), cfg.confidence)
            compare[pair]["over_seeds"] = over[pair]
    args.modes_metrics.mkdir(parents=True, exist_ok=True)
    for n, hs in heads.items():
        write_json(args.modes_metrics / f"{n}.json", aggregate(hs))
    table = R.summary_table(full, figures, auroc_key)
    write_csv(table, args.out_metrics / "summary.csv")
    notes = same_mode_notes(args.models, first)
    current = {r for rs in runs.values() for r in rs}
    stale = R.stale_runs({"eval": args.eval, "dvclive": args.live}, current)
    if stale:
        notes.append(
            f"{', '.join(stale)}: left by an earlier run that params.yaml no longer asks for (archs, "
            "train.modes or train.seeds); not part of these results (delete them: git rm -r)."
        )
    probe = json.loads(args.probe.read_text())
    unit = R.resampling_unit(next(iter(preds.values()))["group"])
    k = folds["k"] if folds else None
    answer = answer_lines(compare, over, len(seeds), R.flagged_probes(probe), auroc_key, unit, k)
    sites, shortcut = external_results(args, p, first, preds, probe)
    if sites:
        answer += ["**On images from another site:**", "", *EXT.answer_lines(sites)]
    curves = write_plots(args, p, runs, first, preds, {n: ms[0] for n, ms in full.items()})
    shares = write_gradcam(args, p, first, preds)
    md = R.summary_markdown(table, compare, notes, probe, answer, figures, auroc_key, unit)
    if folds:
        head, sep, tail = md.partition("## Mode against mode (same test images")
        md = head + "\n".join(crossval.markdown(full, auroc_key)) + "\n" + sep + ", pooled out of fold" + tail
        md = md.replace(
            "# Results on the test split", f"# Results out of fold ({folds['k']}-fold cross-validation)", 1
        )
    if sites:
        head, sep, tail = md.partition("## Mode against mode")
        md = head + "\n".join(EXT.markdown(sites, unit)) + "\n" + sep + tail
        head, sep, tail = md.partition("## The results")
        lead = "**At the external sites** (do the shortcut baselines carry over?):"
        md = head + "\n".join([lead, "", *shortcut, "", ""]) + sep + tail
    md += R.gradcam_share_lines(shares, p.probe.box, classes, p.data.positive)
    write_text(args.out_metrics / "summary.md", md)
    write_json(args.out_metrics / "compare.json", compare)
    write_json(args.out_metrics / "gradcam_share.json", shares)
    write_json(args.out_metrics / "external.json", {"sites": sites, "shortcut_baselines": shortcut})
    write_pages(args, p, md, curves, first, shares)
    print(md)


def external_results(args, p, first: dict, preds: dict, probe: dict) -> tuple[list[dict], list[str]]:
    """Each external set against the internal test set (the first seed's runs): figures, drops,
    rankings, and whether the probes' baselines and the best internal CNN carry over."""
    sites, lines = [], []
    classes, cfg = list(p.data.classes), p.evaluate
    best = max(first, key=lambda n: (preds[n]["predicted"] == preds[n]["class"]).mean())  # internal winner
    for e in p.external:
        folder = args.eval / "external" / e.name
        ext = {n: pd.read_csv(folder / r / "predictions.csv") for n, r in first.items()}
        site = EXT.compare_sites(
            e.name,
            len(next(iter(ext.values()))),
            preds,
            ext,
            classes,
            p.data.positive,
            (cfg.bootstrap, cfg.seed, cfg.confidence),
        )
        sites.append(site)
        base = json.loads((folder / "baselines.json").read_text())
        r = site["runs"][best]
        lines.append(
            EXT.shortcut_line(e.name, probe, base, best, r["internal"]["auroc"], r["external"]["auroc"])
        )
    return sites, lines


def write_plots(args, p, runs, first, preds, metrics) -> None:
    """curves.csv (every seed), ROC, PR and confusion data and PNGs (first seed), Grad-CAM grids."""
    args.plots.mkdir(parents=True, exist_ok=True)
    many = len(p.train.seeds) > 1
    curves = pd.concat(
        [
            R.read_curves(args.live / r).assign(model=f"{n}-s{s}" if many else n, seed=s)
            for n, rs in runs.items()
            for r, s in zip(rs, p.train.seeds, strict=True)
        ]
    )
    write_csv(curves, args.plots / "curves.csv")
    R.plot_curves(curves.assign(model=curves["model"].str.replace(r"-s\d+$", "", regex=True)), args.plots)
    classes = list(p.data.classes)
    for kind in ("roc", "pr"):
        d = pd.concat([pd.read_csv(args.eval / r / f"{kind}.csv").assign(model=n) for n, r in first.items()])
        if len(classes) > 2:  # `dvc plots show` draws a line per model: here one per model and class
            d["model"] = d["model"] + ": " + d["class"] + " vs rest"
        write_csv(d, args.plots / f"{kind}.csv")
    pd.concat(
        [
            d[["class", "predicted"]].rename(columns={"class": "actual"}).assign(model=n)
            for n, d in preds.items()
        ]
    ).to_csv(args.plots / "confusion.csv", index=False)
    roc = pd.concat([pd.read_csv(args.eval / r / "roc.csv").assign(model=n) for n, r in first.items()])
    R.plot_roc(roc, metrics, args.plots)
    R.plot_confusions(metrics, classes, p.data.positive, args.plots)
    return curves


def write_gradcam(args, p, first, preds) -> dict:
    """A Grad-CAM grid per arch x mode (first seed) and the share of its maps' mass on the lungs."""
    classes = list(p.data.classes)
    x_test, _ = load_store(args.prepared, "test")
    (args.plots / "gradcam").mkdir(exist_ok=True)
    shares = {}
    for n, r in first.items():
        pred = preds[n]  # k folds: the test store is fold 0's test part, scored by fold 0's model
        pred = pred[pred["fold"] == 0].reset_index(drop=True) if "fold" in pred else pred
        cams = Cams(args.models / r, pred, classes, p.data.positive)
        if p.report.gradcam_share_images:
            shares[n] = lung_share(cams, x_test, p.report.gradcam_share_images, p.report.seed, p.probe.box)
        gradcam_grid(
            cams, x_test, p.report.gradcam_per_group, p.report.seed, args.plots / "gradcam" / f"{n}.png"
        )
    return shares


def write_pages(args, p, md: str, curves: pd.DataFrame, first: dict, shares: dict) -> None:
    """report/index.html (one self-contained page) and the offline template for `dvc plots show`."""
    bundle = (BUNDLE or Bundle()).get()
    args.html.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.plots_template, W.dvc_plots_template(bundle))
    classes = list(p.data.classes)
    read = lambda name: pd.read_csv(args.plots / name)  # noqa: E731
    charts = {
        **W.curve_specs(curves),
        **W.roc_pr_specs(read("roc.csv"), read("pr.csv")),
        "confusion": W.confusion_spec(read("confusion.csv"), classes),
    }
    grids = "".join(
        W.image(args.plots / "gradcam" / f"{n}.png", f"Grad-CAM grid of {n}")
        for n in first
        if (args.plots / "gradcam" / f"{n}.png").exists()
    )
    index = json.loads(args.index_report.read_text())
    split = json.loads(args.split_report.read_text())
    meta = json.loads((args.models / next(iter(first.values())) / "model.json").read_text())
    results, _, rest = md.partition("\n## Where do the models look?")
    sections = [
        ("", W.markdown(results.replace("# Results on the test split", "", 1))),
        (
            "Training curves",
            '<div class="charts">' + W.chart_slot("val_accuracy") + W.chart_slot("loss") + "</div>",
        ),
        (
            "ROC, precision-recall and confusion",
            '<div class="charts">'
            + W.chart_slot("roc")
            + W.chart_slot("pr")
            + "</div>"
            + W.chart_slot("confusion"),
        ),
        ("Where do the models look?", W.markdown(rest) + grids),
        ("The data", R.data_html(index, split)),
        ("Environment", R.environment_html(meta, p, args.params)),
    ]
    size = meta["image_size"]
    subtitle = (
        f"{index['images']} images in {len(classes)} classes ({', '.join(classes)}), {size}x{size} px; "
        f"archs {', '.join(p.archs)}; modes {', '.join(p.train.modes)}; "
        f"seeds {', '.join(map(str, p.train.seeds))}"
    )
    write_text(
        args.html, W.page("cxr-transfer: results on the test split", subtitle, sections, charts, bundle)
    )


if __name__ == "__main__":
    run(main, "report")
