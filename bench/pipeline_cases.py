"""Benchmark cases of whole pipelines: a cold `dvc repro` of the demo (or of a larger generated
dataset) stage by stage, at a revision or the working tree, k folds against one split, and what
scales with the dataset's size."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.data_cases import make_pngs
from cxr_transfer.core.profile import PHASES

ROOT = Path(__file__).resolve().parents[1]


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
            env={**os.environ, "CXR_WARM": "0"},  # the stage in the process measured, not a fork
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


def parse_rev(spec: str | None) -> tuple[str | None, bool]:
    """A --rev entry: a git revision or '.' (the working tree, also None), with '+warm' for a run
    under CXR_WARM=1 (stages forked from a warm server: cxr_transfer/core/warm.py)."""
    spec = spec or "."
    rev = spec.removesuffix("+warm")
    return (None if rev == "." else rev), spec != rev


def demo(work: Path, params: dict | None = None, rev: str | None = None) -> dict:
    """A cold `dvc repro` of the demo in a fresh copy of the project (one run, per-stage times from
    its log), then a no-op; each run's test accuracy and AUROC beside. `rev`: the project as a git
    revision had it (a before/after on one machine), else the working tree; '+warm' after it
    (parse_rev): under CXR_WARM=1, its server stopped after the run, so that every run starts
    without one."""
    rev, warm = parse_rev(rev)
    label = (rev or "working tree") + ("+warm" if warm else "")
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
    try:
        stages, total, (phases, unjoined) = _timed_repro(dst, warm)
        noop = _sh(dst, "dvc", "repro")
    finally:
        from cxr_transfer.core.warm import stop_servers

        stop_servers(dst)
    return {
        "rev": label,
        "stages": stages,
        "phases": phases,
        "phases_unjoined": unjoined,  # why no phases, if none (an older revision, torchrun ...)
        "training": _training_rates(dst),
        "test": _test_figures(dst),
        "results_sha256": _result_digests(dst),
        "cold_total_seconds": round(total, 1),
        "noop_seconds": round(noop, 2),
        "target_cold_seconds": 150,
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


def _timed_repro(
    cwd: Path, warm: bool = False
) -> tuple[dict[str, float], float, tuple[dict[str, dict], str | None]]:
    """One `dvc repro`, as a user runs it: its wall time, each stage's from the moment DVC
    prints "Running stage '<name>'" to the next such line (the last: to the end; DVC's own
    bookkeeping between stages falls in the stage before), and where each stage's process spent
    its time (cxr_transfer.core.profile; revisions without it give none)."""
    log = cwd / ".bench-profile.jsonl"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",  # each line when it is printed, not when a pipe buffer fills
        "CXR_PROFILE": str(log),
        "CXR_WARM": "1" if warm else "0",
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
    stages = {n: round(e - t, 2) for (n, t), e in zip(starts, ends, strict=True)}
    return stages, end - t0, _phases(stages, log)


def _phases(stages: dict[str, float], log: Path) -> tuple[dict[str, dict], str | None]:
    """Each stage's profile line (one per process, in the order DVC ran them) with `dvc`: the
    stage's time outside its line (DVC's hashing and lock file, the process's start by the shell
    and its interpreter's shutdown); else no phases and why."""
    if not log.exists():
        return {}, "no profile lines (a revision without cxr_transfer.core.profile)"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    if len(lines) != len(stages):
        return {}, f"{len(lines)} profile lines for {len(stages)} stages"
    out = {}
    for (name, secs), line in zip(stages.items(), lines, strict=True):
        if name.split("@")[0] != line["stage"]:
            return {}, f"stage {name} ran as {line['stage']}"
        out[name] = {k: line[k] for k in ("seconds", *PHASES)}
        out[name]["dvc"] = round(secs - line["seconds"], 3)
    return out, None


RESULT_FILES = (
    "eval/*/metrics.json",
    "eval/*/predictions.csv",
    "eval/external/*/*/metrics.json",
    "eval/external/*/*/predictions.csv",
    "metrics/modes/*.json",
    "metrics/gradcam_share.json",
    "metrics/shortcuts.json",
    "metrics/compare.json",
    "metrics/external.json",
)


TIMINGS = {"train_seconds", "feature_seconds", "images_per_s"}  # in eval/*/metrics.json: not results


def _result_digests(project: Path) -> dict[str, str]:
    """sha256 of every file holding a result, JSON without its timing keys: equal digests, equal
    results."""

    def untimed(v):
        if isinstance(v, dict):
            return {k: untimed(x) for k, x in v.items() if k not in TIMINGS}
        return [untimed(x) for x in v] if isinstance(v, list) else v

    out = {}
    for f in sorted(f for g in RESULT_FILES for f in project.glob(g)):
        data = f.read_bytes()
        if f.suffix == ".json":
            data = json.dumps(untimed(json.loads(data)), sort_keys=True).encode()
        out[str(f.relative_to(project))] = hashlib.sha256(data).hexdigest()[:16]
    return out


def _differ(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def compare_revs(work: Path, params: dict | None, revs: list[str | None], repeat: int) -> dict:
    """The same cold demo at several revisions (None: the working tree), alternating (A B A B ...)
    `repeat` times, so the VM's drift during the run falls on every revision alike: each run, each
    revision's median stage by stage, and whether every result file matches the first revision's."""
    runs = []
    for _ in range(repeat):
        for rev in revs:
            try:
                runs.append(demo(work, params, rev))
            except (RuntimeError, subprocess.CalledProcessError) as e:  # kept: the others still count
                runs.append({"rev": rev or "working tree", "error": str(e)})
    failed = [r for r in runs if "error" in r]
    runs = [r for r in runs if "error" not in r]
    if not runs:
        raise RuntimeError(f"every run failed: {failed[0]['error']}")
    names = list(dict.fromkeys(r["rev"] for r in runs))
    by_rev = {}
    for name in names:
        mine = [r for r in runs if r["rev"] == name]
        stages = {s: statistics.median(r["stages"].get(s, 0.0) for r in mine) for s in mine[0]["stages"]}
        by_rev[name] = {
            "cold_total_seconds": [r["cold_total_seconds"] for r in mine],
            "median_cold_seconds": round(statistics.median(r["cold_total_seconds"] for r in mine), 1),
            "median_stages": {s: round(v, 2) for s, v in stages.items()},
        }
    first = runs[0]["results_sha256"]
    return {
        "revs": names,
        "repeat": repeat,
        "order": [r["rev"] for r in runs],
        "runs": runs,
        "failed": failed,
        "by_rev": by_rev,
        "ratio_to_first": {
            n: round(by_rev[n]["median_cold_seconds"] / by_rev[names[0]]["median_cold_seconds"], 3)
            for n in names
        },
        # per run, in order: the result files unlike the first run's
        "results_differ_from_first": [_differ(first, r["results_sha256"]) for r in runs],
    }
