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
