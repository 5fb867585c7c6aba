"""Checkpoints that survive a kill at any instant (best.pt, last.pt written atomically, with every
random state), and the fingerprint that ties a run folder to one configuration, data and code."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn


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


def rng_state() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
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
        set_rng_state(rng[rank] if isinstance(rng, list) else rng)
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
            "rng": rng_state() if rng is None else rng,
            "fingerprint": self.fingerprint,
            "state": asdict(state),
        }
        if is_best:
            save_atomic(module.state_dict(), self.folder / "best.pt")
        save_atomic(ck, self.folder / "last.pt")

    def best(self) -> dict[str, torch.Tensor]:
        return torch.load(self.folder / "best.pt", map_location="cpu", weights_only=True)


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
