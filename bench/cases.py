"""CPU benchmark cases: each runs the seed's way and ours on the same generated images."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from bench.seed import seed_fe_train, seed_loader
from cxr_transfer.core.params import ModeConfig, TrainConfig
from cxr_transfer.data.index import build_index
from cxr_transfer.data.prepare import decode_split
from cxr_transfer.data.synth import render_cxr
from cxr_transfer.runtime.batches import Normalizer
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.engine import Precision
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train.checkpoints import Checkpoints
from cxr_transfer.train.loop import Steps, Stopping, fit
from cxr_transfer.train.optim import make_optimizer
from cxr_transfer.train.phases import RunContext, image_batches, setup_run

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"Normal": ("NORMAL",), "Covid": ("COVID",)}


def _png(args):
    path, size, label, i = args
    rng = np.random.default_rng([7, label, i])
    a = render_cxr(rng, min(size, 128), covid=bool(label))
    if size != a.shape[0]:
        a = np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR))
    Image.fromarray(a).save(path)


def make_pngs(folder: Path, n: int, size: int) -> tuple[list[str], list[int]]:
    """n synthetic radiographs at size x size, half per class, written in parallel."""
    jobs = []
    for i in range(n):
        label = i % 2
        d = folder / ("COVID" if label else "NORMAL")
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((str(d / f"img-{i:05d}.png"), size, label, i))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_png, jobs, chunksize=32))
    return [j[0] for j in jobs], [j[2] for j in jobs]


def _median_rate(fn, n_items: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_items / statistics.median(times)


def input_pipeline(work: Path, n: int, size: int, reps: int) -> dict:
    """Images/s of one epoch of batches: the seed's per-item PIL DataLoader vs our store slices."""
    paths, labels = make_pngs(work / f"input{size}", n, 299)
    spec = get_spec("efficientnet_lite0")
    loader = seed_loader(paths, labels, size, spec.mean, spec.std)
    seed = _median_rate(lambda: [None for _ in loader], n, reps)
    t0 = time.perf_counter()
    x = decode_split(paths, size, workers=0, desc=f"prepare {size}")
    prepare_s = time.perf_counter() - t0
    norm = Normalizer(spec.mean, spec.std, reuse=True)  # as the training loop does on the CPU
    batches = image_batches(x, np.array(labels), 32, "cpu", shuffle=True)
    ours = _median_rate(lambda: [norm(xb) for xb, _ in batches], n, reps)
    return {
        "images": n,
        "size": size,
        "seed_images_per_s": round(seed, 1),
        "ours_images_per_s": round(ours, 1),
        "ratio": round(ours / seed, 1),
        "ours_prepare_once_s": round(prepare_s, 2),
        "target_ratio": 20,
    }


def feature_extraction(work: Path, n: int, size: int, epochs: int) -> dict:
    """Wall time of `fe` for `epochs`: the seed's loop vs ours (features once), same arch and data."""
    paths, labels = make_pngs(work / "fe", n, 128)
    n_val = n // 5
    spec = get_spec("efficientnet_lite0")
    tr = seed_loader(paths[n_val:], labels[n_val:], size, spec.mean, spec.std)
    va = seed_loader(paths[:n_val], labels[:n_val], size, spec.mean, spec.std, shuffle=False)
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", "weights", 2, seed=0)
    t0 = time.perf_counter()
    seed_acc = seed_fe_train(model, model.classifier, tr, va, epochs)
    seed_s = time.perf_counter() - t0

    torch.manual_seed(0)
    t0 = time.perf_counter()
    x, y = decode_split(paths, size, workers=0), np.array(labels)
    data = {"train": (x[n_val:], y[n_val:]), "val": (x[:n_val], y[:n_val])}
    model = build_model("efficientnet_lite0", "weights", 2, seed=0)
    cpu, prec = torch.device("cpu"), Precision(None, False)
    mode = ModeConfig(pretrained=True, trainable="head", optimizer="adam", lr=1e-3, weight_decay=1e-5)
    rs = setup_run(model, spec, data, mode, TrainConfig(epochs=epochs, batch_size=32), RunContext(cpu, prec))
    opt = make_optimizer(rs.loop.trained.parameters(), mode)
    state = fit(
        rs.phases, Steps(opt, prec, cpu), Stopping(epochs, epochs + 1), Checkpoints(work / "fe-ck", "b")
    )
    ours_s = time.perf_counter() - t0
    return {
        "images": n,
        "size": size,
        "epochs": epochs,
        "seed_seconds": round(seed_s, 2),
        "ours_seconds": round(ours_s, 2),
        "ratio": round(seed_s / ours_s, 1),
        "seed_val_acc": round(seed_acc, 3),
        "ours_val_acc": round(state.history[-1].val_acc, 3),
        "target_ratio": 10,
    }


def indexing(work: Path, n: int) -> dict:
    """Files/s of the index stage's library call on n 299x299 PNGs (generation not timed)."""
    make_pngs(work / "index", n, 299)
    t0 = time.perf_counter()
    df, _ = build_index(work / "index", CLASSES, 50_000_000, workers=0)
    secs = time.perf_counter() - t0
    return {
        "files": len(df),
        "seconds": round(secs, 2),
        "files_per_s": round(len(df) / secs, 1),
        "target_seconds_for_10000": 60,
        "projected_seconds_for_10000": round(10_000 * secs / len(df), 1),
    }


_PEAK = (
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); "
    "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
)


def dataset_scale(work: Path, n: int, prepare_size: int) -> dict:
    """The index, split and prepare stages, as `dvc repro` runs them, on n generated 299x299 PNGs
    (the COVID-19 Radiography Database's size and resolution; generation not timed): seconds per
    stage and the peak resident memory of its largest process (Linux ru_maxrss, KiB)."""
    root = work / "scale"
    make_pngs(root, n, 299)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(root)
    params["prepare"]["image_size"] = prepare_size
    (work / "scale-params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = work / "scale-out"
    p = ["--params", str(work / "scale-params.yaml")]
    commands = {
        "index": ["stages.index", *p, "--out", f"{out}/data.csv", "--report", f"{out}/index.json"],
        "split": [
            "stages.split",
            *p,
            "--data",
            f"{out}/data.csv",
            "--out",
            f"{out}/split",
            "--metrics",
            f"{out}/s.json",
        ],
        "prepare": ["stages.prepare", *p, "--splits", f"{out}/split", "--out", f"{out}/prepared"],
    }
    stages = {}
    for name, cmd in commands.items():
        r = subprocess.run(
            [sys.executable, "-c", _PEAK, sys.executable, "-m", *cmd],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        secs, kib = json.loads(r.stdout.strip().splitlines()[-1])
        stages[name] = {"seconds": round(secs, 2), "peak_rss_mib": round(kib / 1024, 1)}
    total = sum(v["seconds"] for v in stages.values())
    return {
        "images": n,
        "prepare_size": prepare_size,
        "stages": stages,
        "total_seconds": round(total, 1),
        "peak_rss_mib": max(v["peak_rss_mib"] for v in stages.values()),
        "target_seconds": 120,
    }


def _sh(cwd: Path, *cmd: str) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


PROJECT = ("stages", "cxr_transfer", "weights", ".dvc", "dvc.yaml", "params.yaml")


def demo(work: Path, params: dict | None = None, rev: str | None = None) -> dict:
    """A cold `dvc repro` of the demo in a fresh copy of the project (one run, per-stage times from
    its log), then a no-op; each run's test accuracy and AUROC beside. `rev`: the project as a git
    revision had it (a before/after on one machine), else the working tree."""
    dst = work / "demo"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    if rev is not None:
        tar = subprocess.run(["git", "archive", rev, *PROJECT], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dst)], input=tar.stdout, check=True)
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files if rev is None else []:
        if f.startswith(tuple(p + "/" for p in PROJECT[:4])) or f in PROJECT[4:]:
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    if params:
        p = yaml.safe_load((dst / "params.yaml").read_text())
        for (section, key), value in params.items():
            p[section][key] = value
        (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"],
    ):
        _sh(dst, *cmd)
    stages, total = _timed_repro(dst)
    noop = _sh(dst, "dvc", "repro")
    return {
        "rev": rev or "working tree",
        "stages": stages,
        "training": _training_rates(dst),
        "test": _test_figures(dst),
        "cold_total_seconds": round(total, 1),
        "noop_seconds": round(noop, 2),
        "target_cold_seconds": 180,
        "target_noop_seconds": 5,
    }


DECODE_STAGES = ("synthesize", "index", "split", "prepare", "probe")


def folds_cost(work: Path, k: int, params: dict | None = None, single: dict | None = None) -> dict:
    """Cold `dvc repro` of the demo with one split and with k folds: the stages that decode and
    probe (they must not cost k times), the training stages, and the issue's bound on the k-fold
    run: k x the one-split training time plus a fixed part under a minute. `single`: the demo
    case's result with the same params, reused for the one-split run."""
    runs = {}
    for folds in (None, k):
        if folds is None and single is not None:
            r = single
        else:
            r = demo(work, {**(params or {}), ("split", "folds"): folds})
        st = r["stages"]
        runs["single" if folds is None else f"k{k}"] = {
            "cold_total_seconds": r["cold_total_seconds"],
            "decode_and_probe_seconds": round(sum(v for n, v in st.items() if n in DECODE_STAGES), 2),
            "train_seconds": round(sum(v for n, v in st.items() if n.startswith("train@")), 2),
            "evaluate_seconds": round(sum(v for n, v in st.items() if n.startswith("evaluate@")), 2),
            "stages": st,
        }
    one, many = runs["single"], runs[f"k{k}"]
    bound = k * one["train_seconds"] + 60
    return {
        "k": k,
        **runs,
        "decode_and_probe_ratio": round(
            many["decode_and_probe_seconds"] / one["decode_and_probe_seconds"], 2
        ),
        "bound_seconds": round(bound, 1),
        "within_bound": many["cold_total_seconds"] <= bound,
        "fixed_part_seconds": round(many["cold_total_seconds"] - k * one["train_seconds"], 1),
    }


def _training_rates(project: Path) -> dict[str, dict]:
    """Each run's training seconds and images/s as its model.json states them."""
    keys = ("train_seconds", "feature_seconds", "images_per_s", "precision", "memory_format")
    out = {}
    for meta in sorted(project.glob("models/*/model.json")):
        m = json.loads(meta.read_text())
        out[meta.parent.name] = {k: m.get(k) for k in keys}
    return out


def _test_figures(project: Path) -> dict[str, dict]:
    """Each run's test accuracy and AUROC (the before/after's check that results held)."""
    out = {}
    for f in sorted(project.glob("eval/*/metrics.json")):
        m = json.loads(f.read_text())
        out[f.parent.name] = {k: m.get(k) for k in ("accuracy", "auroc", "n_test")}
    return out


def _timed_repro(cwd: Path) -> tuple[dict[str, float], float]:
    """One `dvc repro`, as a user runs it: its wall time, and each stage's from the moment DVC
    prints "Running stage '<name>'" to the next such line (the last: to the end; DVC's own
    bookkeeping between stages falls in the stage before)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",  # each line when it is printed, not when a pipe buffer fills
    }
    t0 = time.perf_counter()
    starts: list[tuple[str, float]] = []
    with subprocess.Popen(
        ["dvc", "repro"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            if line.startswith("Running stage '"):
                starts.append((line.split("'")[1], time.perf_counter()))
    end = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro failed in {cwd}")
    ends = [t for _, t in starts[1:]] + [end]
    return {n: round(e - t, 2) for (n, t), e in zip(starts, ends, strict=True)}, end - t0


def near_duplicates(n: int, copies: int, limits: tuple[int, ...] = (12, 24), seed: int = 0) -> dict:
    """Seconds to find every pair within each hash's limit (the split stage's two searches: the
    whole-image pHash at 12 bits, the framed one at 24) among n random 256-bit hashes plus
    `copies` planted near copies (0..limit bits flipped), and how many planted pairs were found."""
    from cxr_transfer.data.neardup import near_pairs

    out = {"hashes": n + copies, "planted": copies, "searches": []}
    for k, max_bits in enumerate(limits):
        rng = np.random.default_rng([seed, k])
        bits = rng.integers(0, 2, (n, 256), dtype=np.uint8)
        src = rng.integers(0, n, copies)
        planted = bits[src].copy()
        for row in planted:
            row[rng.choice(256, rng.integers(0, max_bits + 1), replace=False)] ^= 1
        t0 = time.perf_counter()
        i, j, _ = near_pairs(np.concatenate([bits, planted]), max_bits)
        secs = time.perf_counter() - t0
        found = set(zip(i.tolist(), j.tolist(), strict=True))
        hit = sum((int(s), n + q) in found for q, s in enumerate(src))
        out["searches"].append({"max_bits": max_bits, "seconds": round(secs, 2), "planted_found": hit})
    out["seconds"] = round(sum(r["seconds"] for r in out["searches"]), 2)
    out["planted_found"] = min(r["planted_found"] for r in out["searches"])
    out["target_seconds"] = 60
    return out


def probe_stage(n: int, size: int, seed: int = 0) -> dict:
    """Seconds of the probe stage's work apart from the feature pass, on n images at `size`:
    thumbnail and acquisition logistic regressions with bootstrap intervals, and the near-duplicate
    search (train 80%, test 20%)."""
    import pandas as pd

    from cxr_transfer.audit import probes
    from cxr_transfer.data.acquisition import pixel_facts

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    facts = [pixel_facts(a) for a in x[:: max(1, n // 500)]]  # facts per image, as index computes them
    table = pd.DataFrame([facts[k % len(facts)] for k in range(n)]).assign(
        width=299,
        height=299,
        format="PNG",
        mode="L",
        bytes=rng.integers(50_000, 90_000, n),
        phash=["".join(rng.choice(list("0123456789abcdef"), 64)) for _ in range(n)],
        phash_framed=["".join(rng.choice(list("0123456789abcdef"), 64)) for _ in range(n)],
        path=[f"{k}.png" for k in range(n)],
    )
    cut = int(0.8 * n)
    t0 = time.perf_counter()
    for s in (8, 16):
        p = probes.logistic_scores(probes.thumbnails(x[:cut], s), y[:cut], probes.thumbnails(x[cut:], s))
        probes.scored(y[cut:], p, None, 500, 0, 0.95, 0.8)
    p, _ = probes.acquisition_probe(table.iloc[:cut], table.iloc[cut:], y[:cut], y[cut:])
    probes.scored(y[cut:], p, None, 500, 0, 0.95, 0.8)
    probes.near_duplicate_report({"train": table.iloc[:cut], "test": table.iloc[cut:]}, 12, 24)
    return {"images": n, "size": size, "seconds": round(time.perf_counter() - t0, 2), "target_seconds": 60}


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
        [sys.executable, "-c", "from bench.cases import _exporter_start; _exporter_start()"],
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
                code = f"from bench.cases import _compile_probe; _compile_probe({args})"
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
        code = f"from bench.cases import _heap_probe; _heap_probe({arch!r}, {size}, {batch}, {n}, {keep})"
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


_PEAK_CHILD = """
import sys, threading, time
from pathlib import Path
from cxr_transfer.data.prepare import prepare_splits
peak, done = [0], [False]
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
def watch():
    while not done[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.005)
work, size = Path(sys.argv[1]), int(sys.argv[2])
base = anon()
t = threading.Thread(target=watch)
t.start()
t0 = time.perf_counter()
prepare_splits(work / "split", work / "raw", work / "prep", size, ["Normal", "Covid"], workers=1)
secs = time.perf_counter() - t0
done[0] = True
t.join()
print(peak[0] - base, (work / "prep" / "train" / "x.npy").stat().st_size, secs)
"""


def prepare_peak(work: Path, n: int, size: int) -> dict:
    """prepare_splits on an n-image train split (one small PNG listed n times, upscaled to `size`)
    in a fresh process: how much its anonymous memory (RssAnon, what cannot be paged back to a
    file) grew at its peak, sampled every 5 ms, against the size of the store it wrote."""
    import pandas as pd

    work.mkdir(parents=True, exist_ok=True)
    (work / "raw").mkdir(exist_ok=True)
    img = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(img).save(work / "raw" / "a.png")
    (work / "split").mkdir(exist_ok=True)
    for s, k in (("train", n), ("val", 4), ("test", 4)):
        frame = pd.DataFrame({"path": ["a.png"] * k, "label": np.arange(k) % 2})
        frame.to_csv(work / "split" / f"{s}.csv", index=False)
    res = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(work), str(size)], cwd=ROOT, capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    grew, store, secs = res.stdout.split()
    return {
        "images": n,
        "size": size,
        "store_mib": round(int(store) / 2**20, 1),
        "peak_anon_growth_mib": round(int(grew) / 2**20, 1),
        "seconds": round(float(secs), 2),
    }


def streaming(work: Path, n: int, size: int, epochs: int, prepare: list[dict]) -> dict:
    """Full-model training (EfficientNet-Lite0, batch 32, SGD) on an n-image memory-mapped store,
    loaded whole (the fast path) and streamed batch by batch from the map (train.memory_budget
    below the store): images/s of `epochs` epochs each, and whether the weights came out equal.
    Then `prepare_peak` for each of `prepare`."""
    from cxr_transfer.runtime.engine import Precision as Prec

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(work / "x.npy", rng.integers(0, 256, (n, size, size), dtype=np.uint8))
    x, y = np.load(work / "x.npy", mmap_mode="r"), np.arange(n) % 2
    data = {"train": (x, y), "val": (x[: n // 4], y[: n // 4])}
    cpu, prec = torch.device("cpu"), Prec(None, False)
    mode = ModeConfig(pretrained=False, trainable="all", optimizer="sgd", lr=1e-3, momentum=0.9)
    out, weights = {"images": n, "size": size, "epochs": epochs}, []
    for name, budget in (("in_memory", None), ("streamed", 0)):
        model = build_model("efficientnet_lite0", None, 2, seed=0)
        t0 = time.perf_counter()
        tc = TrainConfig(epochs=epochs, batch_size=32)
        rs = setup_run(
            model, get_spec("efficientnet_lite0"), data, mode, tc, RunContext(cpu, prec, budget=budget)
        )
        opt = make_optimizer(rs.loop.trained.parameters(), mode)
        fit(
            rs.phases,
            Steps(opt, prec, cpu),
            Stopping(epochs, epochs + 1),
            Checkpoints(work / f"ck-{name}", "b"),
        )
        out[f"{name}_images_per_s"] = round(n * epochs / (time.perf_counter() - t0), 1)
        weights.append(model.state_dict())
    out["ratio"] = round(out["streamed_images_per_s"] / out["in_memory_images_per_s"], 2)
    out["same_weights"] = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    out["prepare"] = [prepare_peak(work / f"prep{p['n']}", **p) for p in prepare]
    return out
