"""Benchmark cases of the CPU rules: training and inference rates per architecture and size, ONNX
Runtime against PyTorch, torch.compile's cold and warm cost, and the effect of keeping freed
memory; the measurements speed.py's rules are derived from."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.data_cases import _median_rate
from cxr_transfer.runtime.batches import Normalizer
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.models import build_model, get_spec

ROOT = Path(__file__).resolve().parents[1]


def onnx_inference(work: Path, n: int, sizes, reps: int = 3, arch: str = "efficientnet_lite0") -> dict:
    """CPU inference images/s of the exported model in ONNX Runtime against the same model in
    PyTorch (float32, batch 64, after a warm batch), per image size; and the wall-clock time of
    `cxr-transfer predict` on one image, interpreter start included, through each runtime (the
    ONNX path imports no torch): the best of `reps` runs."""
    from cxr_transfer.serve.export import Probabilities, card, export_onnx, parity

    spec = get_spec(arch)
    net = build_model(arch, "weights", 2, 0).eval()
    wrapped = Probabilities(net, spec.mean, spec.std)
    out = {"arch": arch, "images": n, "threads": torch.get_num_threads(), "sizes": []}
    rng = np.random.default_rng(0)
    for size in sizes:
        folder = work / f"onnx-{size}"
        how = export_onnx(wrapped, size, folder / "model.onnx")
        check = parity(folder / "model.onnx", wrapped, rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        out["sizes"].append({"size": size, "exporter": how, **check})
    size = sizes[0]
    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    torch.save(net.state_dict(), model_dir / "best.pt")
    meta = {"arch": arch, "mode": "fe", "classes": ["Normal", "Covid"], "image_size": size}
    meta |= {"mean": list(spec.mean), "std": list(spec.std)}
    (model_dir / "model.json").write_text(json.dumps(meta))
    exported = work / f"onnx-{size}"
    (exported / "card.json").write_text(
        json.dumps(card(ModelInfo.from_json(meta), {}, {}, None, "Covid", {}, ""))
    )
    img = work / "one.png"
    Image.fromarray(rng.integers(0, 256, (299, 299), dtype=np.uint8)).save(img)
    for name, model in (("pytorch", model_dir), ("onnxruntime", exported)):
        cmd = [sys.executable, "-m", "cxr_transfer", "predict", str(img), "--model", str(model)]
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--out", str(work / "p.csv")], check=True, capture_output=True, cwd=ROOT)
            times.append(time.perf_counter() - t0)
        out[f"predict_one_image_seconds_{name}"] = round(min(times), 2)
    return out


def cpu_train(
    archs, sizes, train_batch: int, infer_batch: int, sweep: tuple[int, ...], steps: int, heap: list[dict]
) -> dict:
    """CPU images/s per arch and image size, with the heap kept as the torch stages keep it
    (cxr_transfer.runtime.speed.keep_freed_memory): training steps (forward, backward, SGD step, batch
    `train_batch`) and inference (no_grad, batch `infer_batch`) in NCHW and channels_last float32;
    channels_last inference at each batch of `sweep`; channels_last bf16 autocast where the CPU
    has native bf16. Each figure is the median of `steps` timed batches after a warm one, random
    weights (the speed does not depend on their values). Also the largest |logit| difference
    between the two formats on one batch (they compute the same function), and the rules
    cxr_transfer.runtime.speed derives for the row, for comparison. First, `heap_effect` for each of
    `heap` (in fresh processes, so before this one keeps its heap)."""
    from cxr_transfer.runtime import speed

    heap_rows = [heap_effect(**h) for h in heap]
    kept = speed.keep_freed_memory()
    bf16 = speed.cpu_bf16()
    out = {"threads": torch.get_num_threads(), "steps": steps, "heap_kept": kept, "cpu_bf16": bf16}
    out |= {"heap": heap_rows, "runs": []}
    for arch in archs:
        for size in sizes:
            row = {"arch": arch, "size": size}
            logits = {}
            for fmt in ("nchw", "channels_last"):
                mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
                net = build_model(arch, None, 2, 0).to(memory_format=mf)
                g = torch.Generator().manual_seed(0)  # the same images in both formats
                x = torch.randn(max(infer_batch, *sweep), 3, size, size, generator=g).contiguous(
                    memory_format=mf
                )
                net.eval()
                with torch.no_grad():
                    logits[fmt] = net(x[:infer_batch])  # before any step: both formats hold the same weights
                row[f"infer_{fmt}"] = _infer_rate(net, x[:infer_batch], steps)
                row[f"train_{fmt}"] = _train_rate(net, x[:train_batch], steps)
                if fmt == "channels_last":
                    net = build_model(arch, None, 2, 0).to(memory_format=mf)
                    row["infer_by_batch"] = {b: _infer_rate(net, x[:b], steps) for b in sweep}
                    if bf16:
                        row["infer_bf16"] = _infer_rate(net, x[:infer_batch], steps, torch.bfloat16)
                        row["train_bf16"] = _train_rate(net, x[:train_batch], steps, torch.bfloat16)
            row["infer_ratio"] = round(row["infer_channels_last"] / row["infer_nchw"], 2)
            row["train_ratio"] = round(row["train_channels_last"] / row["train_nchw"], 2)
            if bf16:
                row["bf16_infer_ratio"] = round(row["infer_bf16"] / row["infer_channels_last"], 2)
                row["bf16_train_ratio"] = round(row["train_bf16"] / row["train_channels_last"], 2)
            row["max_abs_logit_diff"] = float((logits["nchw"] - logits["channels_last"]).abs().max())
            row["rule_train_channels_last"] = speed.channels_last(arch, "cpu", training=True)
            row["rule_infer_batch"] = speed.inference_batch("cpu", size)
            out["runs"].append(row)
    out["derived_train_channels_last"] = speed.derive_cpu_rules(out["runs"])
    out["rules_match"] = out["derived_train_channels_last"] == {
        f: v for f, v in speed.CPU_TRAIN_CHANNELS_LAST.items() if f in out["derived_train_channels_last"]
    }
    return out


def cpu_infer(archs, sizes, images: dict, reps: int) -> dict:
    """CPU inference per arch and size, PyTorch against ONNX Runtime on an in-memory export of the
    same live model (cxr_transfer.runtime.onnxrt): images/s of each over `n` random images in the
    pass's own batches (median of `reps` passes after a warm batch), the export's seconds, a new
    session's seconds (what each epoch's validation pays once the weights changed), the largest
    logit difference, and the rule speed.onnx_pays draws from these rows. `images`: per size.
    The heap is kept as the torch stages keep it (speed.keep_freed_memory): without it PyTorch
    ran the 96 px EfficientNet pass at 226 img/s here, with it at 413 (and ONNX Runtime at 478-509:
    the comparison is only fair as the stages run).
    A warm-up export first, so that no row carries the exporter's one-off import."""
    from cxr_transfer.runtime import onnxrt, speed
    from cxr_transfer.runtime.engine import for_inference

    cpu = torch.device("cpu")
    res = subprocess.run(  # a fresh process, as a stage is: its first export also starts the exporter
        [sys.executable, "-c", "from bench.cpu_cases import _exporter_start; _exporter_start()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    onnxrt.OnnxForward(build_model("resnet18", None, 2, 0).eval(), (0.5,) * 3, (0.5,) * 3, 32)  # warm here
    kept = speed.keep_freed_memory()  # as every torch stage runs: PyTorch's rate with the heap kept
    out = {"threads": torch.get_num_threads(), "reps": reps, "heap_kept": kept, "runs": []}
    out["exporter_start_seconds"] = json.loads(res.stdout.strip().splitlines()[-1])
    for arch in archs:
        spec = get_spec(arch)
        for size in sizes:
            n = images[size]
            row = {"arch": arch, "size": size, "images": n, "batch": speed.inference_batch("cpu", size)}
            net = build_model(arch, None, 2, 0).eval()
            x = torch.from_numpy(
                np.random.default_rng(0).integers(0, 256, (n, 1, size, size), dtype=np.uint8)
            )
            chunks = torch.split(x, row["batch"])
            torch_fwd = for_inference(net, arch, spec.mean, spec.std, cpu)  # images=0: PyTorch

            def run(fwd, chunks=chunks):
                with torch.no_grad():
                    return torch.cat([fwd(b) for b in chunks])

            run_torch = lambda f=torch_fwd: run(f)  # noqa: E731
            ref = run_torch()
            row["pytorch_images_per_s"] = round(_median_rate(run_torch, n, reps), 1)
            t0 = time.perf_counter()
            try:
                ort_fwd = onnxrt.OnnxForward(net, spec.mean, spec.std, size)
            except Exception as e:  # noqa: BLE001 - recorded: the rule then keeps PyTorch
                row["export_error"] = str(e)
                out["runs"].append(row)
                continue
            row["export_seconds"] = round(time.perf_counter() - t0, 2)
            with torch.no_grad():
                next(net.parameters()).add_(0)  # a changed weight: the next call makes a new session
            t0 = time.perf_counter()
            ort_fwd.session()
            row["session_seconds"] = round(time.perf_counter() - t0, 3)
            run_ort = lambda f=ort_fwd: run(f)  # noqa: E731
            row["max_abs_logit_diff"] = float((run_ort() - ref).abs().max())
            row["onnxruntime_images_per_s"] = round(_median_rate(run_ort, n, reps), 1)
            row["ratio"] = round(row["onnxruntime_images_per_s"] / row["pytorch_images_per_s"], 2)
            row["break_even_images"] = speed.break_even(row)
            out["runs"].append(row)
    out["derived_onnx_rule"] = speed.derive_onnx_rule(out["runs"])
    return out


def cpu_compile(archs, size: int, batch: int, steps: int) -> dict:
    """torch.compile for training on the CPU, per arch at `size`, each in fresh processes as the
    train stage runs (heap kept): eager and compiled training images/s (forward, backward, SGD
    step, batch `batch`, the training memory format; median of `steps` steps after a warm one) and
    the compile's seconds (the compiled model's first step less an eager step), cold (an empty
    inductor cache, a machine's first run) and warm (the cache the cold run filled: later runs of
    the same model and shapes). The rule speed.compile_pays counts the cold compile."""
    from cxr_transfer.runtime import speed

    out = {"threads": torch.get_num_threads(), "size": size, "batch": batch, "steps": steps, "runs": []}
    for arch in archs:
        row = {"arch": arch, "size": size}
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            for run in ("cold", "warm"):
                args = f"{arch!r}, {size}, {batch}, {steps}"
                code = f"from bench.cpu_cases import _compile_probe; _compile_probe({args})"
                res = subprocess.run(
                    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
                )
                if res.returncode != 0:
                    row["compile_error"] = (res.stderr.strip().splitlines() or ["failed"])[-1]
                    break
                got = json.loads(res.stdout.strip().splitlines()[-1])
                if run == "cold":
                    row |= got
                else:
                    row["warm_compile_seconds"] = got["compile_seconds"]
        if "compile_error" not in row:
            row["ratio"] = round(row["compiled_images_per_s"] / row["eager_images_per_s"], 2)
            gain = 1 / row["eager_images_per_s"] - 1 / row["compiled_images_per_s"]
            row["pays_from_images"] = math.ceil(row["compile_seconds"] / gain) if gain > 0 else None
        out["runs"].append(row)
    out["derived_compile_rule"] = speed.derive_compile_rule(out["runs"])
    return out


def train_step(arch: str, size: int, batch: int, steps: int, top: int = 8) -> dict:
    """Where one training step's time goes, as the train stage runs it on the CPU (heap kept, the
    training memory format, Adam as the ft mode has it): the step's parts (forward and loss,
    backward, optimizer; ms, medians of `steps`), images/s on one thread and on all, the
    profiler's `top` operators by their own time (ms a step, share), and Adam's step three ways:
    per tensor, multi-tensor (foreach) and fused, each with whether its weights after three steps
    equal the per-tensor step's bit for bit."""
    from torch.profiler import ProfilerActivity, profile

    from cxr_transfer.core.params import ModeConfig
    from cxr_transfer.runtime import speed
    from cxr_transfer.train.optim import make_optimizer

    speed.keep_freed_memory()
    mf = torch.channels_last if speed.channels_last(arch, "cpu", training=True) else torch.contiguous_format
    net = build_model(arch, None, 2, 0).to(memory_format=mf).train()
    mode = ModeConfig(pretrained=False, trainable="all", optimizer="adam", lr=1e-3, weight_decay=1e-5)
    opt = make_optimizer(net.parameters(), mode)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=mf)
    y = torch.arange(batch) % 2
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def step(record: bool = False):
        t = [time.perf_counter()]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        if record:
            for k, a, b in zip(parts, t, t[1:], strict=False):
                parts[k].append(1000 * (b - a))

    threads = torch.get_num_threads()
    rates = {}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        rates[str(n)] = round(_median_rate(step, batch, steps), 1)
    torch.set_num_threads(threads)
    for _ in range(steps):
        step(record=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops)
    out = {
        "arch": arch,
        "size": size,
        "batch": batch,
        "threads": threads,
        "memory_format": "channels_last" if mf == torch.channels_last else "nchw",
        "parts_ms": {k: round(float(np.median(v)), 1) for k, v in parts.items()},
        "images_per_s_by_threads": rates,
        "top_ops": [
            {
                "op": e.key,
                "ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 1),
                "share": round(e.self_cpu_time_total / total, 3),
            }
            for e in ops[:top]
        ],
        "adam": _adam_ways(net, steps),
    }
    return out


def _adam_ways(net, steps: int) -> dict:
    """Adam's step over `net`'s parameters per tensor, multi-tensor and fused: ms (median of
    `steps`) and whether three steps on the same gradients give the per-tensor step's weights."""
    start = [p.detach().clone() for p in net.parameters()]
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) * 1e-2 for p in start] for _ in range(3)]
    out, ref = {}, None
    for way, kw in (
        ("per_tensor", {"foreach": False}),
        ("multi_tensor", {"foreach": True}),
        ("fused", {"fused": True}),
    ):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-5, **kw)
        times = []
        for i in range(max(3, steps)):
            for p, g in zip(ps, grads[i % 3], strict=True):
                p.grad = g.clone()
            t0 = time.perf_counter()
            opt.step()
            times.append(1000 * (time.perf_counter() - t0))
            if i == 2:
                after = [p.detach().clone() for p in ps]
        ref = after if ref is None else ref
        same = all(torch.equal(a, b) for a, b in zip(ref, after, strict=True))
        out[way] = {"ms": round(float(np.median(times)), 2), "same_weights": same}
    return out


def _compile_probe(arch: str, size: int, batch: int, steps: int) -> None:
    """Prints one arch's eager and compiled training rates and compile seconds (a fresh process)."""
    from cxr_transfer.runtime import speed

    speed.keep_freed_memory()
    cl = speed.channels_last(arch, "cpu", training=True)
    mf = torch.channels_last if cl else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=mf)
    eager = _train_rate(build_model(arch, None, 2, 0).to(memory_format=mf), x, steps)
    compiled = torch.compile(build_model(arch, None, 2, 0).to(memory_format=mf))
    t0 = time.perf_counter()
    _train_rate(compiled, x, 0)  # the warm step is the compile
    seconds = round(time.perf_counter() - t0 - batch / eager, 1)
    rate = _train_rate(compiled, x, steps)
    print(
        json.dumps({"eager_images_per_s": eager, "compiled_images_per_s": rate, "compile_seconds": seconds})
    )


def _exporter_start() -> None:
    """Prints the seconds a process's first in-memory export takes beyond its second (the
    exporter's and ONNX Runtime's imports and start), in a process that has what a stage has."""
    from cxr_transfer.runtime import engine, onnxrt  # noqa: F401 - what the stages import

    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        onnxrt.OnnxForward(build_model("resnet18", None, 2, 0).eval(), (0.5,) * 3, (0.5,) * 3, 32)
        times.append(time.perf_counter() - t0)
    print(round(times[0] - times[1], 2))


def _infer_rate(net, x, steps: int, dtype=None) -> float:
    net.eval()
    amp = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()

    def infer():
        with torch.no_grad(), amp:
            net(x)

    infer()  # warm
    return round(_median_rate(infer, len(x), steps), 1)


def _train_rate(net, x, steps: int, dtype=None) -> float:
    net.train()
    y = torch.arange(len(x)) % 2
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            out = net(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()

    step()  # warm (with steps=0, only that: the first step of a compiled model is its compile)
    return round(_median_rate(step, len(x), steps), 1) if steps else None


def heap_effect(arch: str, size: int, batch: int, n: int) -> dict:
    """The feature pass's inference (channels_last, float32) over n images with glibc's default
    heap and with the heap kept (cxr_transfer.runtime.speed.keep_freed_memory), each in a fresh process:
    images/s of a second pass, its minor page faults and its user and kernel seconds."""
    out = {"arch": arch, "size": size, "batch": batch, "images": n}
    for keep in (False, True):
        code = f"from bench.cpu_cases import _heap_probe; _heap_probe({arch!r}, {size}, {batch}, {n}, {keep})"
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        out["kept" if keep else "default"] = json.loads(res.stdout.strip().splitlines()[-1])
    out["ratio"] = round(out["kept"]["images_per_s"] / out["default"]["images_per_s"], 2)
    return out


def _heap_probe(arch: str, size: int, batch: int, n: int, keep: bool) -> None:
    import resource

    from cxr_transfer.runtime import speed

    if keep:
        assert speed.keep_freed_memory()
    net = build_model(arch, None, 2, 0).eval().to(memory_format=torch.channels_last)
    spec = get_spec(arch)
    norm = Normalizer(spec.mean, spec.std, reuse=True)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8)

    def one_pass():
        with torch.no_grad():
            for i in range(0, n, batch):
                net(norm(x[i : i + batch]).contiguous(memory_format=torch.channels_last))

    one_pass()  # warm: the first pass faults in whatever it keeps
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    one_pass()
    t, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "images_per_s": round(n / t, 1),
                "minor_faults": r1.ru_minflt - r0.ru_minflt,
                "user_s": round(r1.ru_utime - r0.ru_utime, 2),
                "kernel_s": round(r1.ru_stime - r0.ru_stime, 2),
            }
        )
    )
