"""Set a run up: turn a mode (what trains, from which start) into training phases and their batches.

`head` and `classifier` training without augmentation runs a tail module of the network on the
frozen backbone's features, computed once; everything else runs the full model each epoch. With
`freeze_epochs` the run has two phases: the new last layer on the frozen backbone first (on cached
features where it can), then everything the mode trains."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import AcquisitionConfig, ModeConfig, TrainConfig
from cxr_transfer.core.registry import ArchSpec
from cxr_transfer.runtime import speed
from cxr_transfer.runtime.batches import ArrayBatches, Normalizer, acquisition_shift, augment_batch
from cxr_transfer.runtime.engine import Pass, Precision, for_inference, image_forward, tail_inputs
from cxr_transfer.runtime.models import freeze_except, get_module, set_train_mode, trainable_path
from cxr_transfer.runtime.onnxrt import onnx_forward, started
from cxr_transfer.runtime.speed import channels_last, inference_batch
from cxr_transfer.train.distributed import World, block, gather_rows, wrap
from cxr_transfer.train.loop import Loop, Phase


@dataclass
class RunSetup:
    phases: list[Phase]
    cached_features: bool  # the first phase runs on cached features
    channels_last: bool  # the memory format the full model trains in
    streamed: bool  # the image stores are read from disk batch by batch
    feature_seconds: float = 0.0
    groups: list[dict] = field(default_factory=list)  # optimizer param groups (lr_mult per group)

    @property
    def loop(self) -> Loop:  # the last phase: its module holds every weight that trains
        return self.phases[-1].loop

    @property
    def train(self) -> ArrayBatches:
        return self.phases[-1].train

    @property
    def val(self) -> ArrayBatches:
        return self.phases[-1].val


def image_batches(
    x, y, batch_size: int, device, shuffle=False, seed=0, balanced=False, budget=None, shard=None
):
    """Batches of (B,1,S,S) uint8 images from an (N,S,S) store (streamed when over `budget` bytes;
    this process's share of each batch with `shard`)."""
    x = np.asarray(x)[:, None]
    return ArrayBatches(x, y, batch_size, shuffle, seed, device, balanced, budget, shard=shard)


def param_groups(
    model: nn.Module, spec: ArchSpec, trainable: str, backbone_lr_mult: float, lr_slice: float = 1.0
) -> list[dict]:
    """The new last layer at the mode's rate, the rest of what the mode trains at lr x mult; with
    `lr_slice` (fastai's slice(lr / lr_slice, lr)) the rest is two layer groups in network order,
    halves by parameter count, at lr / lr_slice and lr / sqrt(lr_slice): the rates of fastai's
    three groups (even_mults)."""
    path = trainable_path(spec, trainable)
    target = get_module(model, path) if path else model
    head = list(get_module(model, spec.last_layer).parameters())
    ids = {id(p) for p in head}
    rest = [p for p in target.parameters() if id(p) not in ids]
    groups = [{"params": head, "lr_mult": 1.0}]
    if not rest:
        return groups
    if lr_slice == 1.0:
        return groups + [{"params": rest, "lr_mult": backbone_lr_mult}]
    sizes = np.cumsum([p.numel() for p in rest])
    cut = int(np.searchsorted(sizes, sizes[-1] / 2)) + 1
    low, mid = rest[:cut], rest[cut:]
    return (
        groups
        + [{"params": low, "lr_mult": 1 / lr_slice}]
        + ([{"params": mid, "lr_mult": lr_slice**-0.5}] if mid else [])
    )


@dataclass(frozen=True)
class RunContext:
    """Where and how one run executes, decided by the job from the machine and the rules (not read
    from params.yaml): device and precision, the seed, the bytes of image store that may sit on the
    device (None: no limit), the torchrun world and whether to torch.compile the model."""

    device: torch.device
    prec: Precision
    seed: int = 0
    budget: float | None = None
    world: World | None = None
    compile_model: bool = False


def setup_run(
    model: nn.Module,
    spec: ArchSpec,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    mode: ModeConfig,
    train: TrainConfig,
    ctx: RunContext,
) -> RunSetup:
    """Move the model to the device and build the phases of `mode` (what trains, frozen first for
    `freeze_epochs`, BatchNorm while frozen with `train_bn`, the sampler, the layer groups' rates)
    under `train` (batch size, augmentation, SyncBatchNorm, epochs): what is frozen, the loop and
    the batches.

    The train and validation stores go onto the device whole when together they fit the budget
    (None: always), and are streamed from their memory maps otherwise. Under torchrun (a world of
    several processes) each process trains on its share of every global batch through
    DistributedDataParallel, computes the frozen features of its block of images and gathers the
    rest, and validates on the whole validation split (so all agree on the best epoch)."""
    device, prec, seed, budget = ctx.device, ctx.prec, ctx.seed, ctx.budget
    batch_size, augment, epochs = train.batch_size, train.augment, train.epochs
    augmented = augment or mode.acquisition.active  # images change every step: no feature cache
    balanced = mode.sampler == "balanced"
    world = ctx.world or World()
    for split in ("train", "val"):
        if len(data[split][1]) == 0:
            raise CxrError(f"the {split} split is empty; check the split stage's output")
    model.to(device)
    norm = Normalizer(spec.mean, spec.std, reuse=device.type == "cpu").to(device)
    runner = torch.compile(model) if ctx.compile_model else model
    train_cl = channels_last(spec.name, device.type, training=True)
    forward = image_forward(runner, norm, train_cl)
    size = data["train"][0].shape[-1]
    infer_batch = inference_batch(device.type, size, batch_size)
    streamed = budget is not None and sum(np.asarray(data[s][0]).nbytes for s in ("train", "val")) > budget
    each = 0 if streamed else None  # the budget of each store
    t0 = time.perf_counter()
    trainable, freeze = mode.trainable, mode.freeze_epochs
    plan = [("head", freeze), (trainable, None)] if freeze else [(trainable, None)]
    phases, cached = [], []
    for part, last in plan:
        path = trainable_path(spec, part)
        bn = mode.train_bn and last is not None  # the frozen phase of a mode whose BatchNorm trains there
        trained = freeze_except(model, path, bn)
        if trained is not model and not augmented and not bn:
            # the feature pass: inference, in its own runtime, memory format and batch
            n_images = sum(len(data[s][1]) for s in ("train", "val")) // world.size
            plan = Pass(n_images, size, exact=prec.dtype is None)
            fwd = for_inference(
                model, spec.name, spec.mean, spec.std, device, norm, runner, upto=trained, plan=plan
            )
            feats = {}
            for split in ("train", "val"):
                x, y = data[split]
                rows = block(world, len(y))
                none = rows.start == rows.stop  # fewer images than processes: one, for the shape
                rows = slice(0, 1) if none else rows
                xb = image_batches(x[rows], y[rows], infer_batch, device, budget=each)
                mine = tail_inputs(model, fwd, xb, prec, device).to(device)
                feats[split] = gather_rows(mine[:0] if none else mine, world, len(y))
            loop = Loop(trained, trained, trained.train, trained.eval)
            ddp = (lambda t=trained: wrap(t, device, train.sync_batchnorm)) if world.size > 1 else None
            tr = ArrayBatches(
                feats["train"], data["train"][1], batch_size, True, seed, device, balanced, shard=world.shard
            )
            va = ArrayBatches(feats["val"], data["val"][1], batch_size, False, seed, device)
            cached.append(True)
        else:
            tr = image_batches(*data["train"], batch_size, device, True, seed, balanced, each, world.shard)
            va = image_batches(*data["val"], batch_size, device, budget=each)
            aug = _augmenter(tr, seed, augment, mode.acquisition) if augmented else None
            loop = Loop(
                trained, forward, lambda t=trained, b=bn: set_train_mode(model, t, b), model.eval, aug
            )
            loop.infer = _validation_forward(model, spec, device, prec, world, size, len(va.y), epochs)
            ddp = (
                (lambda: image_forward(wrap(runner, device, train.sync_batchnorm), norm, train_cl))
                if world.size > 1
                else None
            )
            cached.append(False)
        phases.append(Phase(loop, tr, va, last, lambda p=path, b=bn: freeze_except(model, p, b), ddp))
    seconds = time.perf_counter() - t0 if any(cached) else 0.0
    _memory_format(model, train_cl)  # what the full-model phases run in
    groups = param_groups(model, spec, trainable, mode.backbone_lr_mult, mode.lr_slice)
    return RunSetup(phases, cached[0], train_cl, streamed, seconds, groups)


def _validation_forward(model, spec: ArchSpec, device, prec, world: World, size: int, n: int, epochs: int):
    """ONNX Runtime for each epoch's validation where it repays its export and a session per
    epoch (one CPU process, float32); None: the training forward in eval mode."""
    if device.type != "cpu" or prec.dtype is not None or world.size > 1:
        return None
    if not speed.onnx_pays(spec.name, size, n * epochs, sessions=epochs, first=not started()):
        return None
    return onnx_forward(model, spec.mean, spec.std, size)


def _memory_format(model: nn.Module, cl: bool) -> None:
    """Convert the weights in place (the Parameter objects stay, so optimizers keep them)."""
    model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)


ACQUISITION_STREAM = 500_009  # the acquisition draws' generator is another stream than augment's


def _augmenter(tr: ArrayBatches, seed: int, geometric: bool, acq: AcquisitionConfig):
    """train.augment's shifts, zooms and jitter, then the mode's acquisition changes: each from
    its own generator per epoch, seeded by (seed, epoch), so a resumed run draws what an
    uninterrupted one drew and turning one on leaves the other's draws as they were."""
    gens: dict[tuple[str, int], torch.Generator] = {}

    def gen(kind: str) -> torch.Generator:
        if (kind, tr.epoch) not in gens:
            offset = ACQUISITION_STREAM if kind == "acquisition" else 0
            gens[kind, tr.epoch] = torch.Generator().manual_seed(seed * 7919 + tr.epoch + offset)
        return gens[kind, tr.epoch]

    def augment_fn(xb):
        if geometric:
            xb = augment_batch(xb, gen("augment"), rows=tr.current)
        if acq.active:
            xb = acquisition_shift(xb, gen("acquisition"), acq, rows=tr.current)
        return xb

    return augment_fn
