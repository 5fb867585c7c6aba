"""The training loop: the loss, per-epoch figures, early stopping on validation loss or AUROC,
phases (a frozen backbone first, then the rest), and resume from the last completed epoch after a
kill (checkpoints.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.parallel import bar_off
from cxr_transfer.runtime.batches import IGNORE, ArrayBatches
from cxr_transfer.runtime.engine import Precision
from cxr_transfer.runtime.speed import release_freed_memory
from cxr_transfer.train.checkpoints import Checkpoints, EpochLog, FitState, rng_state
from cxr_transfer.train.distributed import World

SELECT_WORDS = {"val_loss": "validation loss", "val_auroc": "validation AUROC"}


class TrainingError(CxrError):
    """Training cannot go on (a NaN loss, say); the message names the epoch and the setting."""


def balanced_class_weights(y, num_classes: int) -> torch.Tensor:
    """n / (K * n_k) for class k (scikit-learn's 'balanced'); a class with no image gets 0."""
    counts = torch.bincount(torch.as_tensor(y, dtype=torch.long), minlength=num_classes).double()
    w = len(y) / (num_classes * counts)
    return torch.where(counts > 0, w, torch.zeros_like(w)).float()


@dataclass(frozen=True)
class Objective:
    """The training loss: cross-entropy with optional class weights and label smoothing.
    Validation always uses the plain loss, so validation losses compare across recipes."""

    weight: torch.Tensor | None = None
    label_smoothing: float = 0.0

    def on(self, device: torch.device) -> Objective:
        """This objective with its class weights on `device` (moved once, not at every step)."""
        return self if self.weight is None else replace(self, weight=self.weight.to(device))

    def terms(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, its normaliser): the batch loss is their ratio, as in torch's 'mean'.
        Rows labelled IGNORE (a process's stand-in under torchrun) count in neither."""
        w = None if self.weight is None else self.weight.to(logits.device)
        loss = nn.functional.cross_entropy(
            logits.float(),
            y,
            weight=w,
            label_smoothing=self.label_smoothing,
            reduction="sum",
            ignore_index=IGNORE,
        )
        valid = y != IGNORE
        denom = valid.sum() if w is None else (w[y.clamp(min=0)] * valid).sum()
        return loss, denom.to(torch.float32)  # float32: loss / denom rounds as loss / len(y) did


@dataclass
class Loop:
    """What one epoch needs: the trained module, how to run a batch, and how to set modes."""

    trained: nn.Module
    forward: Callable[[torch.Tensor], torch.Tensor]
    set_train: Callable[[], None]
    set_eval: Callable[[], None]
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    infer: Callable[[torch.Tensor], torch.Tensor] | None = None  # validation's forward, if not `forward`


@dataclass
class Phase:
    """Epochs up to `last_epoch` (None: to the end) run `loop` over these batches; `enter` sets
    what is frozen when the phase starts (or a resumed run lands in it)."""

    loop: Loop
    train: ArrayBatches
    val: ArrayBatches
    last_epoch: int | None = None
    enter: Callable[[], object] = lambda: None
    wrap: Callable[[], Callable] | None = None  # several processes: the DDP-wrapped forward


def val_auroc(y: torch.Tensor, probs: torch.Tensor) -> float:
    """AUROC of the validation scores: two classes, P(second class) (the same figure for either
    class); more, scikit-learn's macro one-vs-rest. NaN when a class is missing from `y`."""
    from sklearn.metrics import roc_auc_score

    y, probs = y.cpu().numpy(), probs.float().cpu().numpy()
    k = probs.shape[1]
    if len(set(y.tolist())) < k or not np.isfinite(probs).all():
        return math.nan
    if k == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


@dataclass
class Steps:
    """How each optimizer step is taken: the optimizer, the precision and device it runs in, the
    training loss (None: plain cross-entropy), the learning-rate schedule (stepped after every
    optimizer step) and the loss scaler (None: the one `prec` needs, fp16's)."""

    optimizer: torch.optim.Optimizer
    prec: Precision
    device: torch.device
    objective: Objective | None = None
    scheduler: object = None
    scaler: torch.amp.GradScaler | None = None


@dataclass(frozen=True)
class Stopping:
    """Up to `epochs`, stopping after `patience` epochs without a better `select` figure (a lower
    validation loss, or a higher validation AUROC); the best epoch's weights are kept."""

    epochs: int
    patience: int
    select: str = "val_loss"


def _run_epoch(loop: Loop, batches, steps: Steps, desc: str, training: bool, processes: int = 1):
    """One pass over `batches` (training, or validation with `training` False): mean loss,
    accuracy, count, and (validation) the AUROC of the softmax scores.

    Loss and hits are summed on the device and read once at the end: a `.item()` per batch would
    make the host wait for the accelerator every step. The schedule steps after every optimizer
    step; the objective is the training loss (validation: plain cross-entropy).

    Under torchrun (`processes` > 1) each step's loss is divided by the whole global batch's
    normaliser (summed over the processes), times the processes that DistributedDataParallel's
    gradient average divides by: the objective of one process on the same global batch, whatever
    the share sizes or class weights. The returned figures are this process's share."""
    prec, device = steps.prec, steps.device
    obj = (steps.objective if steps.objective is not None and training else Objective()).on(device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    total_w = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    scores, labels = [], []
    (loop.set_train if training else loop.set_eval)()
    forward = loop.forward if training or loop.infer is None else loop.infer
    bar = tqdm(batches, desc=desc, leave=False, mininterval=1.0, disable=bar_off(len(batches)))
    for xb, yb in bar:
        if training and loop.augment is not None:
            xb = loop.augment(xb)
        with torch.set_grad_enabled(training), prec.autocast(device):
            logits = forward(xb)
            loss, denom = obj.terms(logits, yb)
        if training:
            _step(loss, denom, steps, processes)
        total_loss += loss.detach()
        total_w += denom
        correct += (logits.argmax(1) == yb).sum()  # a stand-in's IGNORE label never matches
        count += (yb != IGNORE).sum()
        if not training:
            scores.append(logits.detach().float().softmax(1))
            labels.append(yb)
    auc = val_auroc(torch.cat(labels), torch.cat(scores)) if scores else math.nan
    n = int(count)
    return float(total_loss / total_w), int(correct) / n, n, auc


def _step(loss: torch.Tensor, denom: torch.Tensor, steps: Steps, processes: int) -> None:
    """One optimizer step on the batch's loss (normalised over the global batch under torchrun)."""
    optimizer, scaler = steps.optimizer, steps.scaler
    optimizer.zero_grad(set_to_none=True)
    if processes > 1:
        whole = denom.detach().clone()
        dist.all_reduce(whole)  # the global batch's normaliser
        scaled = loss * processes / whole
    else:
        scaled = loss / denom
    if scaler is not None:
        scaler.scale(scaled).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        scaled.backward()
        optimizer.step()
    if steps.scheduler is not None:
        steps.scheduler.step()


def make_scaler(prec: Precision, device: torch.device):
    """A loss scaler where the precision needs one (fp16), else None."""
    return torch.amp.GradScaler(device.type) if prec.scaler else None


def _phase_at(phases: list[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.last_epoch is None or epoch <= p.last_epoch)


def fit(
    phases: list[Phase],
    steps: Steps,
    stopping: Stopping,
    ckpt: Checkpoints,
    on_epoch: Callable[[EpochLog], None] = lambda log: None,
    world: World | None = None,
) -> FitState:
    """Train phase by phase (one phase, or a frozen-backbone phase and then the rest) as
    `stopping` says; the best epoch's weights are kept. Resumes from `ckpt` when it holds a run of
    the same fingerprint. The last phase's module holds every trained weight: it is what the
    checkpoints keep. Under torchrun (`world` of several processes) only rank 0 writes
    checkpoints; every process reads them to resume."""
    world = world or World()
    if steps.scaler is None:
        steps = replace(steps, scaler=make_scaler(steps.prec, steps.device))
    optimizer, module = steps.optimizer, phases[-1].loop.trained
    state = ckpt.load(module, optimizer, steps.scaler, steps.scheduler, world.rank) or FitState()
    epochs, select = stopping.epochs, stopping.select
    if state.history and world.main:
        done = len(state.history)
        tqdm.write(
            f"resuming a killed run from epoch {done + 1} of {epochs} ({done} done; best so far epoch "
            f"{state.best_epoch} by {SELECT_WORDS[select]})"
        )
    for log in state.history:  # replay what a killed run already logged
        on_epoch(log)
    current = None
    for epoch in range(len(state.history) + 1, epochs + 1):
        if state.stopped_early:
            break
        phase = _phase_at(phases, epoch)
        if phase is not current:
            phase.enter()
            if phase.wrap is not None:  # DDP over what trains in this phase
                phase.loop.forward = phase.wrap()
            current = phase
        log, is_best = _epoch(phase, steps, epoch, stopping, state, world)
        rng = rng_state()
        if world.size > 1:  # every process's own random state (dropout draws differ by rank)
            every: list = [None] * world.size
            dist.all_gather_object(every, rng)
            rng = every
        if world.main:
            ckpt.save(module, optimizer, state, is_best, steps.scaler, steps.scheduler, rng)
        on_epoch(log)
        if world.main:
            tqdm.write(
                f"epoch {epoch:3d}  train loss {log.train_loss:.4f} acc {log.train_acc:.3f}  val loss "
                f"{log.val_loss:.4f} acc {log.val_acc:.3f} auroc {log.val_auroc:.3f}  lr {log.lr:.2g}  "
                f"{log.seconds:.1f}s {log.images_per_s:.0f} img/s{'  *best' if is_best else ''}"
            )
    if state.best_epoch == 0:
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingError(
            f"the {SELECT_WORDS[select]} was not finite in any of {len(state.history)} epochs (lr={lr}), so "
            "there is no best epoch to keep; lower the mode's lr or check the validation images"
            + (" (AUROC needs every class in the validation split)" if select == "val_auroc" else "")
        )
    return state


def _epoch(phase: Phase, steps: Steps, epoch: int, stopping: Stopping, state: FitState, world: World):
    """One epoch of training and validation, logged into `state`; (its log, whether it is the best)."""
    lr = steps.optimizer.param_groups[0]["lr"]  # the rate at the epoch's first step
    t0 = time.perf_counter()
    phase.train.set_epoch(epoch)
    tl, ta, n, _ = _run_epoch(
        phase.loop, phase.train, steps, f"epoch {epoch}/{stopping.epochs}", True, world.size
    )
    if not math.isfinite(tl):
        raise TrainingError(f"training loss is {tl} at epoch {epoch} with lr={lr}; lower the mode's lr")
    t_train = time.perf_counter() - t0
    vl, va, _, vauc = _run_epoch(phase.loop, phase.val, steps, "val", False)
    release_freed_memory()  # what the epoch's batches freed goes back to the system
    secs = time.perf_counter() - t0
    n *= world.size  # images/s of all processes (the loss and accuracy are this process's share)
    log = EpochLog(epoch, tl, ta, vl, va, lr, round(secs, 3), round(n / t_train, 2), vauc)
    state.history.append(log)
    score = -vl if stopping.select == "val_loss" else vauc
    is_best = score > state.best_score  # False for NaN: a NaN epoch is never the best
    if is_best:
        state.best_score, state.best_val_loss, state.best_epoch, state.bad_epochs = score, vl, epoch, 0
    else:
        state.bad_epochs += 1
    state.stopped_early = state.bad_epochs >= stopping.patience and epoch < stopping.epochs
    return log, is_best


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def summarize(state: FitState, feature_seconds: float, n_train: int, model: nn.Module) -> dict:
    """The training summary kept in the model's sidecar and DVCLive's metrics.json."""
    seconds = feature_seconds + sum(h.seconds for h in state.history)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "stopped_early": state.stopped_early,
        "best_val_loss": state.best_val_loss,
        "best_val_acc": state.history[state.best_epoch - 1].val_acc,
        "best_val_auroc": _finite(state.history[state.best_epoch - 1].val_auroc),
        "train_seconds": round(seconds, 2),
        "feature_seconds": round(feature_seconds, 2),
        "images_per_s": round(n_train * len(state.history) / max(seconds, 1e-9), 2),
        "trainable_params": trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
    }
