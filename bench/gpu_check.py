"""One prepared run for the first machine with a GPU: every CUDA path the pipeline has, measured
within one command's time, every figure on disk as soon as it exists.

    bash bench/gpu_check.sh --out "$OUT"                     # one CUDA GPU: at most --budget s (360)
    python -m bench.gpu_check --plan                         # the planned work and its estimate
    python -m bench.gpu_check --device cpu --size tiny --out /tmp/x   # what the test suite runs

Through the train and evaluate stages' own code (setup_run + fit + predict_proba + the metrics
engine), on a generated uint8 store (10,000 images at 224 px, 8,000 of them training): in this
order, each phase only while the budget lasts,

1. the card's dense matrix rates: bf16 (training's autocast) and float32 with TF32 (evaluation is
   float32; cuDNN convolutions use TF32 by default), the denominators of the two MFUs;
2. per arch (vgg19_bn, efficientnet_lite0): an untimed warm-up (a short ft run: cuDNN's autotuning
   of every training and evaluation shape happens there, not in a timed epoch), then every mode
   for one epoch (two for ft_gradual: its first is frozen). Evaluation is timed twice: as evaluate
   runs it (host store, uploads and the host copy of the scores included) and on a batch already on
   the device (the model alone: what eval MFU divides by the TF32 rate);
3. the seed's experiment on vgg19_bn (scratch, fe, ft_classifier; 15 epochs, patience 8), cut by
   the budget less the compile's reserve;
4. last, each in its own guard (an Inductor failure is recorded, never fatal): torch.compile of ft
   for two epochs on a ragged training size (not a multiple of the batch, as real splits are), so
   the first epoch carries the compile and the ragged batch's recompile; the rows speed.COMPILE
   needs for CUDA.

The JSON (<out>/gpu-check-<card>-<size>-<date>.json) is rewritten after every run, atomically, with
`complete: false` until the end; a run cut by the budget or by an error leaves everything before
it. Every line of the log is flushed. Imports: this package's runtime, train and evaluate modules
(torch, torchvision, timm, numpy, scikit-learn, PyYAML, tqdm), nothing of DVC, pandas or
matplotlib. Run on the GPU image's torch 2.11 / torchvision 0.26 on the CPU, compile phase included
(docs/performance.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench.gpu import machine, matmul_tflops, sync
from cxr_transfer.core.params import FT_GRADUAL, SEED_MODES, TrainConfig
from cxr_transfer.evaluate.binary import point_metrics
from cxr_transfer.runtime.engine import Pass, Precision, for_inference, pick_device, predict_proba
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train.checkpoints import Checkpoints
from cxr_transfer.train.loop import Steps, Stopping, fit
from cxr_transfer.train.optim import make_optimizer, make_scheduler
from cxr_transfer.train.phases import RunContext, setup_run

MODES = {**SEED_MODES, "ft_gradual": FT_GRADUAL}
SIZES = {  # the generated store, the batch, the archs, the seed experiment's archs, the budget (s)
    "full": dict(
        n=10_000,
        size=224,
        batch=64,
        archs=("vgg19_bn", "efficientnet_lite0"),
        seed=("vgg19_bn",),
        budget=360,
        compile=("vgg19_bn", "efficientnet_lite0"),
        compile_reserve=150,  # seconds kept for the compile phase (two Inductor compiles and epochs)
        ragged=37,  # training images dropped for the compile run: 7,963 is no multiple of 64
    ),
    # the same code on the CPU in the test suite, with small archs (VGG's 100M-weight classifier
    # takes 10 s a step there); Inductor's compile on 2 CPU cores takes minutes: no compile phase
    "tiny": dict(
        n=48,
        size=32,
        batch=16,
        archs=("resnet18", "efficientnet_lite0"),
        seed=("resnet18",),
        budget=60,
        compile=(),
        compile_reserve=0,
        ragged=5,
    ),
}
SEED_EPOCHS, SEED_PATIENCE = 15, 8
WARM_BATCHES = 3  # the warm-up's training batches (plus a ragged one)


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


def device_eval_rate(model, arch: str, x: np.ndarray, device, batch: int, repeats: int = 5) -> float:
    """Images/s of the evaluation forward alone (float32, the inference memory format) on one
    batch already on the device: no upload, no host copy of the scores."""
    spec = get_spec(arch)
    forward = for_inference(model.eval(), arch, spec.mean, spec.std, device, plan=Pass(exact=False))
    xb = torch.from_numpy(np.ascontiguousarray(x[:batch, None])).to(device)
    with torch.no_grad():
        forward(xb)  # untimed: the shape's first call
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            forward(xb)
        sync(device)
    return len(xb) * repeats / (time.perf_counter() - t0)


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
        "eval_device_images_per_s": round(device_eval_rate(model, arch, x_val, device, batch), 1),
        "val_accuracy": round(m["accuracy"], 4),
        "val_auroc": None if m["auroc"] is None else round(m["auroc"], 4),
        "peak_gib": _peak_gib(device),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


class Report:
    """The check's JSON, rewritten atomically after every change, and its flushed log."""

    def __init__(self, path: Path, out: dict):
        self.path, self.out = path, out
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.out, indent=2) + "\n")
        os.replace(tmp, self.path)

    def add(self, key: str, row: dict, line: str) -> None:
        self.out[key].append(row)
        self.save()
        print(line, flush=True)


def plan(size: str, bf16_tflops: float, tf32_tflops: float) -> dict:
    """Estimated seconds of each phase at the given dense rates (TFLOP/s) and the assumed model
    FLOP utilisation (MFU): training steps at 3x the forward FLOPs on the bf16 rate, feature and
    evaluation passes on the TF32 rate, plus what no rate covers (start-up and the store, warm-ups,
    Inductor compiles) at the figures in FIXED. A forecast to size the budget, not a measurement."""
    cfg = SIZES[size]

    def mfu(arch):
        return MFU["vgg"] if arch.startswith("vgg") else MFU["other"]

    n_train, n_val = int(0.8 * cfg["n"]), cfg["n"] - int(0.8 * cfg["n"])
    gf = {a: forward_gflops(a, cfg["size"]) for a in {*cfg["archs"], *cfg["seed"], *cfg["compile"]}}

    def train_s(arch, epochs, images=n_train):
        return epochs * images * 3 * gf[arch] / 1e3 / (bf16_tflops * mfu(arch))

    def pass_s(arch, images):
        return images * gf[arch] / 1e3 / (tf32_tflops * mfu(arch))

    modes = 0.0
    for arch in cfg["archs"]:
        for m in MODES.values():  # one full epoch where every layer trains; one frozen feature pass
            frozen = m.trainable != "all" or m.freeze_epochs > 0
            full = 1 if m.trainable == "all" else 0
            modes += train_s(arch, full) + pass_s(arch, cfg["n"] if frozen else 0) + pass_s(arch, n_val)
    seed = sum(
        train_s(a, SEED_EPOCHS) + pass_s(a, n_val * (SEED_EPOCHS + 1)) + 2 * pass_s(a, cfg["n"] + n_val)
        for a in cfg["seed"]
    )
    compiled = sum(train_s(a, 2) + pass_s(a, 3 * n_val) for a in cfg["compile"])
    fixed = {
        "start_store_rates": FIXED["start"],
        "warm_ups": FIXED["warm_up"] * len(cfg["archs"]),
        "compiles": FIXED["compile"] * len(cfg["compile"]),
    }
    est = {"modes": modes, "seed_experiment": seed, "compile_epochs": compiled, **fixed}
    est = {k: round(v, 1) for k, v in est.items()}
    return {**est, "total": round(sum(est.values()), 1), "budget": cfg["budget"], "assumed_mfu": MFU}


# seconds no FLOP rate predicts: process start, imports and the 10,000-image store (measured on
# the CPU machine: 9 s), one warm-up's autotuning per arch, one Inductor compile (train and eval
# graphs, ragged batch included) per arch
FIXED = {"start": 20.0, "warm_up": 15.0, "compile": 60.0}
# assumed: VGG's large convolutions at a quarter of the card's rate; EfficientNet-Lite0's
# depthwise convolutions are bound by memory, not arithmetic (3%)
MFU = {"vgg": 0.25, "other": 0.03}
H100 = {"bf16_tflops": 989.0, "tf32_tflops": 494.0}  # dense rates of the SXM card's datasheet


def check(
    device: torch.device, size: str, path: Path, budget: float | None = None, compile_archs=None
) -> dict:
    cfg = dict(SIZES[size])
    if compile_archs is not None:  # --compile: these archs in the compile phase, with its reserve
        cfg["compile"] = tuple(get_spec(a).name for a in compile_archs)
        cfg["compile_reserve"] = max(cfg["compile_reserve"], FIXED["compile"] * len(cfg["compile"]))
    budget = cfg["budget"] if budget is None else budget
    t_start = time.perf_counter()
    deadline = t_start + budget
    prec = Precision.for_device(device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    x, y = generated_store(cfg["n"], cfg["size"])
    cut = int(0.8 * len(y))
    data = {"train": (x[:cut], y[:cut]), "val": (x[cut:], y[cut:])}
    rates = (
        {"bf16": matmul_tflops(device, 8192, 20), "tf32": matmul_tflops(device, 8192, 20, tf32=True)}
        if device.type == "cuda"
        else {}
    )
    rep = Report(
        path,
        {
            "machine": machine(device),
            "date": dt.date.today().isoformat(),
            "size": size,
            "budget_s": budget,
            "images": cfg["n"],
            "image_size": cfg["size"],
            "batch": cfg["batch"],
            "precision": str(prec.dtype or "float32"),
            "matmul_tflops": round(rates["bf16"], 1) if rates else None,
            "tf32_matmul_tflops": round(rates["tf32"], 1) if rates else None,
            "complete": False,
            "phase": "modes",
            "skipped": [],
            "warm_up_s": {},
            "runs": [],
            "seed_experiment": {"runs": []},
            "compile": {"runs": []},
        },
    )
    out = rep.out
    print(f"gpu-check: {out['machine']}; writing {path} after every run", flush=True)
    try:
        _modes(rep, data, cfg, device, prec, deadline - cfg["compile_reserve"], rates)
        out["phase"] = "seed_experiment"
        _seed_experiment(rep, data, cfg, device, prec, deadline - cfg["compile_reserve"])
    except Exception:
        out["error"] = traceback.format_exc(limit=3).strip().splitlines()[-1]
        rep.save()
        raise
    out["phase"] = "compile"
    _compile(rep, data, cfg, device, prec, deadline)
    out["phase"], out["complete"] = "done", True
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    out["peak_gib"] = _peak_gib(device)
    rep.save()
    return out


def _modes(rep: Report, data, cfg, device, prec, stop_at: float, rates: dict) -> None:
    """Per arch: an untimed warm-up, then every mode for one epoch (ft_gradual two)."""
    for arch in cfg["archs"]:
        if time.perf_counter() > stop_at:
            rep.out["skipped"].append(f"{arch}: every mode (budget)")
            continue
        gflops = forward_gflops(arch, cfg["size"])
        t0 = time.perf_counter()
        k = WARM_BATCHES * cfg["batch"] + cfg["ragged"]
        few = {"train": tuple(a[:k] for a in data["train"]), "val": tuple(a[:k] for a in data["val"])}
        run_mode(arch, "ft", few, cfg["batch"], 1, 2, device, prec)
        rep.out["warm_up_s"][arch] = round(time.perf_counter() - t0, 1)
        for mode in MODES:
            if time.perf_counter() > stop_at:
                rep.out["skipped"].append(f"{arch}-{mode} (budget)")
                continue
            epochs = MODES[mode].freeze_epochs + 1
            r = run_mode(arch, mode, data, cfg["batch"], epochs, epochs + 1, device, prec)
            full = MODES[mode].trainable == "all"  # the last epoch trains every layer
            r["forward_gflops"] = round(gflops, 4)
            if rates:  # training against the bf16 rate, evaluation (float32: TF32) against TF32's
                train = r["train_images_per_s"][-1] * 3 * gflops / 1e3
                r["train_mfu"] = round(train / rates["bf16"], 3) if full else None
                r["eval_mfu"] = round(r["eval_device_images_per_s"] * gflops / 1e3 / rates["tf32"], 3)
            rep.add("runs", r, _line(r))


def _seed_experiment(rep: Report, data, cfg, device, prec, stop_at: float) -> None:
    seed = rep.out["seed_experiment"]
    t0 = time.perf_counter()
    seed["budget_s"] = round(max(0.0, stop_at - t0), 1)
    for arch in cfg["seed"]:
        for mode in ("scratch", "fe", "ft_classifier"):
            if time.perf_counter() > stop_at:
                rep.out["skipped"].append(f"seed experiment {arch}-{mode} (budget)")
                continue
            r = run_mode(arch, mode, data, cfg["batch"], SEED_EPOCHS, SEED_PATIENCE, device, prec, stop_at)
            seed["runs"].append(r)
            seed["elapsed_s"] = round(time.perf_counter() - t0, 2)
            rep.save()
            print("seed experiment: " + _line(r), flush=True)
    seed["elapsed_s"] = round(time.perf_counter() - t0, 2)
    rep.save()


def _compile(rep: Report, data, cfg, device, prec, deadline: float) -> None:
    """torch.compile for training, per arch, each guarded: ft for two epochs with the compiled
    model on a ragged training size (the first epoch carries the compile and the ragged batch's
    recompile), against the eager ft run; the rows speed.COMPILE needs for this device type."""
    from cxr_transfer.runtime import speed

    ragged = {"train": tuple(a[: len(a) - cfg["ragged"]] for a in data["train"]), "val": data["val"]}
    rows = rep.out["compile"]["runs"]
    for arch in cfg["compile"]:
        eager = next((r for r in rep.out["runs"] if r["arch"] == arch and r["mode"] == "ft"), None)
        if eager is None or time.perf_counter() + FIXED["compile"] > deadline:
            why = "no eager run" if eager is None else "budget"
            rep.out["skipped"].append(f"{arch}-ft compiled ({why})")
            rep.save()
            continue
        try:
            r = run_mode(arch, "ft", ragged, cfg["batch"], 2, 3, device, prec, compile_model=True)
        except Exception as e:  # an Inductor failure is a finding, not the end of the check
            traceback.print_exc()
            failed = {"arch": arch, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
            rep.out["compile"].setdefault("errors", []).append(failed)
            rep.save()
            print(f"{arch}-ft compiled: failed ({failed['error']})", flush=True)
            continue
        row = {
            "arch": arch,
            "size": cfg["size"],
            "train_images": len(ragged["train"][1]),
            "eager_images_per_s": eager["train_images_per_s"][-1],
            "compiled_images_per_s": r["train_images_per_s"][-1],
            "compile_seconds": round(r["epoch_seconds"][0] - r["epoch_seconds"][1], 1),
            "compiled_val_accuracy": r["val_accuracy"],
        }
        rows.append(row)
        rep.out["compile"]["derived_compile_rule"] = {device.type: speed.derive_compile_rule(rows)}
        rep.save()
        print(
            f"{arch}-ft compiled: {row['compiled_images_per_s']} img/s (eager {row['eager_images_per_s']}) "
            f"after a {row['compile_seconds']} s compile",
            flush=True,
        )


def _line(r: dict) -> str:
    mfu = f", train MFU {r['train_mfu']:.1%}" if r.get("train_mfu") is not None else ""
    peak = f", peak {r['peak_gib']} GiB" if r["peak_gib"] is not None else ""
    return (
        f"{r['arch']}-{r['mode']}: {r['epochs_run']} epoch(s), train {r['train_images_per_s'][-1]} img/s"
        f"{mfu}, eval {r['eval_images_per_s']} img/s ({r['eval_device_images_per_s']} on the device)"
        f"{peak}, {r['wall_s']} s"
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--device", default="cuda", help="cuda (the GPU day) or cpu (the tiny check in the tests)"
    )
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", type=Path, help="the folder the JSON goes to (the GPU machine's $OUT)")
    ap.add_argument("--budget", type=float, help="seconds for the whole check (default: the size's)")
    ap.add_argument("--plan", action="store_true", help="print the planned work's H100 estimate and exit")
    ap.add_argument(
        "--compile",
        type=lambda v: [a for a in v.split(",") if a],
        help="archs for the compile phase, comma-separated (default: the size's; tiny has none), "
        "e.g. --device cpu --size tiny --compile efficientnet_lite0 --budget 300 (Inductor on 2 "
        "CPU cores: about a minute)",
    )
    args = ap.parse_args(argv)
    if args.plan:
        est = plan(args.size, **H100)
        print(json.dumps(est, indent=2))
        return est
    if args.out is None:
        ap.error("--out is required: the folder to write the JSON to (on the GPU machine, $OUT)")
    device = pick_device(args.device, "--device")
    card = machine(device).get("card", device.type).replace(" ", "_")
    path = args.out / f"gpu-check-{card}-{args.size}-{dt.date.today().isoformat()}.json"
    out = check(device, args.size, path, args.budget, args.compile)
    print(
        f"gpu-check: {len(out['runs'])} runs, {len(out['seed_experiment']['runs'])} of the seed experiment "
        f"and {len(out['compile']['runs'])} compiled in {out['wall_s']} s ({out['precision']}; matmul "
        f"{out['matmul_tflops']} TFLOP/s bf16, {out['tf32_matmul_tflops']} TF32); wrote {path}",
        flush=True,
    )
    return out


if __name__ == "__main__":
    from cxr_transfer.core.cli import run

    run(main, "gpu-check")  # a bad --device is one line; an error on a CUDA path keeps its traceback
