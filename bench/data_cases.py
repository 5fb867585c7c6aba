"""Benchmark cases of the data path: the input pipeline (the tutorial's way against ours), the frozen
backbone's feature extraction, indexing, near-duplicate search, the probe stage, prepare's peak memory
and streaming a store larger than memory."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.seed import seed_fe_train, seed_loader
from cxr_transfer.core.params import ModeConfig, TrainConfig
from cxr_transfer.data.index import build_index
from cxr_transfer.data.prepare import decode_split
from cxr_transfer.data.preprocess import Preprocess
from cxr_transfer.data.synth import render_cxr
from cxr_transfer.runtime.batches import Normalizer
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


def preprocessing(work: Path, n: int, source: int, size: int, reps: int) -> dict:
    """Images/s of prepare's decoding (one process per core, as the stage runs) for every
    prepare.intensity x prepare.crop option, n PNGs of source x source px to size x size."""
    paths, _ = make_pngs(work / f"pre{source}", n, source)
    runs = []
    for crop in ("none", "body"):
        for intensity in ("none", "equalize", "clahe", "percentile"):
            pre = Preprocess(intensity, crop)
            rate = _median_rate(
                lambda pre=pre: decode_split(paths, size, workers=0, desc="", pre=pre), n, reps
            )
            runs.append({"intensity": intensity, "crop": crop, "images_per_s": round(rate, 1)})
    plain = runs[0]["images_per_s"]
    for r in runs:
        r["relative_to_none"] = round(r["images_per_s"] / plain, 2)
    return {"images": n, "source_size": source, "size": size, "workers": os.cpu_count(), "runs": runs}


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


_PEAK_CHILD = """
import sys, threading, time
from pathlib import Path
from cxr_transfer.core.params import DataConfig, PrepareConfig
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
prepare_splits(work / "split", work / "prep", DataConfig(str(work / "raw")), PrepareConfig(size, workers=1))
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
