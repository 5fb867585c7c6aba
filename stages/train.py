"""Stage train@<arch>-<mode>-<seed>: train one architecture one way from one seed (with k folds,
one model per fold); write weights, sidecar and DVCLive logs."""

import argparse
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from cxr_transfer.core.cli import run, write_json
from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import load_params
from cxr_transfer.data.prepare import load_folds, load_meta, load_store
from cxr_transfer.train.engine import Precision, pick_device, store_budget
from cxr_transfer.train.loop import (
    SELECT_WORDS,
    Checkpoints,
    Objective,
    balanced_class_weights,
    code_digest,
    distributed,
    fingerprint,
    fit,
    make_optimizer,
    make_scheduler,
    save_atomic,
    summarize,
)
from cxr_transfer.train.models import build_model, get_spec
from cxr_transfer.train.modes import setup_run
from cxr_transfer.train.speed import keep_freed_memory
from dvclive import Live

TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "patience",
    "device",
    "precision",
    "memory_budget",
    "sync_batchnorm",
    "compile",
    "augment",
    "select",
    "deterministic",
)
LIVE_NAMES = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "val_auroc": "val/auroc",
    "lr": "lr",
    "seconds": "seconds",
    "images_per_s": "images_per_s",
}


def log_epoch(live: Live, log) -> None:
    live.step = log.epoch
    for field, name in LIVE_NAMES.items():
        if math.isfinite(v := getattr(log, field)):  # AUROC is undefined when val lacks a class
            live.log_metric(name, v)
    live.make_summary()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--arch", required=True)
    ap.add_argument("--mode", required=True)
    ap.add_argument(
        "--seed", type=int, required=True, help="one of train.seeds: initialisation and batch order"
    )
    ap.add_argument(
        "--prepared", type=Path, required=True, help="prepare's folder (train/ and val/ are read)"
    )
    ap.add_argument("--out", type=Path, required=True, help="model folder")
    ap.add_argument("--live", type=Path, required=True, help="DVCLive folder")
    ap.add_argument("--resume-dir", type=Path, default=Path(".resume"))
    args = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.train.speed)
    p = load_params(args.params)
    if args.mode not in p.modes:
        raise CxrError(f"unknown mode {args.mode!r}; modes in params.yaml: {sorted(p.modes)}")
    mode, tc = p.modes[args.mode], p.train
    if mode.freeze_epochs >= tc.epochs:
        raise CxrError(
            f"modes.{args.mode}.freeze_epochs ({mode.freeze_epochs}) leaves no epoch of train.epochs "
            f"({tc.epochs}) to train the unfrozen network; lower it or raise train.epochs"
        )
    if tc.deterministic:  # before any CUDA work: cuBLAS reads this when it starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    metas = {s: load_meta(args.prepared, s) for s in ("train", "val")}
    folds = load_folds(args.prepared)
    if folds is None:
        data = {s: load_store(args.prepared, s) for s in ("train", "val")}
        train_one(p, args, data, metas, args.out, args.live, args.resume_dir / args.out.name)
        return
    x, y = load_store(args.prepared, "folds")
    pool = load_meta(args.prepared, "folds")
    for i, fold in enumerate(folds["folds"]):  # fold 0 at the top of the run folder, fold i in fold<i>/
        data = {s: (x[fold[s]], y[fold[s]]) for s in ("train", "val")}
        out, live = (args.out, args.live) if i == 0 else (args.out / f"fold{i}", args.live / f"fold{i}")
        cv = {"fold": i, "k": folds["k"], "data": pool["sha1"]}
        train_one(p, args, data, metas, out, live, args.resume_dir / args.out.name / f"f{i}", cv)
    shutil.rmtree(args.resume_dir / args.out.name, ignore_errors=True)


def train_one(p, args, data, metas, out: Path, live_dir: Path, resume: Path, cv: dict | None = None) -> None:
    """One training run (one fold's, with `cv`): seeded from args.seed, resumable from `resume`,
    writing best.pt, last.pt and model.json to `out` and DVCLive's logs to `live_dir`."""
    mode, tc, spec = p.modes[args.mode], p.train, get_spec(args.arch)
    # exactly the keys this stage reads (dvc.yaml declares them; a test traces the reads)
    train_cfg = {k: getattr(tc, k) for k in TRAIN_KEYS} | {"seed": args.seed}
    torch.manual_seed(args.seed)  # the one place global RNG state is seeded (dropout draws from it)
    classes = metas["train"]["classes"]
    world, ranked = distributed.start(tc.device)  # torchrun: this process's rank and device
    device = ranked or pick_device(tc.device)
    if world.size > 1 and tc.sync_batchnorm and device.type != "cuda":
        raise CxrError("train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on GPUs); set it false")
    prec = Precision.for_device(device, tc.precision)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    weights_dir = p.weights.dir if mode.pretrained and p.weights.source == "imagenet" else None
    model = build_model(args.arch, weights_dir, len(classes), args.seed)
    rs = setup_run(
        model,
        spec,
        mode.trainable,
        data,
        tc.batch_size,
        args.seed,
        tc.augment,
        device,
        prec,
        tc.compile,
        mode.freeze_epochs,
        mode.sampler == "balanced",
        mode.backbone_lr_mult,
        store_budget(device, tc.memory_budget),
        world,
        tc.sync_batchnorm,
    )
    opt = make_optimizer(rs.groups, mode)
    sched = make_scheduler(opt, mode, tc.epochs, len(rs.train))
    weight = (
        balanced_class_weights(data["train"][1], len(classes)) if mode.class_weight == "balanced" else None
    )
    objective = Objective(weight, mode.label_smoothing)
    config = {
        "arch": args.arch,
        "mode": asdict(mode),
        "train": train_cfg,
        "weights": {"source": p.weights.source, "dir": p.weights.dir},
        "data": {s: m["sha1"] for s, m in metas.items()} if cv is None else cv,
    }
    ckpt = Checkpoints(resume, fingerprint(config, code_digest()))
    how = "features computed once" if rs.cached_features else "full model per epoch"
    if len(rs.phases) > 1:
        first = "epoch 1" if mode.freeze_epochs == 1 else f"epochs 1-{mode.freeze_epochs}"
        how = f"{first} on the frozen backbone ({how}), then the full model"
    fmt = "channels_last" if rs.channels_last else "NCHW"
    store = "images streamed from disk" if rs.streamed else "images in memory"
    procs = f", {world.size} processes (torchrun, global batch {tc.batch_size})" if world.size > 1 else ""

    def train(on_epoch=lambda log: None):
        return fit(
            rs.phases,
            opt,
            tc.epochs,
            tc.patience,
            ckpt,
            prec,
            device,
            on_epoch=on_epoch,
            scheduler=sched,
            objective=objective,
            main=world.main,
            processes=world.size,
            select=tc.select,
        )

    if not world.main:  # every other rank trains its share and leaves the writing to rank 0
        train()
        distributed.stop(world)
        return
    name = args.out.name + (f" fold {cv['fold']} of {cv['k']}" if cv else "")
    print(f"train {name} (seed {args.seed}): {device}{procs}, {prec.dtype or 'fp32'}, {fmt}, {store}, {how}")
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        state = train(lambda log: log_epoch(live, log))
        distributed.stop(world)
        summary = summarize(state, rs.feature_seconds, len(data["train"][1]), model)
        live.summary.update(summary)
    out.mkdir(parents=True, exist_ok=True)
    save_atomic(model.cpu().state_dict(), out / "last.pt")
    rs.loop.trained.load_state_dict(ckpt.best())
    save_atomic(model.state_dict(), out / "best.pt")
    write_json(
        out / "model.json",
        {
            "arch": args.arch,
            "mode": args.mode,
            "seed": args.seed,
            "classes": classes,
            "image_size": metas["train"]["image_size"],
            "bits_stored": metas["train"].get("bits_stored"),
            "training_images": metas["train"].get("source_images"),
            "data_sha1": config["data"],  # the train and val stores' content hashes
            "mean": list(spec.mean),
            "std": list(spec.std),
            "mode_config": asdict(mode),
            "train": train_cfg,
            "weights": config["weights"],
            "device": str(device),
            "precision": str(prec.dtype or "float32"),
            "memory_format": "channels_last" if rs.channels_last else "nchw",
            "processes": world.size,
            "store": "streamed" if rs.streamed else "in memory",
            "cached_features": rs.cached_features,
            **({"fold": cv["fold"], "folds": cv["k"]} if cv else {}),
            **summary,
        },
    )
    if cv is None:  # k folds: every fold's state stays until the last fold is done (a kill resumes there)
        shutil.rmtree(ckpt.folder, ignore_errors=True)
    print(
        f"train {name}: best epoch {state.best_epoch} of {summary['epochs_run']} "
        f"by {SELECT_WORDS[tc.select]} "
        f"(val loss {summary['best_val_loss']:.4f}, val acc {summary['best_val_acc']:.3f}), "
        f"{summary['train_seconds']:.1f}s -> {out}"
    )


if __name__ == "__main__":
    run(main, "train")
