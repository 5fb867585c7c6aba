"""Stage train@<arch>-<mode>: train one architecture one way; write weights, sidecar and DVCLive logs."""

import argparse
import hashlib
import json
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
from cxr_transfer.prepare import load_store
from cxr_transfer.train import Checkpoints, fit, make_optimizer, summarize
from dvclive import Live

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
    ap.add_argument("--prepared", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="model folder")
    ap.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    ap.add_argument("--resume-dir", type=Path, default=Path(".resume"))
    args = ap.parse_args()
    p = load_params(args.params)
    if args.mode not in p.modes:
        raise CxrError(f"unknown mode {args.mode!r}; modes in params.yaml: {sorted(p.modes)}")
    mode, tc, spec = p.modes[args.mode], p.train, get_spec(args.arch)
    torch.manual_seed(tc.seed)  # the one place global RNG state is seeded (dropout draws from it)
    meta = json.loads((args.prepared / "meta.json").read_text())
    data = {s: load_store(args.prepared, s) for s in ("train", "val")}
    device = pick_device(tc.device)
    prec = Precision.for_device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = build_model(args.arch, mode.pretrained, p.weights.source, len(meta["classes"]), tc.seed)
    rs = setup_run(
        model, spec, mode.trainable, data, tc.batch_size, tc.seed, tc.augment, device, prec, tc.compile
    )
    opt = make_optimizer(rs.loop.trained.parameters(), mode)
    config = {
        "arch": args.arch,
        "mode": asdict(mode),
        "train": asdict(tc),
        "weights": p.weights.source,
        "data": {s: m["sha1"] for s, m in meta["splits"].items()},
    }
    ckpt = Checkpoints(
        args.resume_dir / f"{args.arch}-{args.mode}",
        hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest(),
    )
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
            "classes": meta["classes"],
            "image_size": meta["image_size"],
            "mean": list(spec.mean),
            "std": list(spec.std),
            "mode_config": asdict(mode),
            "train": asdict(tc),
            "weights": p.weights.source,
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
