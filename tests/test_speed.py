"""The per-device speed rules (cxr_transfer.runtime.speed): what they choose, that they agree with the
committed CPU measurements, and that the training setup follows them."""

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_transfer.core.params import ModeConfig, TrainConfig
from cxr_transfer.core.registry import ARCHS
from cxr_transfer.runtime import speed
from cxr_transfer.runtime.engine import Precision
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train.phases import RunContext, setup_run

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "bench" / "results" / "cpu-full-2026-11-30-cpu-train.json"
CPU = torch.device("cpu")


def test_every_registered_architecture_has_a_measured_cpu_training_rule():
    assert {speed.family(a) for a in ARCHS} == set(speed.CPU_TRAIN_CHANNELS_LAST)
    assert speed.family("vgg19_bn") == "vgg" and speed.family("efficientnet_lite0") == "efficientnet"


@pytest.mark.parametrize(
    "ratios, expect",
    [
        ({"vgg19_bn": (1.3, 1.1), "resnet18": (1.02, 0.99)}, {"vgg": True, "resnet": True}),  # within noise
        (
            {"vgg19_bn": (1.3, 0.97), "resnet18": (1.5, 1.4)},
            {"vgg": False, "resnet": True},
        ),  # slower at one size
        ({"densenet121": (0.5,)}, {"densenet": False}),
    ],
)
def test_the_cpu_training_rule_follows_the_slowest_size_measured(ratios, expect):
    runs = [{"arch": a, "train_ratio": r} for a, rs in ratios.items() for r in rs]
    assert speed.derive_cpu_rules(runs) == expect


def test_the_cpu_trains_in_float32():
    """bf16 autocast measured slower than float32 on this CPU family (no AMX): the CPU default."""
    assert Precision.for_device(CPU) == Precision(None, False)


def test_memory_format_per_device_and_use(monkeypatch):
    monkeypatch.setitem(speed.CPU_TRAIN_CHANNELS_LAST, "vgg", False)  # as if measured slower
    assert speed.channels_last("vgg19_bn", "cuda", training=True)
    assert not speed.channels_last("vgg19_bn", "cpu", training=True)
    assert speed.channels_last("vgg19_bn", "cpu", training=False)
    assert speed.channels_last("vgg16", "cpu", training=False)
    assert not speed.channels_last("resnet18", "mps", training=False)  # not measured: the default
    assert not speed.channels_last("alexnet", "cpu", training=True)  # unregistered: NCHW


@pytest.mark.parametrize(
    "device, size, train_batch, expect",
    [
        ("cpu", 96, 32, 64),
        ("cpu", 128, 32, 64),
        ("cpu", 160, 32, 32),
        ("cpu", 224, 32, 16),
        ("cpu", 512, 32, 8),
        ("cpu", 28, 32, 64),
        ("cuda", 224, 32, 64),
        ("cuda", 224, 128, 128),
    ],
)
def test_inference_batch_for_throughput(device, size, train_batch, expect):
    assert speed.inference_batch(device, size, train_batch) == expect


CHURN = """
import re, resource, torch
from cxr_transfer.runtime.speed import keep_freed_memory, release_freed_memory
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def anon_mib():
    return int(re.search(r"RssAnon:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
def churn():  # what each batch of a 224 px pass does: large blocks written, then freed
    before = faults()
    for _ in range(8):
        torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    return faults() - before
applied = keep_freed_memory()
base = anon_mib()
first, second = churn(), churn()
kept = anon_mib() - base
released = release_freed_memory()
print(applied, first, second, kept, released, anon_mib() - base)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc heap setting")
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_the_kept_heap_reuses_freed_blocks_and_hands_them_back_when_released():
    """What the mechanism guarantees, in one process (no timing, no comparison with another
    process that a busy machine could upset): the setting applies; the first churn faults its
    64 MB block in, the second reuses it; release_freed_memory() returns it to the system. The
    fault counts against glibc's default heap are the bench's (`--cases cpu-train`, heap)."""
    out = subprocess.run([sys.executable, "-c", CHURN], cwd=ROOT, capture_output=True, text=True, check=True)
    applied, first, second, kept, released, after = out.stdout.split()
    first, second, kept, after = int(first), int(second), float(kept), float(after)
    assert applied == "True" and released == "True"
    assert first >= 16384 // 2 and second <= first // 4, (first, second)  # 16,384 pages per block
    assert kept >= 48 and after <= kept - 48, (kept, after)  # the kept block, then handed back


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_the_feature_pass_runs_channels_last_and_training_the_family_rule(monkeypatch):
    """fe: the frozen backbone's features in channels_last (inference), then the model in the
    format its family trains in on the CPU (NCHW when the rule says so)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 32, 32), dtype=np.uint8)
    data = {s: (x, np.arange(8) % 2) for s in ("train", "val")}
    seen = []
    for trains_cl in (False, True):
        monkeypatch.setitem(speed.CPU_TRAIN_CHANNELS_LAST, "resnet", trains_cl)
        model = build_model("resnet18", None, 2, 0)
        hook = model.conv1.register_forward_pre_hook(lambda m, a: seen.append(_is_channels_last(a[0])))
        head = ModeConfig(False, "head", "adam", 1e-3)
        rs = setup_run(
            model,
            get_spec("resnet18"),
            data,
            head,
            TrainConfig(batch_size=4),
            RunContext(CPU, Precision(None, False)),
        )
        hook.remove()
        assert rs.cached_features and rs.channels_last is trains_cl
        assert _is_channels_last(model.conv1.weight) is trains_cl
    assert seen == [True] * len(seen) and len(seen) == 2 * 2  # 2 splits x 1 batch of 8, twice


def test_torch_compile_is_adopted_where_its_compile_time_is_repaid(monkeypatch):
    from cxr_transfer.train.job import use_compile

    row = {"eager_images_per_s": 100.0, "compiled_images_per_s": 125.0, "compile_seconds": 60.0}
    monkeypatch.setattr(speed, "COMPILE", {"cpu": {"efficientnet": {96: row}}})
    # each image-step saves 1/100 - 1/125 = 0.002 s: 60 s repaid from 30,000 image-steps
    assert not speed.compile_pays("efficientnet_lite0", "cpu", 96, 29_000)
    assert speed.compile_pays("efficientnet_lite0", "cpu", 96, 31_000)
    assert speed.compile_pays("efficientnet_lite0", "cpu", 192, 8_000)  # 4x the pixels: 4x the saving
    assert not speed.compile_pays("resnet18", "cpu", 96, 10**9)  # no row: never by auto
    assert not speed.compile_pays("efficientnet_lite0", "cuda", 96, 10**9)  # no CUDA row yet
    data = {"train": (np.zeros((1000, 96, 96), np.uint8), np.zeros(1000))}
    cpu = torch.device("cpu")
    assert not use_compile("auto", "efficientnet_lite0", cpu, data, 5)  # the demo-like run: 5,000
    assert use_compile("auto", "efficientnet_lite0", cpu, data, 40)  # 40,000 image-steps
    assert use_compile(True, "resnet18", cpu, data, 1) and not use_compile(
        False, "efficientnet_lite0", cpu, data, 99
    )
    # only epochs that train every layer repay it: fe never does, ft_gradual's frozen epoch does not
    from cxr_transfer.core.params import FT_GRADUAL, SEED_MODES

    assert not use_compile("auto", "efficientnet_lite0", cpu, data, 400, SEED_MODES["fe"])
    assert not use_compile("auto", "efficientnet_lite0", cpu, data, 400, SEED_MODES["ft_classifier"])
    assert use_compile("auto", "efficientnet_lite0", cpu, data, 40, SEED_MODES["ft"])
    assert FT_GRADUAL.freeze_epochs == 1 and not use_compile(
        "auto", "efficientnet_lite0", cpu, data, 30, FT_GRADUAL
    )
    assert use_compile("auto", "efficientnet_lite0", cpu, data, 32, FT_GRADUAL)  # 31,000 image-steps


def test_the_committed_compile_rule_is_what_the_bench_rows_imply():
    import json

    got = json.loads(Path("bench/results/cpu-full-2026-12-02-cpu-compile.json").read_text())["cpu-compile"]
    assert speed.derive_compile_rule(got["runs"]) == speed.COMPILE["cpu"]
    # as measured here, compiling pays only for EfficientNet on runs of over 94,579 image-steps
    assert not speed.compile_pays("efficientnet_lite0", "cpu", 96, 94_000)
    assert speed.compile_pays("efficientnet_lite0", "cpu", 96, 95_000)
    assert not speed.compile_pays("resnet18", "cpu", 96, 10**9)  # slower compiled
