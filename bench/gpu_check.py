"""One prepared run for the first machine with a GPU: every CUDA path the pipeline has, measured.

    bash bench/gpu_check.sh                      # on the GPU machine (installs bench/wheels/ first)
    python -m bench.gpu_check --device cpu --size tiny --out /tmp/x   # what the test suite runs

Through the train and evaluate stages' own code (setup_run + fit + predict_proba + the metrics
engine), on a generated uint8 store: every mode of vgg19_bn and efficientnet_lite0 at 224 px for
one epoch each (two for ft_gradual: its first is the frozen one), with the device's precision
(bf16 autocast on GPUs that have it), channels_last and the device-resident store; then the seed's
experiment (vgg19_bn and vgg16, 15 epochs, patience 8) for as long as the budget allows. Prints
images/s per run and stage, model FLOP utilisation against the card's measured bf16 matmul rate,
peak GPU memory and wall time; writes bench/results/gpu-check-<card>-<date>.json. Any error on a
CUDA path is raised, not caught: the run exits non-zero with its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu import machine, matmul_tflops, sync
from cxr_transfer.core.params import FT_GRADUAL, SEED_MODES, TrainConfig
from cxr_transfer.evaluate.binary import point_metrics
from cxr_transfer.runtime.engine import Precision, pick_device, predict_proba
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train.checkpoints import Checkpoints
from cxr_transfer.train.loop import Steps, Stopping, fit
from cxr_transfer.train.optim import make_optimizer, make_scheduler
from cxr_transfer.train.phases import RunContext, setup_run

MODES = {**SEED_MODES, "ft_gradual": FT_GRADUAL}
SIZES = {  # the generated store, the batch, the archs, and the seed experiment's archs and budget (s)
    "full": dict(
        n=10_000,
        size=224,
        batch=64,
        archs=("vgg19_bn", "efficientnet_lite0"),
        seed=("vgg19_bn", "vgg16"),
        budget=360,
        compile=True,
    ),
    # the same code on the CPU in the test suite, with small archs (VGG's 100M-weight classifier
    # takes 10 s a step there)
    "tiny": dict(
        n=48,
        size=32,
        batch=16,
        archs=("resnet18", "efficientnet_lite0"),
        seed=("resnet18",),
        budget=3,
        compile=False,  # inductor's compile on 2 CPU cores takes minutes: the GPU day measures it
    ),
}
SEED_EPOCHS, SEED_PATIENCE = 15, 8


def generated_store(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) uint8 radiograph-like images (a bright body, two darker lungs, noise) with
    a learnable difference: class 1 carries a hazy patch in one lung. Made in memory, in chunks."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = 150 - 90 * (((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.48) ** 2)
    lungs = 50 * (
        np.exp(-(((xx - 0.32) / 0.12) ** 2 + ((yy - 0.5) / 0.22) ** 2))
        + np.exp(-(((xx - 0.68) / 0.12) ** 2 + ((yy - 0.5) / 0.22) ** 2))
    )
    patch = 35 * np.exp(-(((xx - 0.3) / 0.08) ** 2 + ((yy - 0.6) / 0.1) ** 2))
    base = np.clip(body - lungs, 0, 255).astype(np.float32)
    x = np.empty((n, size, size), np.uint8)
    for i in range(0, n, 512):
        k = min(512, n - i)
        noise = rng.normal(0, 12, (k, size, size)).astype(np.float32)
        shift = rng.normal(0, 10, (k, 1, 1)).astype(np.float32)
        x[i : i + k] = np.clip(base + noise + shift + patch * y[i : i + k, None, None], 0, 255)
    return x, y


def forward_gflops(arch: str, size: int) -> float:
    """GFLOPs of one forward pass at size x size, counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(arch, None, 2, seed=0).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def _peak_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


class OutOfTime(Exception):
    pass


def run_mode(
    arch, mode, data, batch, epochs, patience, device, prec, stop_at=None, compile_model=False
) -> dict:
    """One run as the train and evaluate stages run it: setup_run + fit, then predict_proba on the
    validation store and the metrics engine; images/s of each, peak memory, wall time."""
    cfg = MODES[mode]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model = build_model(arch, None, 2, seed=0)
    tc = TrainConfig(epochs=epochs, batch_size=batch)
    rs = setup_run(
        model, get_spec(arch), data, cfg, tc, RunContext(device, prec, compile_model=compile_model)
    )
    opt = make_optimizer(rs.groups, cfg)
    sched = make_scheduler(opt, cfg, epochs, len(rs.train))
    logs = []

    def on_epoch(log):
        logs.append(log)
        if stop_at is not None and time.perf_counter() > stop_at:
            raise OutOfTime

    finished = True
    with tempfile.TemporaryDirectory() as tmp:
        try:
            steps = Steps(opt, prec, device, scheduler=sched)
            fit(rs.phases, steps, Stopping(epochs, patience), Checkpoints(tmp, "gpu-check"), on_epoch)
        except OutOfTime:
            finished = False
    sync(device)
    x_val, y_val = data["val"]
    spec = get_spec(arch)
    t1 = time.perf_counter()
    p = predict_proba(model, arch, spec.mean, spec.std, x_val, device).numpy()[:, 1]
    sync(device)
    infer_s = time.perf_counter() - t1
    m = point_metrics(y_val, p)
    return {
        "arch": arch,
        "mode": mode,
        "epochs_run": len(logs),
        "finished": finished,
        "train_images_per_s": [round(lg.images_per_s, 1) for lg in logs],
        "epoch_seconds": [round(lg.seconds, 2) for lg in logs],
        "feature_seconds": round(rs.feature_seconds, 2),
        "cached_features": rs.cached_features,
        "streamed": rs.streamed,
        "channels_last": rs.channels_last,
        "eval_images_per_s": round(len(y_val) / infer_s, 1),
        "val_accuracy": round(m["accuracy"], 4),
        "val_auroc": None if m["auroc"] is None else round(m["auroc"], 4),
        "peak_gib": _peak_gib(device),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def check(device: torch.device, size: str) -> dict:
    cfg = SIZES[size]
    t_start = time.perf_counter()
    prec = Precision.for_device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    x, y = generated_store(cfg["n"], cfg["size"])
    cut = int(0.8 * len(y))
    data = {"train": (x[:cut], y[:cut]), "val": (x[cut:], y[cut:])}
    rate = matmul_tflops(device, 8192, 20) if device.type == "cuda" else None
    out = {
        "machine": machine(device),
        "date": dt.date.today().isoformat(),
        "size": size,
        "images": cfg["n"],
        "image_size": cfg["size"],
        "batch": cfg["batch"],
        "precision": str(prec.dtype or "float32"),
        "matmul_tflops": None if rate is None else round(rate, 1),
        "runs": [],
    }
    for arch in cfg["archs"]:
        gflops = forward_gflops(arch, cfg["size"])
        for mode in MODES:
            epochs = MODES[mode].freeze_epochs + 1
            r = run_mode(arch, mode, data, cfg["batch"], epochs, epochs + 1, device, prec)
            full = MODES[mode].trainable == "all"  # the last epoch trains every layer
            last = r["train_images_per_s"][-1]
            r["forward_gflops"] = round(gflops, 4)
            if device.type == "cuda":  # against the card's measured bf16 rate; no CPU figure
                r["train_mfu"] = round(last * 3 * gflops / 1e3 / rate, 3) if full else None
                r["eval_mfu"] = round(r["eval_images_per_s"] * gflops / 1e3 / rate, 3)
            out["runs"].append(r)
            print(_line(r), flush=True)
    if cfg["compile"]:
        out["compile"] = compile_rows(out["runs"], data, cfg, device, prec)
    t_seed = time.perf_counter()
    stop_at = t_seed + cfg["budget"]
    out["seed_experiment"] = {"budget_s": cfg["budget"], "runs": []}
    for arch in cfg["seed"]:
        for mode in ("scratch", "fe", "ft_classifier"):
            if time.perf_counter() > stop_at:
                break
            r = run_mode(arch, mode, data, cfg["batch"], SEED_EPOCHS, SEED_PATIENCE, device, prec, stop_at)
            out["seed_experiment"]["runs"].append(r)
            print("seed experiment: " + _line(r), flush=True)
    out["seed_experiment"]["elapsed_s"] = round(time.perf_counter() - t_seed, 2)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    out["peak_gib"] = _peak_gib(device)
    return out


def compile_rows(eager_runs: list[dict], data, cfg: dict, device, prec) -> dict:
    """torch.compile for training, per arch: ft for two epochs with the compiled model (the first
    epoch carries the compile), against the eager ft run above; the rows speed.COMPILE needs for
    this device type (train.compile: auto adopts it where the compile pays over the run)."""
    from cxr_transfer.runtime import speed

    rows = []
    for arch in cfg["archs"]:
        eager = next(r for r in eager_runs if r["arch"] == arch and r["mode"] == "ft")
        r = run_mode(arch, "ft", data, cfg["batch"], 2, 3, device, prec, compile_model=True)
        row = {
            "arch": arch,
            "size": cfg["size"],
            "eager_images_per_s": eager["train_images_per_s"][-1],
            "compiled_images_per_s": r["train_images_per_s"][-1],
            "compile_seconds": round(r["epoch_seconds"][0] - r["epoch_seconds"][1], 1),
            "compiled_val_accuracy": r["val_accuracy"],
        }
        rows.append(row)
        print(
            f"{arch}-ft compiled: {row['compiled_images_per_s']} img/s (eager {row['eager_images_per_s']}) "
            f"after a {row['compile_seconds']} s compile",
            flush=True,
        )
    return {"runs": rows, "derived_compile_rule": {device.type: speed.derive_compile_rule(rows)}}


def _line(r: dict) -> str:
    mfu = f", train MFU {r['train_mfu']:.1%}" if r.get("train_mfu") is not None else ""
    peak = f", peak {r['peak_gib']} GiB" if r["peak_gib"] is not None else ""
    return (
        f"{r['arch']}-{r['mode']}: {r['epochs_run']} epoch(s), train {r['train_images_per_s'][-1]} img/s"
        f"{mfu}, eval {r['eval_images_per_s']} img/s{peak}, {r['wall_s']} s"
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", default="cuda", help="cuda (the GPU day) or cpu (the tiny check in the tests)"
    )
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    device = pick_device(args.device, "--device")
    out = check(device, args.size)
    card = out["machine"].get("card", device.type).replace(" ", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-check-{card}-{args.size}-{out['date']}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"gpu-check: {len(out['runs'])} runs and {len(out['seed_experiment']['runs'])} of the seed "
        f"experiment in {out['wall_s']} s ({out['precision']}; matmul {out['matmul_tflops']} TFLOP/s); "
        f"wrote {path}"
    )
    return out


if __name__ == "__main__":
    from cxr_transfer.core.cli import run

    run(main, "gpu-check")  # a bad --device is one line; an error on a CUDA path keeps its traceback
