"""The benchmark script runs end to end at a tiny size and writes valid JSON: what it measured is
what it reports. No timing, page-fault or memory comparison is asserted here: they move with the
machine's load, so they are the bench's figures (bench/results/), never a test's verdict."""

import json

import pytest

from bench import pipeline_cases
from bench.__main__ import main, table
from tests.conftest import ROOT


@pytest.mark.slow  # every bench case at the tiny size, a demo repro included
def test_bench_tiny_writes_json_and_table(tmp_path, capsys):
    res = main(["--size", "tiny", "--out", str(tmp_path)])
    files = list(tmp_path.glob("cpu-tiny-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["machine"]["torch"] and saved["size"] == "tiny"
    assert {"input", "fe", "index", "demo", "gpu", "neardup", "probe", "dataset", "onnx"} <= set(saved)
    onnx = saved["onnx"]
    assert [q["size"] for q in onnx["sizes"]] == [32] and onnx["sizes"][0]["max_abs_diff"] < 1e-4
    pt, ort = onnx["predict_one_image_seconds_pytorch"], onnx["predict_one_image_seconds_onnxruntime"]
    row = f"| PyTorch {pt} s | ONNX Runtime {ort} s | {pt / ort:.1f}x |"
    assert row in res["table"]  # what was measured is reported
    assert saved["neardup"]["hashes"] == 2020 and saved["neardup"]["planted_found"] == 20  # exact search
    assert [q["max_bits"] for q in saved["neardup"]["searches"]] == [12, 24]
    assert saved["probe"]["images"] == 200
    (ct,) = saved["cpu-train"]["runs"]  # both memory formats, one arch at the tiny size
    assert (ct["arch"], ct["size"]) == ("efficientnet_lite0", 32) and ct["max_abs_logit_diff"] < 1e-4
    assert ct["infer_ratio"] == pytest.approx(ct["infer_channels_last"] / ct["infer_nchw"], abs=0.01)
    assert f"| train {ct['train_ratio']}x, infer {ct['infer_ratio']}x |" in res["table"]
    assert set(ct["infer_by_batch"]) == {"4", "8"} and ct["rule_infer_batch"] == 64
    assert ct["rule_train_channels_last"] is True and saved["cpu-train"]["heap_kept"] is True
    (heap,) = saved["cpu-train"]["heap"]  # glibc's default heap vs kept, each in a fresh process
    kept, default = heap["kept"], heap["default"]
    assert all(isinstance(h["minor_faults"], int) and h["images_per_s"] > 0 for h in (kept, default))
    assert heap["ratio"] == round(kept["images_per_s"] / default["images_per_s"], 2)
    assert f"| {heap['ratio']}x |" in res["table"]  # reported as measured, whichever way it went
    st = saved["stream"]  # in memory vs streamed from the map: the same batches, the same weights
    assert st["same_weights"] is True and st["images"] == 64 and st["streamed_images_per_s"] > 0
    (pp,) = st["prepare"]
    assert pp["store_mib"] == round(50 * 64 * 64 / 2**20, 1) and pp["peak_anon_growth_mib"] < 64
    assert f"| {st['ratio']}x |" in res["table"]
    pre = saved["preprocess"]  # every intensity x crop option, each against none/none
    assert (
        [(q["intensity"], q["crop"]) for q in pre["runs"]][:5]
        == [
            ("none", "none"),
            ("equalize", "none"),
            ("clahe", "none"),
            ("percentile", "none"),
            ("none", "body"),
        ]
        and len(pre["runs"]) == 8
        and pre["images"] == 16
    )
    clahe = pre["runs"][2]
    assert clahe["relative_to_none"] == round(clahe["images_per_s"] / pre["runs"][0]["images_per_s"], 2)
    assert f"| {clahe['images_per_s']} img/s | {clahe['relative_to_none']}x |" in res["table"]
    inp = saved["input"][0]
    assert inp["images"] == 64
    assert inp["ratio"] == pytest.approx(
        inp["ours_images_per_s"] / inp["seed_images_per_s"], abs=0.08
    )  # ratio to 0.1, rates to 0.1 img/s
    assert saved["fe"]["epochs"] == 2 and 0 <= saved["fe"]["ours_val_acc"] <= 1
    assert saved["fe"]["ours_val_acc"] * 8 == pytest.approx(
        round(saved["fe"]["ours_val_acc"] * 8), abs=0.01
    )  # of 8
    assert saved["index"]["files"] == 40
    assert set(saved["demo"]["stages"]) == {
        "check_params",
        "synthesize",
        "index",
        "split",
        "prepare",
        "probe",
        "train@efficientnet_lite0-fe-0",
        "evaluate@efficientnet_lite0-fe-0",
        "report",
        "export@efficientnet_lite0-fe",
        "external@0",
        "external_eval@0",
    }
    demo = saved["demo"]  # one dvc repro: its stages' times partition its wall time after DVC's start-up
    assert demo["cold_total_seconds"] >= sum(demo["stages"].values()) - 0.05  # (rounding to 0.1 s)
    assert set(demo["phases"]) == set(demo["stages"])  # every stage's process profiled, joined by order
    for name, ph in demo["phases"].items():
        parts = ph["import"] + ph["load"] + ph["work"] + ph["write"]
        assert parts == pytest.approx(ph["seconds"], abs=0.01)
        assert 0 < ph["seconds"] <= demo["stages"][name] and ph["import"] > 0.05
    assert demo["phases_unjoined"] is None
    assert demo["phases"]["train@efficientnet_lite0-fe-0"]["load"] > 0  # ImageNet weights, the store
    assert demo["phases"]["export@efficientnet_lite0-fe"]["write"] > 0  # model.onnx
    assert "eval/efficientnet_lite0-fe-s0/predictions.csv" in demo["results_sha256"]
    ds = saved["dataset"]
    assert ds["images"] == 60 and set(ds["stages"]) == {"index", "split", "prepare"}
    assert ds["total_seconds"] == pytest.approx(sum(v["seconds"] for v in ds["stages"].values()), abs=0.1)
    assert (
        ds["peak_rss_mib"] == max(v["peak_rss_mib"] for v in ds["stages"].values()) > 20
    )  # a Python process
    ours = saved["gpu"]["ours"][0]
    assert ours["batch"] == 8 and ours["epochs"] == 2 and ours["infer_precision"] == "float32"
    assert ours["ratio_vs_seed"] == round(
        ours["train_images_per_s"] / saved["gpu"]["seed_train_images_per_s"], 1
    )
    out = capsys.readouterr().out
    assert "| input pipeline 32px |" in out and res["table"] in out


def test_the_folds_case_sets_one_split_against_k_folds(tmp_path, monkeypatch):
    """The folds case's arithmetic and row, on stand-in demo runs (a real k-fold run is the
    end-to-end test's): the one-split run is reused when given, the bound is k x its training."""
    ran = []

    def fake_demo(work, params):
        k = params[("split", "folds")]
        ran.append(k)
        stages = {"synthesize": 2.0, "index": 1.0, "split": 0.5, "prepare": 1.0, "probe": 5.0}
        stages |= {"train@a-fe-0": 4.0 * (k or 1), "train@a-ft-0": 10.0 * (k or 1), "evaluate@a-fe-0": 3.0}
        return {"stages": stages, "cold_total_seconds": sum(stages.values()) + 2.0}

    monkeypatch.setattr(pipeline_cases, "demo", fake_demo)
    r = pipeline_cases.folds_cost(tmp_path, 5, {("train", "epochs"): 1})
    assert ran == [None, 5]
    assert (r["single"]["train_seconds"], r["k5"]["train_seconds"]) == (14.0, 70.0)
    assert r["single"]["decode_and_probe_seconds"] == r["k5"]["decode_and_probe_seconds"] == 9.5
    assert r["bound_seconds"] == 5 * 14.0 + 60 and r["within_bound"] is True
    assert r["fixed_part_seconds"] == pytest.approx(r["k5"]["cold_total_seconds"] - 70.0)
    assert "| 9.5 s | 9.5 s | 1.0x | not x5 |" in table({"folds": r})
    reused = pipeline_cases.folds_cost(
        tmp_path, 3, {}, single=fake_demo(tmp_path, {("split", "folds"): None})
    )
    assert ran == [None, 5, None, 3] and reused["k"] == 3  # the given one-split run is not run again


def test_two_revisions_alternate_and_compare_medians_and_results(tmp_path, monkeypatch):
    """--rev A,. --repeat 2 runs A, the tree, A, the tree; each revision's median stage by stage,
    the ratio of the medians, and any result file unlike the first run's are reported."""
    ran = []
    seconds = iter([100.0, 60.0, 120.0, 70.0])  # the VM drifts: the second round is slower for both

    def fake_demo(work, params, rev):
        ran.append(rev)
        total = next(seconds)
        digests = {"eval/a/metrics.json": "1", "metrics/modes/a.json": "2" if rev or len(ran) < 4 else "3"}
        return {
            "rev": rev or "working tree",
            "stages": {"train@a": total / 2, "evaluate@a": total / 4},
            "cold_total_seconds": total,
            "results_sha256": digests,
        }

    monkeypatch.setattr(pipeline_cases, "demo", fake_demo)
    r = pipeline_cases.compare_revs(tmp_path, None, ["abc1234", None], 2)
    assert ran == ["abc1234", None, "abc1234", None]
    assert r["order"] == ["abc1234", "working tree", "abc1234", "working tree"]
    before, after = r["by_rev"]["abc1234"], r["by_rev"]["working tree"]
    assert before["median_cold_seconds"] == 110.0 and after["median_cold_seconds"] == 65.0
    assert after["median_stages"] == {"train@a": 32.5, "evaluate@a": 16.25}
    assert r["ratio_to_first"]["working tree"] == round(65 / 110, 3)
    assert r["results_differ_from_first"] == [[], [], [], ["metrics/modes/a.json"]]
    row = table({"demo": r})
    assert "| demo cold `dvc repro`, median of 2 alternating runs (abc1234 -> working tree) | 110.0 s" in row
    assert "| 65.0 s (results differ) | 0.591x | <= 150 s |" in row


def test_a_rev_with_warm_runs_under_cxr_warm_and_is_labelled_so(tmp_path, monkeypatch):
    """--rev .,.+warm: the working tree twice, the second under CXR_WARM=1 (the env the repro
    gets), each labelled by what ran; the server of a warm run is stopped after it."""
    assert pipeline_cases.parse_rev(".+warm") == (None, True)
    assert pipeline_cases.parse_rev("abc1234+warm") == ("abc1234", True)
    assert pipeline_cases.parse_rev(None) == (None, False) and pipeline_cases.parse_rev("abc") == (
        "abc",
        False,
    )
    seen, stopped = [], []

    def fake_repro(cwd, warm=False):
        seen.append(warm)
        return {"check_params": 0.1}, 1.0, ({}, "none")

    monkeypatch.setattr(pipeline_cases, "_timed_repro", fake_repro)
    monkeypatch.setattr(pipeline_cases, "_sh", lambda *a: 0.5)
    monkeypatch.setattr("cxr_transfer.core.warm.stop_servers", lambda root: stopped.append(root) or 0)
    labels = [pipeline_cases.demo(tmp_path, None, r)["rev"] for r in (None, ".+warm")]
    assert labels == ["working tree", "working tree+warm"] and seen == [False, True]
    assert stopped == [tmp_path / "demo"] * 2


@pytest.mark.slow  # trains every mode of two archs and the seed experiment, at 32 px
def test_the_prepared_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    """bench/gpu_check.sh --device cpu --size tiny: the GPU day's script, through the same code
    (setup_run + fit + predict_proba + the metrics engine), on the CPU: a warm-up and every mode of
    each arch, the seed experiment, the JSON it promises, marked complete."""
    import os
    import subprocess
    import sys

    from bench.gpu_check import MODES, SIZES

    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--size",
            "tiny",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = tmp_path.glob("gpu-check-cpu-tiny-*.json")
    res = json.loads(path.read_text())
    cfg = SIZES["tiny"]
    assert (
        res["complete"]
        and res["phase"] == "done"
        and res["skipped"] == []
        and res["budget_s"] == cfg["budget"]
    )
    assert sorted(res["warm_up_s"]) == sorted(cfg["archs"])
    assert [(r["arch"], r["mode"]) for r in res["runs"]] == [(a, m) for a in cfg["archs"] for m in MODES]
    for r in res["runs"]:
        assert r["epochs_run"] == MODES[r["mode"]].freeze_epochs + 1 and r["finished"]
        assert min(r["train_images_per_s"]) > 0 and r["forward_gflops"] > 0
        assert r["eval_images_per_s"] > 0 and r["eval_device_images_per_s"] > 0
        assert r["cached_features"] == (
            MODES[r["mode"]].trainable != "all" or MODES[r["mode"]].freeze_epochs > 0
        )
    # torchvision's ResNet-18: 1.814 GMACs at 224 px, 2 FLOPs a MAC, convolutions scale with the area
    gflops = {r["arch"]: r["forward_gflops"] for r in res["runs"]}
    assert gflops["resnet18"] == pytest.approx(2 * 1.814 * (32 / 224) ** 2, rel=0.05)
    seed = res["seed_experiment"]
    assert [r["mode"] for r in seed["runs"]] == ["scratch", "fe", "ft_classifier"]
    assert seed["elapsed_s"] <= seed["budget_s"] + 5
    assert res["precision"] == "float32" and res["matmul_tflops"] is None  # CPU: no bf16, no MFU
    assert res["compile"] == {"runs": []}  # no compile phase at the tiny size
    assert f"wrote {path}" in out.stdout


def _fake_run(calls, fail_at=None):
    def run(arch, mode, data, batch, epochs, patience, device, prec, stop_at=None, compile_model=False):
        calls.append((arch, mode, epochs, compile_model))
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {
            "arch": arch,
            "mode": mode,
            "epochs_run": epochs,
            "train_images_per_s": [500.0, 800.0][:epochs],
            "epoch_seconds": [70.0, 10.0][:epochs],
            "eval_images_per_s": 100.0,
            "eval_device_images_per_s": 200.0,
            "val_accuracy": 0.9,
            "peak_gib": None,
            "wall_s": 1.0,
        }

    return run


def test_the_gpu_check_writes_its_json_after_every_run_and_keeps_it_when_a_run_fails(tmp_path, monkeypatch):
    """A CUDA error in the third run of the modes phase: the JSON on disk holds the two runs before
    it and the error, not complete; the error is raised (its traceback goes to the log)."""
    import torch

    from bench import gpu_check

    calls = []
    monkeypatch.setattr(gpu_check, "run_mode", _fake_run(calls, fail_at=4))  # 1: the warm-up
    monkeypatch.setattr(gpu_check, "forward_gflops", lambda arch, size: 1.0)
    path = tmp_path / "check.json"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        gpu_check.check(torch.device("cpu"), "tiny", path)
    res = json.loads(path.read_text())
    assert [(r["arch"], r["mode"]) for r in res["runs"]] == [("resnet18", "scratch"), ("resnet18", "fe")]
    assert not res["complete"] and res["phase"] == "modes"
    assert res["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_the_gpu_check_stops_each_phase_at_its_budget_and_says_what_it_skipped(tmp_path):
    """With no time at all, nothing trains: every run is listed as skipped for the budget and the
    JSON is complete (the check ended as planned, with what it had)."""
    import torch

    from bench import gpu_check

    out = gpu_check.check(torch.device("cpu"), "tiny", tmp_path / "c.json", budget=0.0)
    assert out["complete"] and out["runs"] == [] and out["seed_experiment"]["runs"] == []
    assert out["skipped"] == [
        "resnet18: every mode (budget)",
        "efficientnet_lite0: every mode (budget)",
        *(f"seed experiment resnet18-{m} (budget)" for m in ("scratch", "fe", "ft_classifier")),
    ]
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(out))


def test_the_gpu_check_s_compile_phase_records_an_inductor_failure_and_goes_on(tmp_path, monkeypatch):
    """The compile phase (full size only: Inductor takes minutes on a CPU) runs ft for two epochs on
    a ragged training size per arch, each in its own guard: a failure is recorded, the next arch
    still compiles, and the rows become speed.COMPILE's rule."""
    import numpy as np
    import torch

    from bench import gpu_check

    calls = []
    fake = _fake_run(calls, fail_at=1)  # the first arch's compile fails

    def run(arch, mode, data, *a, **kw):
        assert len(data["train"][1]) == 100 - 37  # ragged: no multiple of the batch
        return fake(arch, mode, data, *a, **kw)

    monkeypatch.setattr(gpu_check, "run_mode", run)
    eager = [{"arch": a, "mode": "ft", "train_images_per_s": [640.0]} for a in ("vgg19_bn", "vgg16")]
    rep = gpu_check.Report(tmp_path / "c.json", {"runs": eager, "skipped": [], "compile": {"runs": []}})
    cfg = {"compile": ("vgg16", "vgg19_bn"), "size": 224, "batch": 64, "ragged": 37}
    data = {"train": (np.zeros((100, 4, 4)), np.zeros(100)), "val": (np.zeros((10, 4, 4)), np.zeros(10))}
    gpu_check._compile(rep, data, cfg, torch.device("cpu"), None, deadline=float("inf"))
    assert calls == [("vgg16", "ft", 2, True), ("vgg19_bn", "ft", 2, True)]
    saved = json.loads((tmp_path / "c.json").read_text())["compile"]
    assert saved["errors"] == [
        {"arch": "vgg16", "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    ]
    (row,) = saved["runs"]
    assert (row["arch"], row["train_images"], row["compile_seconds"]) == ("vgg19_bn", 63, 60.0)
    assert (row["eager_images_per_s"], row["compiled_images_per_s"]) == (640.0, 800.0)
    rule = saved["derived_compile_rule"]["cpu"]["vgg"]["224"]
    assert rule == {"eager_images_per_s": 640.0, "compiled_images_per_s": 800.0, "compile_seconds": 60.0}


def test_the_gpu_check_s_compile_option_adds_the_phase_at_the_tiny_size(tmp_path, monkeypatch):
    """--compile efficientnet_lite0 (what the run on torch 2.11 used): after the modes and the seed
    experiment, ft compiled for two epochs on the ragged size (38 - 5 = 33 images) for that arch
    only; an unknown arch is refused before anything runs."""
    import torch

    from bench import gpu_check
    from cxr_transfer.core.errors import CxrError

    calls = []
    monkeypatch.setattr(gpu_check, "run_mode", _fake_run(calls))
    monkeypatch.setattr(gpu_check, "forward_gflops", lambda arch, size: 1.0)
    out = gpu_check.check(torch.device("cpu"), "tiny", tmp_path / "c.json", 200, ["efficientnet_lite0"])
    assert calls[-1] == ("efficientnet_lite0", "ft", 2, True)
    assert [c for c in calls if c[3]] == [calls[-1]]
    (row,) = out["compile"]["runs"]
    assert (row["arch"], row["train_images"], row["compile_seconds"]) == ("efficientnet_lite0", 33, 60.0)
    assert out["complete"] and gpu_check.SIZES["tiny"]["compile"] == ()  # the size itself unchanged
    with pytest.raises(CxrError, match="unknown arch 'nosuch'"):
        gpu_check.check(torch.device("cpu"), "tiny", tmp_path / "d.json", 200, ["nosuch"])
    assert not (tmp_path / "d.json").exists()


def test_the_gpu_check_s_planned_work_fits_its_budget_on_one_h100():
    """The plan at the H100's datasheet rates and the assumed utilisation: every phase of the full
    size, compiles and warm-ups included, fits the 360 s budget with a margin for one rerun's
    worth of surprises (a forecast to size the run, measured on the GPU day)."""
    from bench import gpu_check

    est = gpu_check.plan("full", **gpu_check.H100)
    assert est["total"] == pytest.approx(
        sum(v for k, v in est.items() if k not in ("total", "budget", "assumed_mfu")), abs=0.5
    )
    assert est["total"] <= 0.85 * est["budget"] == 0.85 * 360
    assert est["seed_experiment"] > est["modes"] > 0  # 15 epochs of VGG19 from scratch dominate the training


def test_a_failed_run_is_recorded_and_the_others_still_count(tmp_path, monkeypatch):
    def fake_demo(work, params, rev):
        if rev == "bad":
            raise RuntimeError("dvc repro failed in /x")
        return {
            "rev": rev or "working tree",
            "stages": {"a": 1.0},
            "cold_total_seconds": 1.0,
            "results_sha256": {},
        }

    monkeypatch.setattr(pipeline_cases, "demo", fake_demo)
    r = pipeline_cases.compare_revs(tmp_path, None, ["bad", None], 2)
    assert r["failed"] == [{"rev": "bad", "error": "dvc repro failed in /x"}] * 2
    assert r["revs"] == ["working tree"] and r["by_rev"]["working tree"]["cold_total_seconds"] == [1.0, 1.0]


def test_the_train_step_case_splits_a_step_and_checks_adam_s_three_ways():
    """Where a training step's time goes (python -m bench --cases train-step): the parts of the
    step, images/s on one thread and on all, the profiler's top operators, and Adam's step per
    tensor, multi-tensor and fused: the multi-tensor weights equal the per-tensor ones bit for bit
    (the train stage's step on the CPU), as measured in the table."""
    from bench import cpu_cases
    from bench.__main__ import SIZES

    r = cpu_cases.train_step(**SIZES["tiny"]["train-step"])
    assert (r["arch"], r["size"], r["batch"], r["memory_format"]) == (
        "efficientnet_lite0",
        32,
        4,
        "channels_last",
    )
    assert set(r["parts_ms"]) == {"forward", "backward", "optimizer"} and min(r["parts_ms"].values()) > 0
    assert set(r["images_per_s_by_threads"]) == {"1", str(r["threads"])}
    shares = [o["share"] for o in r["top_ops"]]
    assert len(shares) == 8 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert "aten::convolution_backward" in [o["op"] for o in r["top_ops"]]
    adam = r["adam"]
    assert adam["per_tensor"]["same_weights"] is True and adam["multi_tensor"]["same_weights"] is True
    rows = table({"train-step": r})
    assert (
        f"| {adam['per_tensor']['ms']} ms | {adam['multi_tensor']['ms']} / {adam['fused']['ms']} ms |" in rows
    )
    assert f"{r['threads']} threads {r['images_per_s_by_threads'][str(r['threads'])]} img/s" in rows
