"""Training and inference throughput on the accelerator: the seed's fp32 per-item PIL loop vs the
pipeline's own training path (setup_run + fit: GPU-resident uint8 store, bf16 autocast,
channels_last) and its evaluation path (predict_proba, float32), with model FLOP utilisation.

Runs anywhere: on the CPU at a tiny size (how the test suite checks it), on an H100/H200 at 224."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import time

import numpy as np
import torch
from torch import nn

from bench.seed import seed_loader
from cxr_transfer.core.params import SEED_MODES, TrainConfig
from cxr_transfer.runtime.engine import Precision, predict_proba
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train.checkpoints import Checkpoints
from cxr_transfer.train.loop import Steps, Stopping, fit
from cxr_transfer.train.optim import make_optimizer
from cxr_transfer.train.phases import RunContext, setup_run

VGG19_GFLOPS_224 = 39.3  # one 224x224 forward pass; a training step is about 3x


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, n: int, iters: int, tf32: bool = False) -> float:
    """Measured dense matrix rate: bf16 on CUDA (float32 with TF32 where `tf32`: the rate of a
    float32 pass, whose convolutions cuDNN runs in TF32), fp32 elsewhere."""
    dtype = torch.bfloat16 if device.type == "cuda" and not tf32 else torch.float32
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def _steps(step, batches, n_steps: int, device) -> float:
    """Images/s over n_steps after 3 warm-up steps."""
    it = iter(batches)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches)
            return next(it)

    for _ in range(3):
        step(*next_batch())
    sync(device)
    n, t0 = 0, time.perf_counter()
    for _ in range(n_steps):
        x, y = next_batch()
        step(x, y)
        n += len(y)
    sync(device)
    return n / (time.perf_counter() - t0)


def seed_train_rate(arch, paths, labels, size, device, n_steps) -> float:
    """The seed: fp32, per-item PIL pipeline on the CPU, batch 32, num_workers=0."""
    spec = get_spec(arch)
    model = build_model(arch, None, 2, seed=0).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    loader = seed_loader(paths, labels, size, spec.mean, spec.std, batch_size=32)

    def step(x, y):
        opt.zero_grad()
        loss_fn(model(x.to(device)), y.to(device)).backward()
        opt.step()

    return _steps(step, loader, n_steps, device)


def ours_rates(arch, x_store, labels, device, batch, epochs, compile_model=False) -> dict:
    """Ours, timed through the pipeline's own path: setup_run + fit (the train stage's loop, with
    its precision, channels_last and device-resident store) and predict_proba (the evaluate
    stage's float32 scoring). Training images/s is the best epoch after the first (warm-up:
    cudnn autotuning, compilation)."""
    spec = get_spec(arch)
    prec = Precision.for_device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = build_model(arch, None, 2, seed=0)
    data = {"train": (x_store, labels), "val": (x_store[:batch], labels[:batch])}
    mode, tc = SEED_MODES["scratch"], TrainConfig(epochs=epochs, batch_size=batch)
    rs = setup_run(model, spec, data, mode, tc, RunContext(device, prec, compile_model=compile_model))
    opt = make_optimizer(rs.loop.trained.parameters(), mode)
    with tempfile.TemporaryDirectory() as tmp:
        state = fit(
            rs.phases, Steps(opt, prec, device), Stopping(epochs, epochs + 1), Checkpoints(tmp, "bench")
        )
    train = max(h.images_per_s for h in state.history[1:]) if epochs > 1 else state.history[0].images_per_s
    predict_proba(model, spec.name, spec.mean, spec.std, x_store[: batch * 4], device, batch * 4)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    predict_proba(model, spec.name, spec.mean, spec.std, x_store, device, batch * 4)
    sync(device)
    infer = len(x_store) / (time.perf_counter() - t0)
    return {
        "batch": batch,
        "train_images_per_s": round(train, 1),
        "infer_images_per_s": round(infer, 1),
        "precision": str(prec.dtype or "float32"),
        "infer_precision": "float32",
        "channels_last": device.type == "cuda",
        "compiled": compile_model,
        "epochs": epochs,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(card=p.name, memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
            ).stdout.strip()
        except OSError:
            info["driver"] = None
    return info


def gpu_case(
    work,
    paths,
    labels,
    arch: str,
    size: int,
    batches: list[int],
    n_steps: int,
    epochs: int,
    compile_model: bool,
    device: torch.device,
) -> dict:
    from cxr_transfer.data.prepare import decode_split

    x = decode_split(paths, size, workers=0)
    y = np.array(labels)
    seed = seed_train_rate(arch, paths, labels, size, device, n_steps)
    ours = [ours_rates(arch, x, y, device, b, epochs) for b in batches]
    if compile_model:
        ours.append(ours_rates(arch, x, y, device, batches[-1], epochs, compile_model=True))
    rate = matmul_tflops(device, 8192 if device.type == "cuda" else 512, 20 if device.type == "cuda" else 3)
    gflops = VGG19_GFLOPS_224 * (size / 224) ** 2 if arch == "vgg19_bn" else None
    for o in ours:
        if gflops:
            o["train_mfu"] = round(o["train_images_per_s"] * 3 * gflops / 1e3 / rate, 3)
            o["infer_mfu"] = round(o["infer_images_per_s"] * gflops / 1e3 / rate, 3)
        o["ratio_vs_seed"] = round(o["train_images_per_s"] / seed, 1)
    return {
        "arch": arch,
        "size": size,
        "device": str(device),
        "seed_train_images_per_s": round(seed, 1),
        "ours": ours,
        "measured_matmul_tflops": round(rate, 1),
        "gflops_per_forward": gflops,
        "target_ratio": 10,
        "target_mfu": 0.4,
    }
