"""Stage report: the comparison of every arch x mode (table, statistics, plots, Grad-CAM grids)."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_transfer import report as R
from cxr_transfer.batches import Normalizer
from cxr_transfer.cli import run, write_json
from cxr_transfer.gradcam import gradcam, pick_examples
from cxr_transfer.models import equivalent_modes, get_spec, load_trained
from cxr_transfer.params import ModeConfig, load_params
from cxr_transfer.prepare import load_store


def gradcam_grid(model_dir: Path, preds: pd.DataFrame, x_test, classes, positive, per_cell, seed, out: Path):
    model, meta = load_trained(model_dir)
    pos = classes.index(positive)
    y = (preds["class"] == positive).to_numpy().astype(int)
    pred = (preds["probability"] >= 0.5).to_numpy().astype(int)
    idx = [i for _, ids in pick_examples(y, pred, per_cell, seed) for i in ids]
    if not idx:
        return
    xb = torch.as_tensor(np.asarray(x_test)[idx])[:, None]
    cams = gradcam(
        model,
        model.get_submodule(get_spec(meta["arch"]).cam_layer),
        Normalizer(meta["mean"], meta["std"])(xb),
        pos,
    )
    titles = [
        f"{preds['class'].iloc[i]} p={preds['probability'].iloc[i]:.2f} "
        f"{'right' if pred[i] == y[i] else 'WRONG'}"
        for i in idx
    ]
    R.plot_gradcam_grid(
        np.asarray(x_test)[idx],
        cams,
        titles,
        out,
        f"Grad-CAM toward {positive}: {meta['arch']}-{meta['mode']}",
    )


def same_mode_notes(models: Path, archs, modes) -> list[str]:
    """A line for each mode that trains exactly what another shown mode trains on its arch."""
    notes = []
    for arch in archs:
        cfgs = {
            m: ModeConfig(**json.loads((models / f"{arch}-{m}" / "model.json").read_text())["mode_config"])
            for m in modes
        }
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
    ap.add_argument("--plots", type=Path, default=Path("plots"))
    ap.add_argument("--eval", type=Path, default=Path("eval"), help="evaluate stages' folders")
    ap.add_argument("--live", type=Path, default=Path("dvclive"), help="train stages' DVCLive folders")
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument(
        "--probe", type=Path, default=Path("metrics/probe.json"), help="the probe stage's figures"
    )
    args = ap.parse_args()
    p = load_params(args.params)
    names = [f"{a}-{m}" for a in p.archs for m in p.train.modes]
    metrics = {n: json.loads((args.eval / n / "metrics.json").read_text()) for n in names}
    preds = {n: pd.read_csv(args.eval / n / "predictions.csv") for n in names}
    cfg = p.evaluate
    compare = R.compare_modes(preds, p.data.positive, cfg.bootstrap, cfg.seed, cfg.confidence)
    table = R.summary_table(metrics)
    table.to_csv(args.out_metrics / "summary.csv", index=False)
    notes = same_mode_notes(args.models, p.archs, p.train.modes)
    probe = json.loads(args.probe.read_text())
    (args.out_metrics / "summary.md").write_text(R.summary_markdown(table, compare, notes, probe))
    write_json(args.out_metrics / "compare.json", compare)
    args.plots.mkdir(parents=True, exist_ok=True)
    curves = pd.concat([R.read_curves(args.live / n).assign(model=n) for n in names])
    curves.to_csv(args.plots / "curves.csv", index=False)
    for kind in ("roc", "pr"):
        pd.concat([pd.read_csv(args.eval / n / f"{kind}.csv").assign(model=n) for n in names]).to_csv(
            args.plots / f"{kind}.csv", index=False
        )
    pd.concat(
        [
            d[["class", "predicted"]].rename(columns={"class": "actual"}).assign(model=n)
            for n, d in preds.items()
        ]
    ).to_csv(args.plots / "confusion.csv", index=False)
    R.plot_curves(curves, args.plots)
    R.plot_roc(pd.read_csv(args.plots / "roc.csv"), metrics, args.plots)
    classes = list(p.data.classes)
    neg = next(c for c in classes if c != p.data.positive)
    R.plot_confusions(metrics, (neg, p.data.positive), args.plots)
    x_test, _ = load_store(args.prepared, "test")
    (args.plots / "gradcam").mkdir(exist_ok=True)
    for n in names:
        gradcam_grid(
            args.models / n,
            preds[n],
            x_test,
            classes,
            p.data.positive,
            p.report.gradcam_per_group,
            p.report.seed,
            args.plots / "gradcam" / f"{n}.png",
        )
    print((args.out_metrics / "summary.md").read_text())


if __name__ == "__main__":
    run(main, "report")
