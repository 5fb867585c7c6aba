"""The optimizer and the learning-rate schedule of a mode: SGD, Adam or AdamW over param groups
with their rate multipliers, and per-step schedules (constant, cosine, step, with warmup; fastai's
one-cycle per phase)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import ModeConfig


def make_optimizer(params: Iterable, mode: ModeConfig) -> torch.optim.Optimizer:
    """The mode's optimizer over `params`: parameters (those that require grad), or param groups
    (dicts with "params" and an "lr_mult" on the mode's lr) that may hold still-frozen parameters:
    a parameter without a gradient is not stepped, weight decay included."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{"params": list(g["params"]), "lr": mode.lr * g.get("lr_mult", 1.0)} for g in params]
    else:
        groups = [{"params": [p for p in params if p.requires_grad], "lr": mode.lr}]
    # PyTorch's own default off the CPU; on it, the multi-tensor step runs the same per-tensor
    # arithmetic bit for bit with less Python per parameter (Adam over EfficientNet-Lite0's 149
    # tensors: 6.67 -> 5.95 ms a step, python -m bench --cases train-step)
    on_cpu = all(p.device.type == "cpu" for g in groups for p in g["params"])
    kw = {"foreach": True} if on_cpu else {}
    if mode.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=mode.lr, momentum=mode.momentum, weight_decay=mode.weight_decay, **kw
        )
    adam = {"betas": tuple(mode.betas), "eps": mode.eps, **kw}  # one_cycle then cycles beta1 per step
    if mode.optimizer == "adam":
        return torch.optim.Adam(groups, lr=mode.lr, weight_decay=mode.weight_decay, **adam)
    if mode.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=mode.lr, weight_decay=mode.weight_decay, **adam)
    raise CxrError(f"unknown optimizer {mode.optimizer!r}; choose one of ['adam', 'adamw', 'sgd']")


def lr_factor(step: int, total: int, warmup: int, schedule: str, step_every: int, gamma: float) -> float:
    """The multiplier on each group's rate at optimizer step `step` (0-based) of `total`: linear
    warmup to 1 over `warmup` steps, then constant, cosine to 0 at `total`, or x gamma every
    `step_every` steps."""
    if step < warmup:
        return (step + 1) / warmup
    t = step - warmup
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t / max(1, total - warmup)))
    if schedule == "step":
        return gamma ** (t // step_every)
    return 1.0


def _cos(start: float, end: float, pos: float) -> float:
    """fastai's SchedCos: from start (pos 0) to end (pos 1) along half a cosine."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


# fastai's fine_tune schedule: fit_one_cycle(freeze_epochs, base_lr, pct_start=0.99) on the frozen body,
# then fit_one_cycle(epochs, base_lr / 2, pct_start=0.3, div=5); div_final 1e5 and momentum
# 0.95 -> 0.85 -> 0.95 (fit_one_cycle's defaults) in both
ONE_CYCLE = {
    "frozen": (1.0, 0.99, 25.0),
    "unfrozen": (0.5, 0.3, 5.0),
    "div_final": 1e5,
    "moms": (0.95, 0.85, 0.95),
}


def one_cycle(step: int, steps_per_epoch: int, epochs: int, freeze_epochs: int) -> tuple[float, float]:
    """(factor on each group's rate, momentum) at optimizer step `step` (0-based) of fastai's
    fine_tune: one cycle over the frozen epochs, another over the rest (one cycle over all the
    epochs without frozen ones: fit_one_cycle's pct_start 0.25, div 25)."""
    cut = freeze_epochs * steps_per_epoch
    if freeze_epochs == 0:
        scale, pct, div, pos = 1.0, 0.25, 25.0, step / max(1, epochs * steps_per_epoch)
    elif step < cut:
        (scale, pct, div), pos = ONE_CYCLE["frozen"], step / cut
    else:
        (scale, pct, div), pos = (
            ONE_CYCLE["unfrozen"],
            (step - cut) / max(1, (epochs - freeze_epochs) * steps_per_epoch),
        )
    hi, lo, end = ONE_CYCLE["moms"]
    if pos < pct:
        p = pos / pct
        return scale * _cos(1 / div, 1.0, p), _cos(hi, lo, p)
    p = (pos - pct) / (1 - pct)
    return scale * _cos(1.0, 1 / ONE_CYCLE["div_final"], p), _cos(lo, end, p)


class OneCycle(torch.optim.lr_scheduler.LambdaLR):
    """fastai's one-cycle per phase: the rate through LambdaLR, the momentum (Adam's beta1, SGD's
    momentum) set with it at each step."""

    def __init__(self, optimizer, steps_per_epoch: int, epochs: int, freeze_epochs: int):
        self.plan = (steps_per_epoch, epochs, freeze_epochs)  # plain numbers: the state saves them
        super().__init__(optimizer, lambda s: one_cycle(s, *self.plan)[0])

    def step(self, epoch=None):
        super().step(epoch)
        mom = one_cycle(self.last_epoch, *self.plan)[1]
        for g in self.optimizer.param_groups:
            if "betas" in g:
                g["betas"] = (mom, g["betas"][1])
            elif "momentum" in g:
                g["momentum"] = mom


def make_scheduler(optimizer, mode: ModeConfig, epochs: int, steps_per_epoch: int):
    """A per-step LambdaLR for the mode's schedule (constant: a factor of 1, the seed's rate)."""
    if mode.schedule == "one_cycle":
        return OneCycle(optimizer, steps_per_epoch, epochs, mode.freeze_epochs)
    total, warmup = epochs * steps_per_epoch, mode.warmup_epochs * steps_per_epoch
    every = mode.step_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, mode.schedule, every, mode.gamma)
    )
