"""Device, precision and the per-batch work shared by training and evaluation."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import PRECISIONS
from cxr_transfer.runtime import speed
from cxr_transfer.runtime.batches import ArrayBatches, Normalizer


def pick_device(pref: str = "auto", key: str = "train.device") -> torch.device:
    """cuda, then mps, then cpu for 'auto'; an explicit choice that is absent fails with one line
    naming `key` (the param or the option that asked for it)."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if pref == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    if not has.get(pref, False):
        raise CxrError(f"{key} is {pref} but no {pref} device is available here; use auto or cpu")
    return torch.device(pref)


def store_budget(device: torch.device, setting: float | str = "auto") -> float | None:
    """Bytes of prepared image store that may be loaded whole onto `device` (train.memory_budget);
    larger stores are streamed from their memory-mapped files. A number is GiB; `auto` is half of
    the device's free memory now (CUDA: the GPU's; otherwise the machine's available RAM), shared
    by the processes torchrun started on this machine that use it (LOCAL_WORLD_SIZE: each CPU
    process a share of the RAM; one process per GPU has its GPU). Either way the batches are the
    same: this decides speed and memory, never results."""
    if setting != "auto":
        return float(setting) * 2**30
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2
    here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 / here
    except (ValueError, OSError, AttributeError):  # not on this OS: no limit, as before
        return None


@dataclass(frozen=True)
class Precision:
    """Autocast settings: `auto` is bf16 on CUDA where native, fp16 with a loss scaler on older
    GPUs, float32 elsewhere; `fp32` is float32 everywhere; `bf16` asks for bf16 autocast, on a
    device with native bf16 only.

    On the CPU `auto` stays float32: bf16 autocast was measured slower on a CPU with native
    AVX512-BF16 (no AMX) for every family (bench --cases cpu-train), and about 10x slower where
    bf16 is emulated. `bf16` there is for CPUs with AMX, where it trained VGG19-BN, ResNet-18
    and DenseNet-121 1.7x-4.3x faster, EfficientNet-Lite0 0.6x-0.8x (docs/performance.md)."""

    dtype: torch.dtype | None
    scaler: bool

    @staticmethod
    def for_device(device: torch.device, choice: str = "auto") -> Precision:
        if choice not in PRECISIONS:
            raise CxrError(f"train.precision={choice!r}: choose one of {list(PRECISIONS)}")
        if choice == "fp32" or device.type not in ("cuda", "cpu"):
            return Precision(None, False)
        if device.type == "cpu":
            if choice == "auto":
                return Precision(None, False)
            if speed.cpu_bf16() is None:
                raise CxrError(
                    "train.precision=bf16 but this CPU has no native bf16 (AVX512-BF16 or AMX), "
                    "where emulated bf16 runs about 10x slower; use auto or fp32"
                )
            return Precision(torch.bfloat16, False)
        # native bf16 only (Ampere and later): emulated bf16 on a T4 or V100 is slow, fp16 is not
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision(torch.bfloat16, False)
        if choice == "bf16":
            raise CxrError("train.precision=bf16 but this GPU has no native bf16; use auto (fp16) or fp32")
        return Precision(torch.float16, True)

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def image_forward(model: nn.Module, norm: Normalizer, channels_last: bool) -> Callable:
    """uint8 batch -> logits through the normaliser and the model."""

    def forward(xb: torch.Tensor) -> torch.Tensor:
        x = norm(xb)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x)

    return forward


@dataclass(frozen=True)
class Pass:
    """What an inference pass is, for the runtime rule: how many images of what size (0: unknown,
    PyTorch), whether it must be float32 (`exact`), and a stage's runtime decision for all its
    models ("onnxruntime" / "pytorch", speed.runtime_for; None: decided for this pass alone)."""

    images: int = 0
    size: int = 0
    exact: bool = True
    runtime: str | None = None


def for_inference(
    model: nn.Module,
    arch: str,
    mean,
    std,
    device,
    norm=None,
    runner=None,
    *,
    upto: nn.Module | None = None,
    plan: Pass = Pass(),
) -> Callable:
    """The one place a model is set up for inference (evaluate, predict, the probes' features and
    the frozen backbone's feature pass): uint8 batch -> logits, or with `upto` the input of that
    module (the frozen backbone's features, flattened). The caller sets eval mode and picks the
    batch (speed.inference_batch).

    On the CPU, a float32 pass (`plan`) runs through ONNX Runtime where the stage chose it or
    speed.onnx_pays says its export repays itself (cxr_transfer.runtime.onnxrt); otherwise
    through PyTorch on `device`, in that device's measured inference memory format (weights
    converted in place), behind its normaliser (or `norm`), through `runner` (a compiled model)
    where given."""
    images, size, runtime = plan.images, plan.size, plan.runtime
    if device.type == "cpu" and plan.exact and images and size and runtime != "pytorch":
        from cxr_transfer.runtime import onnxrt

        exported = onnxrt.exported(model, mean, std, size, upto)  # None: it failed here before
        first = not onnxrt.started()
        pays = runtime == "onnxruntime" or speed.onnx_pays(arch, size, images, exported=exported, first=first)
        if exported is not None and pays:
            forward = onnxrt.onnx_forward(model, mean, std, size, upto)
            if forward is not None:
                return forward
    cl = speed.channels_last(arch, device.type, training=False)
    model.to(device).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    norm = norm if norm is not None else Normalizer(mean, std, reuse=device.type == "cpu").to(device)
    forward = image_forward(runner or model, norm, cl)
    return forward if upto is None else _input_of(forward, upto)


def _input_of(forward: Callable, upto: nn.Module) -> Callable:
    """A forward that returns what `upto` receives (flattened float32) instead of the logits."""

    def run(xb: torch.Tensor) -> torch.Tensor:
        got = []
        handle = upto.register_forward_pre_hook(lambda _m, inputs: got.append(inputs[0]))
        try:
            forward(xb)
        finally:
            handle.remove()
        return got[0].detach().to(torch.float32, copy=True).flatten(1)  # never a view of a reused buffer

    return run


def _progress(batches, desc: str):
    """A rate-limited bar over batches (once a second at most; none for a few batches)."""
    from tqdm import tqdm

    from cxr_transfer.core.parallel import bar_off

    return tqdm(batches, desc=desc, unit="batch", mininterval=1.0, leave=False, disable=bar_off(len(batches)))


@torch.no_grad()
def predict_logits(
    forward: Callable, batches: ArrayBatches, prec: Precision, device, desc: str = "predict"
) -> torch.Tensor:
    """Logits for every item of `batches`, in order, as float32 on the CPU."""
    out = []
    for xb, _ in _progress(batches, desc):
        with prec.autocast(device):
            out.append(forward(xb).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def tail_inputs(model: nn.Module, forward: Callable, batches: ArrayBatches, prec, device) -> torch.Tensor:
    """The frozen backbone's features of each item, computed once (eval, no grad): `forward` is
    for_inference's with `upto` the module that trains on them.

    Feature extraction then trains that module on these instead of rerunning the backbone every epoch."""
    feats = []
    was_training = model.training
    model.eval()
    try:
        for xb, _ in _progress(batches, "features (frozen backbone, once)"):
            with prec.autocast(device):
                feats.append(forward(xb).float())
    finally:
        model.train(was_training)
    return torch.cat(feats)


FP32 = Precision(None, False)


def model_logits(
    model: nn.Module,
    arch: str,
    mean,
    std,
    x,
    device: torch.device,
    batch_size: int | None = None,
    budget: float | None = None,
    runtime: str | None = None,
) -> torch.Tensor:
    """Float32 logits (N, classes) of a model over an (N, S, S) uint8 image store.

    Always in float32, whatever training used: bf16 scores have about 3 significant digits, and
    the ties they make move AUROC and the threshold chosen on validation. Memory format and (for
    None) the batch size follow the device's measured rules (cxr_transfer.runtime.speed); a store larger
    than `budget` bytes is streamed from disk."""
    x = np.asarray(x)
    size = x.shape[-1]
    forward = for_inference(model.eval(), arch, mean, std, device, plan=Pass(len(x), size, True, runtime))
    batch_size = batch_size or speed.inference_batch(device.type, size)
    batches = ArrayBatches(x[:, None], np.zeros(len(x)), batch_size, device=device, budget=budget)
    return predict_logits(forward, batches, FP32, device)


def predict_proba(
    model: nn.Module,
    arch: str,
    mean,
    std,
    x,
    device: torch.device,
    batch_size: int | None = None,
    budget: float | None = None,
) -> torch.Tensor:
    """Softmax probabilities (N, classes) of `model_logits`."""
    return model_logits(model, arch, mean, std, x, device, batch_size, budget).softmax(1)
