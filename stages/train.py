"""Stage train@<arch>-<mode>: train one architecture one way; write weights, sidecar and DVCLive logs."""

import argparse
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from cxr_transfer.cli import run, write_json
from cxr_transfer.engine import Precision, pick_device
from cxr_transfer.errors import CxrError
from cxr_transfer.models import build_model, get_spec
from cxr_transfer.modes import setup_run
from cxr_transfer.params import load_params
from cxr_transfer.prepare import load_meta, load_store
from cxr_transfer.train import Checkpoints, code_digest, fingerprint, fit, make_optimizer, summarize
from dvclive import Live

TRAIN_KEYS = ("epochs", "batch_size", "patience", "seed", "device", "compile", "augment")
LIVE_NAMES = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "lr": "lr",
    "seconds": "seconds",
    "images_per_s": "images_per_s",
}


def log_epoch(live: Live, log) -> None:
    live.step = log.epoch
    for field, name in LIVE_NAMES.items():
        live.log_metric(name, getattr(log, field))
    live.make_summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument(
        "--prepared", type=Path, required=True, help="prepare's folder (train/ and val/ are read)"
    )
    ap.add_argument("--out", type=Path, required=True, help="model folder")
    ap.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    ap.add_argument("--resume-dir", type=Path, default=Path(".resume"))
    args = ap.parse_args()
    p = load_params(args.params)
    if args.mode not in p.modes:
        raise CxrError(f"unknown mode {args.mode!r}; modes in params.yaml: {sorted(p.modes)}")
    mode, tc, spec = p.modes[args.mode], p.train, get_spec(args.arch)
    # exactly the keys this stage reads (dvc.yaml declares them; a test traces the reads)
    train_cfg = {k: getattr(tc, k) for k in TRAIN_KEYS}
    torch.manual_seed(tc.seed)  # the one place global RNG state is seeded (dropout draws from it)
    metas = {s: load_meta(args.prepared, s) for s in ("train", "val")}
    data = {s: load_store(args.prepared, s) for s in ("train", "val")}
    classes = metas["train"]["classes"]
    device = pick_device(tc.device)
    prec = Precision.for_device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    weights_dir = p.weights.dir if mode.pretrained and p.weights.source == "imagenet" else None
    model = build_model(args.arch, weights_dir, len(classes), tc.seed)
    rs = setup_run(
        model, spec, mode.trainable, data, tc.batch_size, tc.seed, tc.augment, device, prec, tc.compile
    )
    opt = make_optimizer(rs.loop.trained.parameters(), mode)
    config = {
        "arch": args.arch,
        "mode": asdict(mode),
        "train": train_cfg,
        "weights": {"source": p.weights.source, "dir": p.weights.dir},
        "data": {s: m["sha1"] for s, m in metas.items()},
    }
    ckpt = Checkpoints(args.resume_dir / f"{args.arch}-{args.mode}", fingerprint(config, code_digest()))
    how = "features computed once" if rs.cached_features else "full model per epoch"
    print(f"train {args.arch}-{args.mode}: {device}, {prec.dtype or 'fp32'}, {how}")
    with Live(str(args.live), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        state = fit(
            rs.loop,
            rs.train,
            rs.val,
            opt,
            tc.epochs,
            tc.patience,
            ckpt,
            prec,
            device,
            on_epoch=lambda log: log_epoch(live, log),
        )
        summary = summarize(state, rs.feature_seconds, len(data["train"][1]), model)
        live.summary.update(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.cpu().state_dict(), args.out / "last.pt")
    rs.loop.trained.load_state_dict(ckpt.best())
    torch.save(model.state_dict(), args.out / "best.pt")
    write_json(
        args.out / "model.json",
        {
            "arch": args.arch,
            "mode": args.mode,
            "classes": classes,
            "image_size": metas["train"]["image_size"],
            "mean": list(spec.mean),
            "std": list(spec.std),
            "mode_config": asdict(mode),
            "train": train_cfg,
            "weights": config["weights"],
            "device": str(device),
            "precision": str(prec.dtype or "float32"),
            "cached_features": rs.cached_features,
            **summary,
        },
    )
    shutil.rmtree(ckpt.folder, ignore_errors=True)
    print(
        f"train {args.arch}-{args.mode}: best epoch {state.best_epoch} "
        f"(val acc {summary['best_val_acc']:.3f}), {summary['train_seconds']:.1f}s -> {args.out}"
    )


if __name__ == "__main__":
    run(main, "train")
