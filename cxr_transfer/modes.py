"""Turn a mode (what trains, from which start) into a training loop and its batches.

`head` and `classifier` modes without augmentation train a tail module of the network on the
frozen backbone's features, computed once; everything else runs the full model each epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxr_transfer.batches import ArrayBatches, Normalizer, augment_batch
from cxr_transfer.engine import Precision, image_forward, tail_inputs
from cxr_transfer.errors import CxrError
from cxr_transfer.models import freeze_except, set_train_mode, trainable_path
from cxr_transfer.registry import ArchSpec
from cxr_transfer.train import Loop


@dataclass
class RunSetup:
    loop: Loop
    train: ArrayBatches
    val: ArrayBatches
    cached_features: bool
    feature_seconds: float = 0.0


def image_batches(x: np.ndarray, y: np.ndarray, batch_size: int, device, shuffle=False, seed=0):
    """Batches of (B,1,S,S) uint8 images from an (N,S,S) store."""
    return ArrayBatches(np.asarray(x)[:, None], y, batch_size, shuffle=shuffle, seed=seed, device=device)


def setup_run(
    model: nn.Module,
    spec: ArchSpec,
    trainable: str,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    seed: int,
    augment: bool,
    device: torch.device,
    prec: Precision,
    compile_model: bool = False,
) -> RunSetup:
    """Freeze the model for `trainable`, move it to `device`, and build the loop and batches."""
    for split in ("train", "val"):
        if len(data[split][1]) == 0:
            raise CxrError(f"the {split} split is empty; check the split stage's output")
    channels_last = device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    norm = Normalizer(spec.mean, spec.std, reuse=device.type == "cpu").to(device)
    trained = freeze_except(model, trainable_path(spec, trainable))
    runner = torch.compile(model) if compile_model else model
    forward = image_forward(runner, norm, channels_last)
    if trained is not model and not augment:
        t0 = time.perf_counter()
        feats = {}
        for split in ("train", "val"):
            xb = image_batches(*data[split], max(batch_size, 64), device)
            feats[split] = tail_inputs(model, trained, forward, xb, prec, device).to(device)
        loop = Loop(trained, trained, trained.train, trained.eval)
        tr = ArrayBatches(feats["train"], data["train"][1], batch_size, True, seed, device)
        va = ArrayBatches(feats["val"], data["val"][1], batch_size, False, seed, device)
        return RunSetup(loop, tr, va, True, time.perf_counter() - t0)
    tr = image_batches(*data["train"], batch_size, device, shuffle=True, seed=seed)
    va = image_batches(*data["val"], batch_size, device)
    gens: dict[int, torch.Generator] = {}

    def augment_fn(xb):  # one generator per epoch, seeded by (seed, epoch): a resumed run matches
        if tr.epoch not in gens:
            gens[tr.epoch] = torch.Generator().manual_seed(seed * 7919 + tr.epoch)
        return augment_batch(xb, gens[tr.epoch])

    loop = Loop(
        trained,
        forward,
        lambda: set_train_mode(model, trained),
        model.eval,
        augment_fn if augment else None,
    )
    return RunSetup(loop, tr, va, False)
