"""One train stage's work: a run (or k folds of it) trained from one seed, resumable after a kill,
logged to DVCLive, and written as best.pt, last.pt and model.json."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from cxr_transfer.core.cli import write_csv
from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import Params
from cxr_transfer.data.prepare import load_folds, load_meta, load_store
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.engine import Precision, pick_device, store_budget
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.runtime.speed import compile_pays
from cxr_transfer.train import distributed
from cxr_transfer.train.checkpoints import Checkpoints, code_digest, fingerprint, save_atomic
from cxr_transfer.train.loop import (
    SELECT_WORDS,
    Objective,
    Steps,
    Stopping,
    balanced_class_weights,
    fit,
    summarize,
)
from cxr_transfer.train.optim import make_optimizer, make_scheduler
from cxr_transfer.train.phases import RunContext, setup_run
from dvclive import Live


@dataclass(frozen=True)
class TrainJob:
    """What one train stage was asked: the run and where its inputs and outputs are."""

    arch: str
    mode: str
    seed: int  # one of train.seeds: initialisation and batch order
    prepared: Path  # prepare's folder (train/ and val/, or folds/, are read)
    out: Path  # the model folder
    live: Path  # the DVCLive folder
    resume_dir: Path = Path(".resume")
    curves: Path | None = None  # one CSV of every epoch's figures, rewritten after each epoch


CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr")


class Curves:
    """A run's per-epoch figures in one CSV, rewritten (atomically) after every epoch: dvc.yaml's
    top-level plot `live` draws each run from it in `dvc plots show` while later runs still train.
    A resumed run replays its logged epochs first, so the file holds every epoch once."""

    def __init__(self, path: Path | None):
        self.path, self.rows = path, []

    def __call__(self, log) -> None:
        if self.path is not None:
            self.rows.append({c: getattr(log, c) for c in CURVE_COLUMNS})
            write_csv(pd.DataFrame(self.rows), self.path)


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


def run_training(p: Params, job: TrainJob) -> None:
    """Train `job` under params `p`: one model, or one per fold (fold 0 at the top of the run
    folder, fold i in fold<i>/) when prepare wrote k folds."""
    if job.mode not in p.modes:
        raise CxrError(f"unknown mode {job.mode!r}; modes in params.yaml: {sorted(p.modes)}")
    mode, tc = p.modes[job.mode], p.train
    if mode.freeze_epochs >= tc.epochs:
        raise CxrError(
            f"modes.{job.mode}.freeze_epochs ({mode.freeze_epochs}) leaves no epoch of train.epochs "
            f"({tc.epochs}) to train the unfrozen network; lower it or raise train.epochs"
        )
    if tc.deterministic:  # before any CUDA work: cuBLAS reads this when it starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # CUDA has no deterministic backward for some layers (VGG's adaptive average pooling):
        # there PyTorch warns, naming the layer, instead of stopping the run
        cuda = tc.device != "cpu" and torch.cuda.is_available()
        torch.use_deterministic_algorithms(True, warn_only=cuda)
    metas = {s: load_meta(job.prepared, s) for s in ("train", "val")}
    folds = load_folds(job.prepared)
    if folds is None:
        data = {s: load_store(job.prepared, s) for s in ("train", "val")}
        train_one(p, job, data, metas, job.out, job.live, job.resume_dir / job.out.name)
        distributed.exit_if_worker()
        return
    x, y = load_store(job.prepared, "folds")
    pool = load_meta(job.prepared, "folds")
    for i, fold in enumerate(folds["folds"]):  # fold 0 at the top of the run folder, fold i in fold<i>/
        data = {s: (x[fold[s]], y[fold[s]]) for s in ("train", "val")}
        # fold 0 logs to the run's DVCLive folder (git-tracked, as with one split); the other folds
        # log beside their weights (DVC-cached), so a k-fold experiment adds no untracked folders
        out = job.out if i == 0 else job.out / f"fold{i}"
        live = job.live if i == 0 else out / "dvclive"
        cv = {"fold": i, "k": folds["k"], "data": pool["sha1"]}
        train_one(p, job, data, metas, out, live, job.resume_dir / job.out.name / f"f{i}", cv)
    shutil.rmtree(job.resume_dir / job.out.name, ignore_errors=True)
    distributed.exit_if_worker()


def use_compile(setting: str | bool, arch: str, device, data, epochs: int, mode=None) -> bool:
    """train.compile: true or false as given; auto where its compile time is repaid by the faster
    steps of the planned run's full-model epochs (those x training images; speed.compile_pays).
    A mode that never trains every layer (fe, ft_classifier: one frozen feature pass, then the
    head) has none, and ft_gradual's frozen epochs do not count."""
    if setting != "auto":
        return bool(setting)
    if mode is not None:
        epochs = epochs - mode.freeze_epochs if mode.trainable == "all" else 0
    x = data["train"][0]
    return epochs > 0 and compile_pays(arch, device.type, x.shape[-1], epochs * len(x))


def train_one(
    p: Params, job: TrainJob, data, metas, out: Path, live_dir: Path, resume: Path, cv: dict | None = None
) -> None:
    """One training run (one fold's, with `cv`): seeded from job.seed, resumable from `resume`,
    writing best.pt, last.pt and model.json to `out` and DVCLive's logs to `live_dir`."""
    mode, tc, spec = p.modes[job.mode], p.train, get_spec(job.arch)
    # exactly the keys this stage reads (dvc.yaml declares them; a test traces the reads)
    train_cfg = {k: getattr(tc, k) for k in TRAIN_KEYS} | {"seed": job.seed}
    torch.manual_seed(job.seed)  # the one place global RNG state is seeded (dropout draws from it)
    classes = metas["train"]["classes"]
    world, ranked = distributed.start(tc.device)  # torchrun: this process's rank and device
    device = ranked or pick_device(tc.device)
    if world.size > 1 and tc.sync_batchnorm and device.type != "cuda":
        raise CxrError("train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on GPUs); set it false")
    prec = Precision.for_device(device, tc.precision)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    weights_dir = p.weights.dir if mode.pretrained and p.weights.source == "imagenet" else None
    model = build_model(job.arch, weights_dir, len(classes), job.seed)
    compile_model = use_compile(tc.compile, job.arch, device, data, tc.epochs, mode)
    budget = store_budget(device, tc.memory_budget)
    rs = setup_run(
        model, spec, data, mode, tc, RunContext(device, prec, job.seed, budget, world, compile_model)
    )
    opt = make_optimizer(rs.groups, mode)
    sched = make_scheduler(opt, mode, tc.epochs, len(rs.train))
    weight = (
        balanced_class_weights(data["train"][1], len(classes)) if mode.class_weight == "balanced" else None
    )
    steps = Steps(opt, prec, device, Objective(weight, mode.label_smoothing), sched)
    config = {
        "arch": job.arch,
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
        return fit(rs.phases, steps, Stopping(tc.epochs, tc.patience, tc.select), ckpt, on_epoch, world)

    if not world.main:  # every other rank trains its share and leaves the writing to rank 0
        train()
        distributed.stop(world)
        return
    name = job.out.name + (f" fold {cv['fold']} of {cv['k']}" if cv else "")
    print(f"train {name} (seed {job.seed}): {device}{procs}, {prec.dtype or 'fp32'}, {fmt}, {store}, {how}")
    with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        curves = Curves(job.curves if not cv or cv["fold"] == 0 else None)  # k folds: fold 0's
        state = train(lambda log: (log_epoch(live, log), curves(log)))
        distributed.stop(world)
        summary = summarize(state, rs.feature_seconds, len(data["train"][1]), model)
        live.summary.update(summary)
    out.mkdir(parents=True, exist_ok=True)
    save_atomic(model.cpu().state_dict(), out / "last.pt")
    rs.loop.trained.load_state_dict(ckpt.best())
    save_atomic(model.state_dict(), out / "best.pt")
    ModelInfo(
        arch=job.arch,
        mode=job.mode,
        seed=job.seed,
        classes=classes,
        image_size=metas["train"]["image_size"],
        bits_stored=metas["train"].get("bits_stored"),
        preprocess=metas["train"].get("preprocess"),
        training_images=metas["train"].get("source_images"),
        data_sha1=config["data"],
        mean=list(spec.mean),
        std=list(spec.std),
        mode_config=asdict(mode),
        train=train_cfg,
        weights=config["weights"],
        device=str(device),
        precision=str(prec.dtype or "float32"),
        memory_format="channels_last" if rs.channels_last else "nchw",
        processes=world.size,
        store="streamed" if rs.streamed else "in memory",
        cached_features=rs.cached_features,
        fold=cv["fold"] if cv else None,
        folds=cv["k"] if cv else None,
        summary=summary,
    ).write(out)
    if cv is None:  # k folds: every fold's state stays until the last fold is done (a kill resumes there)
        shutil.rmtree(ckpt.folder, ignore_errors=True)
    print(
        f"train {name}: best epoch {state.best_epoch} of {summary['epochs_run']} "
        f"by {SELECT_WORDS[tc.select]} "
        f"(val loss {summary['best_val_loss']:.4f}, val acc {summary['best_val_acc']:.3f}), "
        f"{summary['train_seconds']:.1f}s -> {out}"
    )
