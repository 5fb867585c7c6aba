"""How each device runs fastest: memory format per architecture, inference batch, CPU precision, heap.

Every rule here is a measurement, not an assumption: `python -m bench --size full --cases cpu-train`
times each registered family (EfficientNet, ResNet, DenseNet, VGG) at the demo's 96 px and the
seed's 224 px, training and inference, NCHW and channels_last, bf16 where the CPU has it, and the
inference batch sizes (bench/results/cpu-full-2026-11-30-cpu-train.json; the README's performance
table quotes it; the bench records the rules `derive_cpu_rules` draws from its rows beside these).
On CUDA: channels_last and a batch of at least 64 (tensor cores); MPS is not measured and keeps
the defaults (NCHW, float32).
"""

from __future__ import annotations

import ctypes
import math
import re
import sys

# Training on the CPU in channels_last, per family: True unless it was slower (by more than the
# 2% the timing wanders) at either size. Inference on the CPU is channels_last for every family:
# faster everywhere it was measured.
CPU_TRAIN_CHANNELS_LAST = {"efficientnet": True, "resnet": True, "densenet": True, "vgg": True}
NOISE = 0.02

# CPU inference batch: the largest power of two with at most this many pixels per batch (64 at
# 96-128 px, 16 at 224 px), within [8, 64]. Larger batches outgrow the caches without doing more.
CPU_BATCH_PIXELS = 1 << 20


# CPU inference through ONNX Runtime (cxr_transfer.runtime.onnxrt), per family and size: PyTorch's and
# ONNX Runtime's images/s, the in-memory export's and a new session's seconds, as measured on 2
# cores (`python -m bench --cases cpu-infer`: bench/results/cpu-full-2026-12-02-cpu-infer.json;
# tests/test_onnxrt.py checks these are what its rows imply). A family or size without an entry
# stays in PyTorch (VGG at 96 px: the TorchScript exporter cannot export its adaptive pooling
# there). A process's first export also pays the exporter's start, CPU_ONNX_START seconds.
CPU_ONNX: dict[str, dict[int, dict]] = {
    "efficientnet": {
        96: {
            "pytorch_images_per_s": 520.3,
            "onnxruntime_images_per_s": 616.7,
            "export_seconds": 0.36,
            "session_seconds": 0.098,
        },
        224: {
            "pytorch_images_per_s": 101.6,
            "onnxruntime_images_per_s": 97.7,
            "export_seconds": 0.42,
            "session_seconds": 0.048,
        },
    },
    "resnet": {
        96: {
            "pytorch_images_per_s": 309.2,
            "onnxruntime_images_per_s": 316.4,
            "export_seconds": 0.18,
            "session_seconds": 0.082,
        },
        224: {
            "pytorch_images_per_s": 54.3,
            "onnxruntime_images_per_s": 58.9,
            "export_seconds": 0.18,
            "session_seconds": 0.067,
        },
    },
    "densenet": {
        96: {
            "pytorch_images_per_s": 136.6,
            "onnxruntime_images_per_s": 159.6,
            "export_seconds": 0.67,
            "session_seconds": 0.175,
        },
        224: {
            "pytorch_images_per_s": 24.7,
            "onnxruntime_images_per_s": 29.5,
            "export_seconds": 0.8,
            "session_seconds": 0.091,
        },
    },
    "vgg": {
        224: {
            "pytorch_images_per_s": 5.2,
            "onnxruntime_images_per_s": 5.6,
            "export_seconds": 1.85,
            "session_seconds": 1.161,
        },
    },
}
CPU_ONNX_START = 0.67  # that file's exporter_start_seconds (a fresh process, as a stage)


# torch.compile for training, per device type, family and size: eager and compiled training
# images/s and the compile's seconds (its first step less an eager one), as measured on 2 cores
# (`python -m bench --cases cpu-compile`: bench/results/cpu-full-2026-12-02-cpu-compile.json,
# fresh processes, heap kept: EfficientNet-Lite0 1.09x after a 93.9 s compile with a cold inductor
# cache, 4.5 s with a warm one; ResNet-18 0.68x). The rule counts the cold compile: a run may be a
# machine's first. CUDA has no row until the GPU
# check (bench/gpu_check.py) measures it and prints the rows to add. train.compile: auto compiles
# where compile_pays; a family or device without a row is never compiled by auto.
COMPILE: dict[str, dict[str, dict[int, dict]]] = {
    "cpu": {
        "efficientnet": {
            96: {
                "eager_images_per_s": 84.3,
                "compiled_images_per_s": 92.0,
                "compile_seconds": 93.9,
            },
        },
        "resnet": {
            96: {
                "eager_images_per_s": 90.6,
                "compiled_images_per_s": 61.8,
                "compile_seconds": 44.8,
            },
        },
    },
}


def family(arch: str) -> str:
    """'vgg19_bn' -> 'vgg', 'efficientnet_lite0' -> 'efficientnet'."""
    return re.match(r"[a-z]+", arch).group(0)


def derive_cpu_rules(runs: list[dict], noise: float = NOISE) -> dict[str, bool]:
    """CPU_TRAIN_CHANNELS_LAST as a set of bench rows (arch, train_ratio = channels_last / NCHW
    images/s) implies it: channels_last for a family unless it was slower by more than `noise` at
    any size measured."""
    ratios: dict[str, list[float]] = {}
    for r in runs:
        ratios.setdefault(family(r["arch"]), []).append(r["train_ratio"])
    return {f: min(v) >= 1 - noise for f, v in ratios.items()}


def channels_last(arch: str, device_type: str, training: bool) -> bool:
    """Whether `arch` runs in channels_last on this device, for training or inference."""
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    return CPU_TRAIN_CHANNELS_LAST.get(family(arch), False) if training else True


def inference_batch(device_type: str, image_size: int, train_batch: int = 0) -> int:
    """Batch size of the feature pass and of evaluation: no gradients, so throughput alone decides."""
    if device_type != "cpu":
        return max(64, train_batch)
    fits = max(1, CPU_BATCH_PIXELS // (image_size * image_size))
    return max(8, min(64, 1 << (fits.bit_length() - 1)))


def _scaled_rates(table: dict, arch: str, size: int, rates: tuple[str, ...]) -> dict | None:
    """The measured row of `arch`'s family nearest `size`, its `rates` scaled by pixels to `size`."""
    rows = table.get(family(arch))
    if not rows:
        return None
    near = min(rows, key=lambda s: abs(s - size))
    f = (near / size) ** 2
    return {**rows[near], **{k: rows[near][k] * f for k in rates}}


def break_even(row: dict) -> int | None:
    """Images from which ONNX Runtime's pass, export included, beats PyTorch's (None: never)."""
    t_torch, t_ort = 1 / row["pytorch_images_per_s"], 1 / row["onnxruntime_images_per_s"]
    if t_ort >= t_torch:
        return None
    return math.ceil((row["export_seconds"] + row["session_seconds"]) / (t_torch - t_ort))


def derive_onnx_rule(runs: list[dict]) -> dict:
    """CPU_ONNX as bench rows (cpu-infer) imply it: per family and size, the two rates, the
    export's and a session's seconds; a family whose export failed at a size has no entry there."""
    keys = ("pytorch_images_per_s", "onnxruntime_images_per_s", "export_seconds", "session_seconds")
    rule: dict[str, dict[int, dict]] = {}
    for r in runs:
        if "export_error" not in r:
            rule.setdefault(family(r["arch"]), {})[r["size"]] = {k: r[k] for k in keys}
    return rule


def onnx_pays(
    arch: str, size: int, images: int, sessions: int = 1, exported: bool = False, first: bool = True
) -> bool:
    """Whether a float32 CPU pass of `images` images (over `sessions` weight versions, e.g. one
    per epoch's validation) is faster through ONNX Runtime than through PyTorch, counting the
    export (unless this process has it; the exporter's start if it is the process's `first`) and
    each session, at the rates measured for the architecture's family (CPU_ONNX, scaled by pixels
    from the nearest measured size)."""
    r = _scaled_rates(CPU_ONNX, arch, size, ("pytorch_images_per_s", "onnxruntime_images_per_s"))
    if r is None or images <= 0:
        return False
    t_torch = images / r["pytorch_images_per_s"]
    t_ort = images / r["onnxruntime_images_per_s"] + sessions * r["session_seconds"]
    export = 0.0 if exported else r["export_seconds"] + (CPU_ONNX_START if first else 0.0)
    return t_ort + export < t_torch


def runtime_for(arch: str, size: int, images: int, models: int) -> str:
    """ "onnxruntime" or "pytorch" for a stage's whole work: `models` models (folds, runs) of one
    architecture, each scoring `images` images, each with its own export and session; decided once
    so that every model of the stage runs on the same runtime (the folds of one run never differ
    by which runtime happened to be warm)."""
    r = _scaled_rates(CPU_ONNX, arch, size, ("pytorch_images_per_s", "onnxruntime_images_per_s"))
    if r is None or images <= 0 or models <= 0:
        return "pytorch"
    t_torch = models * images / r["pytorch_images_per_s"]
    per_model = images / r["onnxruntime_images_per_s"] + r["session_seconds"] + r["export_seconds"]
    return "onnxruntime" if models * per_model + CPU_ONNX_START < t_torch else "pytorch"


def compile_pays(arch: str, device_type: str, size: int, images: int) -> bool:
    """Whether torch.compile shortens a training run of `images` image-steps (epochs x training
    images) of `arch` at `size` on this device type: its compile seconds against the time its
    faster steps save, at the measured rates (COMPILE, scaled by pixels from the nearest size)."""
    r = _scaled_rates(
        COMPILE.get(device_type, {}), arch, size, ("eager_images_per_s", "compiled_images_per_s")
    )
    if r is None or images <= 0:
        return False
    eager = images / r["eager_images_per_s"]
    return r["compile_seconds"] + images / r["compiled_images_per_s"] < eager


def derive_compile_rule(runs: list[dict]) -> dict:
    """COMPILE's rows for one device type as bench rows (cpu-compile, gpu-check) imply them."""
    keys = ("eager_images_per_s", "compiled_images_per_s", "compile_seconds")
    rule: dict[str, dict[int, dict]] = {}
    for r in runs:
        if "compile_error" not in r:
            rule.setdefault(family(r["arch"]), {})[r["size"]] = {k: r[k] for k in keys}
    return rule


def cpu_bf16() -> str | None:
    """The CPU's native bf16 instructions ('amx' or 'avx512_bf16'), or None (emulated: slow)."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return None


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's <malloc.h>


def _glibc(name: str):
    """glibc's function `name`, or None on another platform or C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """On glibc: serve large blocks from the heap and keep freed memory for the next batch.

    By default glibc maps every block over 32 MB (a batch's activations at 224 px) with mmap and
    unmaps it on free, so each batch's pages are faulted in and zeroed by the kernel again: the
    224 px feature pass spent more time in the kernel than in the model. This makes the second
    batch reuse the first one's memory. Process-wide, for the torch stages; returns whether it
    applied (False on other C libraries, where it does nothing)."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    # mallopt returns 1 on success; the trim threshold is an int, so 2 GiB - 1 is its ceiling
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> bool:
    """Return the heap's free memory to the system (glibc's malloc_trim), once a pass is over.

    keep_freed_memory() keeps what each batch frees for the next one, which also means a process
    holds its peak until it ends: after training, while evaluating, and under torchrun once per
    process. fit() calls this after every epoch, so what is kept is bounded by one epoch's peak
    and handed back between epochs (one re-fault of the next epoch's first batch, ~0.1 s at 224
    px, against an epoch of minutes). Returns whether it ran (glibc only)."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim(0)  # returns whether memory was released; nothing may be free to release
    return True
