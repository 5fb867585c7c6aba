"""The training loop: per-epoch figures, early stopping on validation loss or AUROC, best and
last weights, and resume from the last completed epoch after a kill."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.parallel import bar_off
from cxr_transfer.core.params import ModeConfig
from cxr_transfer.train.batches import IGNORE, ArrayBatches
from cxr_transfer.train.engine import Precision
from cxr_transfer.train.speed import release_freed_memory

SELECT_WORDS = {"val_loss": "validation loss", "val_auroc": "validation AUROC"}


class TrainingError(CxrError):
    """Training cannot go on (a NaN loss, say); the message names the epoch and the setting."""


def make_optimizer(params: Iterable, mode: ModeConfig) -> torch.optim.Optimizer:
    """The mode's optimizer over `params`: parameters (those that require grad), or param groups
    (dicts with "params" and an "lr_mult" on the mode's lr) that may hold still-frozen parameters:
    a parameter without a gradient is not stepped, weight decay included."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [{"params": list(g["params"]), "lr": mode.lr * g.get("lr_mult", 1.0)} for g in params]
    else:
        groups = [{"params": [p for p in params if p.requires_grad], "lr": mode.lr}]
    if mode.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=mode.lr, momentum=mode.momentum, weight_decay=mode.weight_decay)
    # one_cycle is fastai's: its Adam's defaults too (the momentum then cycles per step)
    adam = {"betas": (0.95, 0.99), "eps": 1e-5} if mode.schedule == "one_cycle" else {}
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
class EpochLog:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float
    val_auroc: float = math.nan


@dataclass
class FitState:
    """Everything needed to continue a run: saved after every completed epoch."""

    history: list[EpochLog] = field(default_factory=list)
    best_val_loss: float = math.inf  # the validation loss at the best epoch
    best_score: float = -math.inf  # what `select` ranks by: -val_loss, or val_auroc
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False


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


def _run_epoch(
    loop: Loop,
    batches,
    optimizer,
    prec: Precision,
    device,
    scaler,
    desc: str,
    sched=None,
    obj=None,
    processes=1,
):
    """One pass over `batches` (training when `optimizer` is given): mean loss, accuracy, count,
    and (validation) the AUROC of the softmax scores.

    Loss and hits are summed on the device and read once at the end: a `.item()` per batch would
    make the host wait for the accelerator every step. `sched` steps after every optimizer step;
    `obj` is the training loss (validation: plain cross-entropy).

    Under torchrun (`processes` > 1) each step's loss is divided by the whole global batch's
    normaliser (summed over the processes), times the processes that DistributedDataParallel's
    gradient average divides by: the objective of one process on the same global batch, whatever
    the share sizes or class weights. The returned figures are this process's share."""
    obj = obj if obj is not None and optimizer is not None else Objective()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    total_w = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    scores, labels = [], []
    training = optimizer is not None
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
            if sched is not None:
                sched.step()
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


def _rng_state() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then one rename: a kill mid-write leaves the old file."""
    from cxr_transfer.core.cli import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class Checkpoints:
    """best.pt and last.pt in a run folder that survives a kill at any instant.

    last.pt is the one commit point: weights, optimizer, learning-rate scheduler, loss scaler, the
    CPU and CUDA random states, the fit state (epochs done, history, best) and the fingerprint, in
    one file replaced atomically. A kill before its rename resumes from the previous epoch with
    that epoch's weights (never an epoch counted twice); best.pt is written (atomically) before
    it, so a best epoch that is retrained rewrites the same weights. `fingerprint` ties the folder
    to one configuration (params, data and code): a different one starts afresh."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint

    def saved(self) -> dict | None:
        """The last checkpoint of this fingerprint, or None (none, another run's, unreadable)."""
        path = self.folder / "last.pt"
        if not path.exists():
            return None
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a checkpoint from an older layout or a damaged disk: start afresh
            print(f"train: {path} unreadable ({type(e).__name__}); starting afresh")
            return None
        return ck if isinstance(ck, dict) and ck.get("fingerprint") == self.fingerprint else None

    def load(
        self, module: nn.Module, optimizer, scaler=None, scheduler=None, rank: int = 0
    ) -> FitState | None:
        ck = self.saved()
        if ck is None:
            return None
        module.load_state_dict(ck["module"])
        optimizer.load_state_dict(ck["optimizer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if scheduler is not None and ck.get("scheduler"):
            scheduler.load_state_dict(ck["scheduler"])
        rng = ck["rng"]  # one process's, or a list of every process's (torchrun)
        _set_rng_state(rng[rank] if isinstance(rng, list) else rng)
        raw = ck["state"]
        return FitState(**{**raw, "history": [EpochLog(**h) for h in raw["history"]]})

    def save(
        self,
        module: nn.Module,
        optimizer,
        state: FitState,
        is_best: bool,
        scaler=None,
        scheduler=None,
        rng=None,
    ):
        self.folder.mkdir(parents=True, exist_ok=True)
        ck = {
            "module": module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "rng": _rng_state() if rng is None else rng,
            "fingerprint": self.fingerprint,
            "state": asdict(state),
        }
        if is_best:
            save_atomic(module.state_dict(), self.folder / "best.pt")
        save_atomic(ck, self.folder / "last.pt")

    def best(self) -> dict[str, torch.Tensor]:
        return torch.load(self.folder / "best.pt", map_location="cpu", weights_only=True)


def make_scaler(prec: Precision, device: torch.device):
    """A loss scaler where the precision needs one (fp16), else None."""
    return torch.amp.GradScaler(device.type) if prec.scaler else None


def _phase_at(phases: list[Phase], epoch: int) -> Phase:
    return next(p for p in phases if p.last_epoch is None or epoch <= p.last_epoch)


def fit(
    phases: list[Phase],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    patience: int,
    ckpt: Checkpoints,
    prec: Precision,
    device: torch.device,
    on_epoch: Callable[[EpochLog], None] = lambda log: None,
    scaler: torch.amp.GradScaler | None = None,
    scheduler=None,
    objective: Objective | None = None,
    main: bool = True,
    processes: int = 1,
    select: str = "val_loss",
) -> FitState:
    """Train for up to `epochs`, phase by phase (one phase, or a frozen-backbone phase and then the
    rest), stopping after `patience` epochs without a better `select` figure (a lower validation
    loss, or a higher validation AUROC); the best epoch's weights are kept. Resumes from `ckpt`
    when it holds a run of the same fingerprint. The last phase's module holds every trained
    weight: it is what the checkpoints keep.

    `scaler` defaults to the one `prec` needs; pass one to control it (tests do). Under torchrun
    only the `main` process (rank 0) writes checkpoints; every process reads them to resume."""
    scaler = scaler if scaler is not None else make_scaler(prec, device)
    module = phases[-1].loop.trained
    rank = dist.get_rank() if processes > 1 else 0
    state = ckpt.load(module, optimizer, scaler, scheduler, rank) or FitState()
    if state.history and main:
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
        lr = optimizer.param_groups[0]["lr"]  # the rate at the epoch's first step
        t0 = time.perf_counter()
        phase.train.set_epoch(epoch)
        tl, ta, n, _ = _run_epoch(
            phase.loop,
            phase.train,
            optimizer,
            prec,
            device,
            scaler,
            f"epoch {epoch}/{epochs}",
            scheduler,
            objective,
            processes,
        )
        if not math.isfinite(tl):
            raise TrainingError(f"training loss is {tl} at epoch {epoch} with lr={lr}; lower the mode's lr")
        t_train = time.perf_counter() - t0
        vl, va, _, vauc = _run_epoch(phase.loop, phase.val, None, prec, device, None, "val")
        release_freed_memory()  # what the epoch's batches freed goes back to the system
        secs = time.perf_counter() - t0
        n *= processes  # images/s of all processes (the loss and accuracy are this process's share)
        log = EpochLog(epoch, tl, ta, vl, va, lr, round(secs, 3), round(n / t_train, 2), vauc)
        state.history.append(log)
        score = -vl if select == "val_loss" else vauc
        is_best = score > state.best_score  # False for NaN: a NaN epoch is never the best
        if is_best:
            state.best_score, state.best_val_loss, state.best_epoch, state.bad_epochs = score, vl, epoch, 0
        else:
            state.bad_epochs += 1
        state.stopped_early = state.bad_epochs >= patience and epoch < epochs
        rng = _rng_state()
        if processes > 1:  # every process's own random state (dropout draws differ by rank)
            every: list = [None] * processes
            dist.all_gather_object(every, rng)
            rng = every
        if main:
            ckpt.save(module, optimizer, state, is_best, scaler, scheduler, rng)
        on_epoch(log)
        if not main:
            continue
        tqdm.write(
            f"epoch {epoch:3d}  train loss {tl:.4f} acc {ta:.3f}  val loss {vl:.4f} acc {va:.3f}"
            f" auroc {vauc:.3f}"
            f"  lr {lr:.2g}  {secs:.1f}s {n / t_train:.0f} img/s{'  *best' if is_best else ''}"
        )
    if state.best_epoch == 0:
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingError(
            f"the {SELECT_WORDS[select]} was not finite in any of {len(state.history)} epochs (lr={lr}), so "
            "there is no best epoch to keep; lower the mode's lr or check the validation images"
            + (" (AUROC needs every class in the validation split)" if select == "val_auroc" else "")
        )
    return state


def code_digest(prefixes: tuple[str, ...] = ("cxr_transfer", "stages")) -> str:
    """sha1 of the source of every loaded module under `prefixes`: the code a run was made by.

    Part of the resume fingerprint, so weights left by a killed run are never continued by
    changed code (DVC reruns the stage after a code change; resuming would mix the two)."""
    files = {}
    for name, mod in list(sys.modules.items()):
        # `python -m stages.train` runs the stage as __main__: its spec still says stages.train
        real = getattr(getattr(mod, "__spec__", None), "name", None) or name
        path = getattr(mod, "__file__", None)
        if path and real.split(".")[0] in prefixes and Path(path).exists():
            files[real] = Path(path)
    h = hashlib.sha1()
    for real in sorted(files):
        h.update(real.encode() + b"\0" + files[real].read_bytes())
    return h.hexdigest()


def fingerprint(config: dict, code: str) -> str:
    """The resume fingerprint: what was asked (params, data hashes) and the code that runs it."""
    return hashlib.sha1(json.dumps({"config": config, "code": code}, sort_keys=True).encode()).hexdigest()


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
