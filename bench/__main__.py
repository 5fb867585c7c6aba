"""python -m bench [--size tiny|full] [--cases input,fe,index,demo,gpu,neardup,probe,dataset,onnx,
cpu-train,stream,preprocess,folds,demo-6k,cpu-infer,cpu-compile,train-step] [--tag T]

Runs the seed's way and ours side by side, writes bench/results/<device>-<date>.json and prints a
Markdown table. `tiny` checks that everything runs (the test suite uses it); `full` is the measure."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from bench import cpu_cases, data_cases, pipeline_cases
from bench.gpu import gpu_case, machine
from cxr_transfer.runtime.engine import pick_device

SIZES = {
    "tiny": {
        "input": dict(n=64, sizes=(32,), reps=1),
        "fe": dict(n=40, size=32, epochs=2),
        "index": dict(n=40),
        "demo": {
            ("synthesize", "n_per_class"): 12,
            ("synthesize", "image_size"): 64,
            ("prepare", "image_size"): 32,
            ("train", "epochs"): 1,
            ("evaluate", "bootstrap"): 10,
            ("report", "gradcam_per_group"): 1,
            ("train", "modes"): ["fe"],
        },
        "gpu": dict(n=64, arch="resnet18", size=32, batches=[8], steps=2, epochs=2),
        "neardup": dict(n=2000, copies=20),
        "probe": dict(n=200, size=32),
        "dataset": dict(n=60, prepare_size=32),
        "onnx": dict(n=16, sizes=(32,), reps=1),
        "cpu-train": dict(
            archs=("efficientnet_lite0",),
            sizes=(32,),
            train_batch=4,
            infer_batch=8,
            sweep=(4, 8),
            steps=1,
            heap=[dict(arch="efficientnet_lite0", size=32, batch=8, n=16)],
        ),
        "cpu-infer": dict(archs=("resnet18",), sizes=(32,), images={32: 16}, reps=1),
        "cpu-compile": dict(archs=("resnet18",), size=32, batch=4, steps=1),
        "train-step": dict(arch="efficientnet_lite0", size=32, batch=4, steps=2),
        "stream": dict(n=64, size=32, epochs=1, prepare=[dict(n=50, size=64)]),
        "folds": dict(k=3),
        "preprocess": dict(n=16, source=64, size=32, reps=1),
        "demo-6k": {("synthesize", "n_per_class"): 16},
    },
    "full": {
        "input": dict(n=512, sizes=(224, 96), reps=3),
        "fe": dict(n=400, size=96, epochs=15),
        "index": dict(n=10_000),
        "demo": None,
        "gpu": dict(n=1024, arch="vgg19_bn", size=224, batches=[32, 128], steps=30, epochs=3),
        "neardup": dict(n=100_000, copies=1000),
        "probe": dict(n=10_000, size=96),
        "dataset": dict(n=21_000, prepare_size=224),
        "onnx": dict(n=512, sizes=(96, 224), reps=3),
        "cpu-train": dict(
            archs=("efficientnet_lite0", "resnet18", "densenet121", "vgg19_bn"),
            sizes=(96, 224),
            train_batch=16,
            infer_batch=32,
            sweep=(16, 32, 64),
            steps=4,
            heap=[
                dict(arch="efficientnet_lite0", size=96, batch=64, n=512),
                dict(arch="efficientnet_lite0", size=224, batch=64, n=256),
                dict(arch="vgg19_bn", size=224, batch=16, n=64),
            ],
        ),
        "cpu-infer": dict(
            archs=("efficientnet_lite0", "resnet18", "densenet121", "vgg19_bn"),
            sizes=(96, 224),
            images={96: 1024, 224: 96},
            reps=3,
        ),
        "cpu-compile": dict(archs=("efficientnet_lite0", "resnet18"), size=96, batch=32, steps=5),
        "train-step": dict(arch="efficientnet_lite0", size=96, batch=32, steps=10),
        "stream": dict(n=1024, size=96, epochs=1, prepare=[dict(n=2000, size=256), dict(n=8000, size=256)]),
        "folds": dict(k=5),
        "preprocess": dict(n=400, source=1024, size=224, reps=3),
        "demo-6k": {("synthesize", "n_per_class"): 3000},
    },
}


def table(results: dict) -> str:
    rows = ["| case | seed's way | ours | ratio | target |", "| --- | --- | --- | --- | --- |"]
    for r in results.get("input", []):
        rows.append(
            f"| input pipeline {r['size']}px | {r['seed_images_per_s']} img/s "
            f"| {r['ours_images_per_s']} img/s "
            f"(+{r['ours_prepare_once_s']} s decode once) | {r['ratio']}x | >= 20x |"
        )
    if "fe" in results:
        r = results["fe"]
        rows.append(
            f"| fe, {r['epochs']} epochs, {r['images']} img at {r['size']}px | {r['seed_seconds']} s "
            f"(val acc {r['seed_val_acc']}) | {r['ours_seconds']} s (val acc {r['ours_val_acc']}) "
            f"| {r['ratio']}x | >= 10x |"
        )
    if "index" in results:
        r = results["index"]
        rows.append(
            f"| index {r['files']} PNGs 299px | - | {r['seconds']} s ({r['files_per_s']} files/s) | - "
            f"| 10,000 in < 60 s (projected {r['projected_seconds_for_10000']} s) |"
        )
    for case, what, target in (
        ("demo", "demo cold `dvc repro`", "<= 150 s"),
        ("demo-6k", "6,000-image cold `dvc repro`", "<= 2/3 of the first revision's"),
    ):
        r = results.get(case)
        if r is None:
            continue
        if "by_rev" not in r:
            rows.append(f"| {what} ({r['rev']}) | - | {r['cold_total_seconds']} s | - | {target} |")
            rows.append(f"| {what.replace('cold', 'no-op')} | - | {r['noop_seconds']} s | - | < 5 s |")
            continue
        first, *rest = r["revs"]
        base = r["by_rev"][first]
        for name in rest:
            mine = r["by_rev"][name]
            runs = zip(r["order"], r["results_differ_from_first"], strict=True)
            same = not any(d for run, d in runs if run == name)
            rows.append(
                f"| {what}, median of {r['repeat']} alternating runs ({first} -> {name}) "
                f"| {base['median_cold_seconds']} s | {mine['median_cold_seconds']} s "
                f"({'every result identical' if same else 'results differ'}) "
                f"| {r['ratio_to_first'][name]}x | {target} |"
            )
    if "folds" in results:
        r = results["folds"]
        one, many = r["single"], r[f"k{r['k']}"]
        rows.append(
            f"| demo synthesize + index + split + prepare + probe, one split -> {r['k']} folds "
            f"| {one['decode_and_probe_seconds']} s | {many['decode_and_probe_seconds']} s "
            f"| {r['decode_and_probe_ratio']}x | not x{r['k']} |"
        )
        rows.append(
            f"| demo cold `dvc repro`, one split -> {r['k']} folds (training {one['train_seconds']} s -> "
            f"{many['train_seconds']} s) | {one['cold_total_seconds']} s | {many['cold_total_seconds']} s "
            f"| fixed part {r['fixed_part_seconds']} s "
            f"| <= {r['k']} x training + 60 s = {r['bound_seconds']} s |"
        )
    if "neardup" in results:
        r = results["neardup"]
        per = " + ".join(f"{q['seconds']} s at {q['max_bits']} bits" for q in r["searches"])
        rows.append(
            f"| near-duplicate search, {r['hashes']} images x 2 hashes | - | {r['seconds']} s ({per}), "
            f"{r['planted_found']}/{r['planted']} planted copies found in each | - | 100,000 in < 60 s |"
        )
    if "probe" in results:
        r = results["probe"]
        rows.append(
            f"| probe stage without the feature pass, {r['images']} img at {r['size']}px | - "
            f"| {r['seconds']} s | - | 10,000 in < 60 s |"
        )
    if "dataset" in results:
        r = results["dataset"]
        per = ", ".join(f"{k} {v['seconds']} s" for k, v in r["stages"].items())
        rows.append(
            f"| index + split + prepare ({r['prepare_size']}px), {r['images']} PNGs 299px | - "
            f"| {r['total_seconds']} s ({per}); peak RSS {r['peak_rss_mib']} MiB | - | 21,000 in < 120 s |"
        )
    if "gpu" in results:
        r = results["gpu"]
        for o in r["ours"]:
            mfu = f", MFU {o['train_mfu']:.0%}" if "train_mfu" in o else ""
            rows.append(
                f"| train {r['arch']} {r['size']}px on {r['device']} batch {o['batch']}"
                f"{' compiled' if o['compiled'] else ''} | {r['seed_train_images_per_s']} img/s "
                f"| {o['train_images_per_s']} img/s{mfu}; infer {o['infer_images_per_s']} img/s "
                f"| {o['ratio_vs_seed']}x | >= 10x, MFU >= 40% |"
            )
    if "onnx" in results:
        r = results["onnx"]
        for q in r["sizes"]:
            pt, ort = q["pytorch_images_per_s"], q["onnxruntime_images_per_s"]
            rows.append(
                f"| {r['arch']} CPU inference {q['size']}px, batch 64 | PyTorch {pt} img/s "
                f"| ONNX Runtime {ort} img/s (max dP {q['max_abs_diff']:.0e}) | {ort / pt:.1f}x | - |"
            )
        pt, ort = r["predict_one_image_seconds_pytorch"], r["predict_one_image_seconds_onnxruntime"]
        rows.append(
            f"| `cxr-transfer predict` on one image, interpreter start included | PyTorch {pt} s "
            f"| ONNX Runtime {ort} s | {pt / ort:.1f}x | - |"
        )
    ct = results.get("cpu-train", {})
    for h in ct.get("heap", []):
        d, k = h["default"], h["kept"]
        rows.append(
            f"| CPU heap: {h['arch']} {h['size']}px inference, batch {h['batch']}, glibc default -> kept "
            f"| {d['images_per_s']} img/s, {d['minor_faults']:,} page faults, {d['kernel_s']} s kernel "
            f"| {k['images_per_s']} img/s, {k['minor_faults']:,} page faults, {k['kernel_s']} s kernel "
            f"| {h['ratio']}x | - |"
        )
    for r in ct.get("runs", []):
        if "train_bf16" in r:
            rows.append(
                f"| CPU {r['arch']} {r['size']}px, float32 -> bf16 autocast ({ct['cpu_bf16']}), NHWC "
                f"| train {r['train_channels_last']}, infer {r['infer_channels_last']} img/s "
                f"| train {r['train_bf16']}, infer {r['infer_bf16']} img/s "
                f"| train {r['bf16_train_ratio']}x, infer {r['bf16_infer_ratio']}x | - |"
            )
    for r in results.get("cpu-train", {}).get("runs", []):
        rows.append(
            f"| CPU {r['arch']} {r['size']}px, NCHW -> channels_last | train {r['train_nchw']}, "
            f"infer {r['infer_nchw']} img/s | train {r['train_channels_last']}, infer "
            f"{r['infer_channels_last']} img/s (max d logit {r['max_abs_logit_diff']:.0e}) "
            f"| train {r['train_ratio']}x, infer {r['infer_ratio']}x | - |"
        )
    for r in results.get("cpu-infer", {}).get("runs", []):
        if "export_error" in r:
            rows.append(
                f"| CPU {r['arch']} {r['size']}px inference, PyTorch -> ONNX Runtime | "
                f"{r['pytorch_images_per_s']} img/s | export fails: stays in PyTorch | - | - |"
            )
            continue
        rows.append(
            f"| CPU {r['arch']} {r['size']}px inference (batch {r['batch']}), PyTorch -> ONNX Runtime "
            f"(in-memory export {r['export_seconds']} s, new session {r['session_seconds']} s) "
            f"| {r['pytorch_images_per_s']} img/s | {r['onnxruntime_images_per_s']} img/s "
            f"(max d logit {r['max_abs_logit_diff']:.0e}) | {r['ratio']}x | pays from "
            f"{r['break_even_images']} images |"
        )
    if "train-step" in results:
        r = results["train-step"]
        parts = ", ".join(f"{k} {v} ms" for k, v in r["parts_ms"].items())
        ops = ", ".join(f"{o['op']} {o['share']:.0%}" for o in r["top_ops"][:4])
        rates = r["images_per_s_by_threads"]
        one, alls = rates["1"], rates[str(r["threads"])]
        rows.append(
            f"| CPU {r['arch']} {r['size']}px training step (batch {r['batch']}): {parts}; {ops} "
            f"| 1 thread {one} img/s | {r['threads']} threads {alls} img/s | {alls / one:.2f}x | - |"
        )
        a = r["adam"]
        per, multi, fused = a["per_tensor"]["ms"], a["multi_tensor"]["ms"], a["fused"]["ms"]
        same = f"{a['multi_tensor']['same_weights']} / {a['fused']['same_weights']}"
        rows.append(
            f"| Adam's step, per tensor -> multi-tensor / fused (the same weights: {same}) | {per} ms "
            f"| {multi} / {fused} ms | {per / multi:.2f}x / {per / fused:.2f}x | - |"
        )
    for r in results.get("cpu-compile", {}).get("runs", []):
        head = f"| CPU {r['arch']} {r['size']}px training, eager -> torch.compile"
        head += f" | {r['eager_images_per_s']} img/s"
        if "compile_error" in r:
            rows.append(f"{head} | fails: {r['compile_error']} | - | - |")
            continue
        rows.append(
            f"{head} | {r['compiled_images_per_s']} img/s after a {r['compile_seconds']} s compile "
            f"| {r['ratio']}x | pays from {r['pays_from_images']} image-steps |"
        )
    if "preprocess" in results:
        r = results["preprocess"]
        for q in r["runs"][1:]:
            rows.append(
                f"| prepare {r['images']} PNGs {r['source_size']}px -> {r['size']}px "
                f"({r['workers']} processes), intensity {q['intensity']}, crop {q['crop']} "
                f"| none/none: {r['runs'][0]['images_per_s']} img/s "
                f"| {q['images_per_s']} img/s | {q['relative_to_none']}x | - |"
            )
    if "stream" in results:
        r = results["stream"]
        rows.append(
            f"| training {r['images']} img at {r['size']}px (CPU), store in memory -> streamed from its map "
            f"| {r['in_memory_images_per_s']} img/s | {r['streamed_images_per_s']} img/s "
            f"(same weights: {r['same_weights']}) | {r['ratio']}x | - |"
        )
        for q in r["prepare"]:
            rows.append(
                f"| prepare {q['images']} img at {q['size']}px: store size vs peak anonymous memory growth "
                f"| - | {q['store_mib']} MiB store, +{q['peak_anon_growth_mib']} MiB peak ({q['seconds']} s) "
                f"| - | independent of the store |"
            )
    return "\n".join(rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument(
        "--cases",
        default="input,fe,index,demo,gpu,neardup,probe,dataset,onnx,cpu-train,stream,preprocess",
        help="folds (a cold demo with k folds beside one split), demo-6k (6,000 images), cpu-infer, "
        "cpu-compile and train-step (where a training step's time goes) run only when named",
    )
    ap.add_argument("--tag", default="", help="appended to the result file's name (keeps earlier results)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--rev",
        help="demo and demo-6k: run the project as this git revision had it; several, comma-separated "
        "('.' = the working tree), run alternating, e.g. --rev main,. --repeat 2: main . main .; "
        "'+warm' after one runs it under CXR_WARM=1 (e.g. --rev .,.+warm)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="--rev with several revisions: rounds")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile in the gpu case")
    args = ap.parse_args(argv)
    cfg, want = SIZES[args.size], set(args.cases.split(","))
    device = pick_device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    results: dict = {"size": args.size, "date": dt.date.today().isoformat(), "machine": machine(device)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "input" in want:
            c = cfg["input"]
            results["input"] = [data_cases.input_pipeline(work, c["n"], s, c["reps"]) for s in c["sizes"]]
        if "fe" in want:
            results["fe"] = data_cases.feature_extraction(work, **cfg["fe"])
        if "index" in want:
            results["index"] = data_cases.indexing(work, **cfg["index"])
        if "neardup" in want:
            results["neardup"] = data_cases.near_duplicates(**cfg["neardup"])
        if "probe" in want:
            results["probe"] = data_cases.probe_stage(**cfg["probe"])
        revs = [None if r == "." else r for r in (args.rev or ".").split(",")]
        known_revs = (pipeline_cases.parse_rev(r)[0] for r in revs)
        for rev in filter(None, known_revs):  # one line for a revision git does not know, not a traceback
            known = subprocess.run(
                ["git", "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"], capture_output=True
            )
            if known.returncode != 0:
                ap.error(f"--rev {rev}: not a commit of this repository (git log --oneline lists them)")
        for case in ("demo", "demo-6k"):  # demo-6k: the demo's pipeline at the defaults on 6,000 images
            params = cfg["demo"] if case == "demo" else {**(cfg["demo"] or {}), **cfg["demo-6k"]}
            if case not in want:
                continue
            if len(revs) > 1 or args.repeat > 1:
                results[case] = pipeline_cases.compare_revs(work, params, revs, args.repeat)
            else:
                results[case] = pipeline_cases.demo(work, params, revs[0])
        if "dataset" in want:
            results["dataset"] = pipeline_cases.dataset_scale(work, **cfg["dataset"])
        if "onnx" in want:
            results["onnx"] = cpu_cases.onnx_inference(work, **cfg["onnx"])
        if "cpu-train" in want:
            results["cpu-train"] = cpu_cases.cpu_train(**cfg["cpu-train"])
        if "cpu-infer" in want:
            results["cpu-infer"] = cpu_cases.cpu_infer(**cfg["cpu-infer"])
        if "cpu-compile" in want:
            results["cpu-compile"] = cpu_cases.cpu_compile(**cfg["cpu-compile"])
        if "train-step" in want:
            results["train-step"] = cpu_cases.train_step(**cfg["train-step"])
        if "folds" in want:
            results["folds"] = pipeline_cases.folds_cost(
                work, cfg["folds"]["k"], cfg["demo"], results.get("demo")
            )
        if "preprocess" in want:
            results["preprocess"] = data_cases.preprocessing(work, **cfg["preprocess"])
        if "stream" in want:
            results["stream"] = data_cases.streaming(work / "stream", **cfg["stream"])
        if "gpu" in want:
            c = cfg["gpu"]
            paths, labels = data_cases.make_pngs(work / "gpu", c["n"], 299)
            results["gpu"] = gpu_case(
                work,
                paths,
                labels,
                c["arch"],
                c["size"],
                c["batches"],
                c["steps"],
                c["epochs"],
                args.compile,
                device,
            )
    results["table"] = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    path = args.out / f"{device.type}-{args.size}-{results['date']}{tag}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
