"""Stage report: every arch x mode compared over its seeds (table, statistics, plots, Grad-CAM grids)."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_transfer import report as R
from cxr_transfer.batches import Normalizer
from cxr_transfer.cli import run, write_json
from cxr_transfer.gradcam import gradcam, pick_examples, shared_scale
from cxr_transfer.models import equivalent_modes, get_spec, load_trained
from cxr_transfer.params import ModeConfig, load_params
from cxr_transfer.prepare import load_store
from cxr_transfer.seeds import aggregate, answer_lines, paired_over_seeds, run_name


def gradcam_grid(model_dir: Path, preds: pd.DataFrame, x_test, classes, positive, per_cell, seed, out: Path):
    """Two classes: maps toward the positive class, per (class, right/wrong) cell. More: maps
    toward each image's predicted class, titled with its true class."""
    model, meta = load_trained(model_dir)
    if len(classes) == 2:
        y = (preds["class"] == positive).to_numpy().astype(int)
        pred = (preds["probability"] >= 0.5).to_numpy().astype(int)
        labels, conf = (1, 0), preds["probability"].to_numpy()
    else:
        y = preds["label"].to_numpy()
        pred = preds["predicted"].map(classes.index).to_numpy()
        labels, conf = range(len(classes)), preds[[f"p_{c}" for c in classes]].max(axis=1).to_numpy()
    idx = [i for _, ids in pick_examples(y, pred, per_cell, seed, labels) for i in ids]
    if not idx:
        return
    xb = torch.as_tensor(np.asarray(x_test)[idx])[:, None]
    targets = classes.index(positive) if len(classes) == 2 else pred[idx]
    layer = model.get_submodule(get_spec(meta["arch"]).cam_layer)
    cams = shared_scale(gradcam(model, layer, Normalizer(meta["mean"], meta["std"])(xb), targets, each=False))
    right = ["right" if pred[i] == y[i] else "WRONG" for i in idx]
    if len(classes) == 2:
        titles = [f"{preds['class'].iloc[i]}\np={conf[i]:.2f} {r}" for i, r in zip(idx, right, strict=True)]
        toward = f"toward {positive}"
    else:
        titles = [
            f"{preds['class'].iloc[i]} -> {classes[pred[i]]}\np={conf[i]:.2f} {r}"
            for i, r in zip(idx, right, strict=True)
        ]
        toward = "toward the predicted class (true -> predicted)"
    R.plot_gradcam_grid(
        np.asarray(x_test)[idx], cams, titles, out, f"Grad-CAM {toward}: {meta['arch']}-{meta['mode']}"
    )


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
    args = ap.parse_args()
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
    if len(seeds) > 1:
        for pair in compare:
            a, b = (dict(zip(seeds, heads[n], strict=True)) for n in pair.split(" vs "))
            over[pair] = paired_over_seeds(a, b, ("accuracy", auroc_key), cfg.confidence)
            compare[pair]["over_seeds"] = over[pair]
    args.modes_metrics.mkdir(parents=True, exist_ok=True)
    for n, hs in heads.items():
        write_json(args.modes_metrics / f"{n}.json", aggregate(hs))
    table = R.summary_table(full, figures, auroc_key)
    table.to_csv(args.out_metrics / "summary.csv", index=False)
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
    answer = answer_lines(compare, over, len(seeds), R.flagged_probes(probe), auroc_key, unit)
    md = R.summary_markdown(table, compare, notes, probe, answer, figures, auroc_key, unit)
    (args.out_metrics / "summary.md").write_text(md)
    write_json(args.out_metrics / "compare.json", compare)
    write_plots(args, p, runs, first, preds, {n: ms[0] for n, ms in full.items()})
    print((args.out_metrics / "summary.md").read_text())


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
    curves.to_csv(args.plots / "curves.csv", index=False)
    R.plot_curves(curves.assign(model=curves["model"].str.replace(r"-s\d+$", "", regex=True)), args.plots)
    classes = list(p.data.classes)
    for kind in ("roc", "pr"):
        d = pd.concat([pd.read_csv(args.eval / r / f"{kind}.csv").assign(model=n) for n, r in first.items()])
        if len(classes) > 2:  # `dvc plots show` draws a line per model: here one per model and class
            d["model"] = d["model"] + ": " + d["class"] + " vs rest"
        d.to_csv(args.plots / f"{kind}.csv", index=False)
    pd.concat(
        [
            d[["class", "predicted"]].rename(columns={"class": "actual"}).assign(model=n)
            for n, d in preds.items()
        ]
    ).to_csv(args.plots / "confusion.csv", index=False)
    roc = pd.concat([pd.read_csv(args.eval / r / "roc.csv").assign(model=n) for n, r in first.items()])
    R.plot_roc(roc, metrics, args.plots)
    R.plot_confusions(metrics, classes, p.data.positive, args.plots)
    x_test, _ = load_store(args.prepared, "test")
    (args.plots / "gradcam").mkdir(exist_ok=True)
    for n, r in first.items():
        gradcam_grid(
            args.models / r,
            preds[n],
            x_test,
            classes,
            p.data.positive,
            p.report.gradcam_per_group,
            p.report.seed,
            args.plots / "gradcam" / f"{n}.png",
        )


if __name__ == "__main__":
    run(main, "report")
