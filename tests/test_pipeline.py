"""End to end: the project copied into a fresh git + DVC repo, `dvc repro` on a tiny dataset."""

import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxr_transfer.data.split import SPLITS
from tests.browser import charts, dump_dom, find_chromium
from tests.conftest import ROOT
from tests.test_metadata import URLS, radiography_db

pytestmark = pytest.mark.slow  # end to end: the fast tier (pytest -m "not slow") leaves it out

TINY = {
    ("synthesize", "n_per_class"): 14,
    ("synthesize", "image_size"): 64,
    ("prepare", "image_size"): 32,
    ("train", "epochs"): 2,
    ("evaluate", "bootstrap"): 20,
    ("report", "gradcam_per_group"): 1,
    ("synthesize", "external"): "none",  # the external site has its own test, which adds it
    ("external", None): [],
}


def sh(cwd: Path, *cmd: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def stdout(cwd: Path, *cmd: str) -> str:
    """A command's standard output alone (for JSON and CSV), failing the test if it fails."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}"
    return r.stdout


def set_params(repo: Path, changes: dict) -> None:
    """Change params.yaml: {(section, key): value}, or {(key, None): value} for a top-level key."""
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for (section, key), value in changes.items():
        if key is None:
            p[section] = value
        else:
            p[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def make_project(dst: Path, changes: dict) -> Path:
    """The project's tracked code and params copied into a fresh git repo at `dst`, params
    changed by `changes`, committed (DVC experiments need a commit)."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    keep = (
        "stages/",
        "cxr_transfer/",
        "weights/",
        ".dvc/",
        "dvc.yaml",
        "params.yaml",
        ".gitignore",
        "pyproject.toml",
    )
    for f in files:
        if f.startswith(keep) and (ROOT / f).exists():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    set_params(dst, changes)
    sh(dst, "git", "init", "-q")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", "--allow-empty")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project")
    return dst


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dst = make_project(tmp_path_factory.mktemp("e2e") / "proj", TINY)
    sh(dst, "dvc", "repro")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "repro")
    return dst


MODES = ("scratch", "fe", "ft", "ft_gradual")


def test_repro_writes_every_output(repo):
    names = [f"efficientnet_lite0-{m}" for m in MODES]
    keys = None
    for n in names:
        m = json.loads((repo / "metrics" / "modes" / f"{n}.json").read_text())
        keys = keys or set(m)
        assert set(m) == keys and "seeds" not in m  # identical keys for every mode; one seed: one run
        assert m == json.loads((repo / "eval" / f"{n}-s0" / "headline.json").read_text())
        # beside the lean headline, its intervals: one run, the test-set bootstrap evaluate also drew
        iv = json.loads((repo / "metrics" / "intervals" / f"{n}.json").read_text())
        full = json.loads((repo / "eval" / f"{n}-s0" / "metrics.json").read_text())
        assert iv["auroc"] == pytest.approx(m["auroc"]) and iv["accuracy"] == pytest.approx(m["accuracy"])
        assert [iv["accuracy_ci_low"], iv["accuracy_ci_high"]] == pytest.approx(
            full["ci"]["accuracy"], abs=1e-6
        )
        pred = pd.read_csv(repo / "eval" / f"{n}-s0" / "predictions.csv")
        assert len(pred) == m["n_test"] == 6
        assert m["accuracy"] == pytest.approx((pred["predicted"] == pred["class"]).mean())
        run = repo / "models" / f"{n}-s0"
        assert (run / "best.pt").exists() and (run / "last.pt").exists()
        sidecar = json.loads((run / "model.json").read_text())
        assert (
            sidecar["image_size"] == 32 and sidecar["classes"] == ["Normal", "Covid"] and sidecar["seed"] == 0
        )
        assert (repo / "dvclive" / f"{n}-s0" / "plots" / "metrics" / "val" / "acc.tsv").exists()
        assert (repo / "plots" / "gradcam" / f"{n}.png").stat().st_size > 1000
    split = json.loads((repo / "metrics" / "split.json").read_text())
    assert split["group_overlap"] == 0
    assert split["counts"] == {
        "train": {"Covid": 9, "Normal": 9},
        "val": {"Covid": 2, "Normal": 2},
        "test": {"Covid": 3, "Normal": 3},
    }
    summary = (repo / "metrics" / "summary.md").read_text()
    compare = json.loads((repo / "metrics" / "compare.json").read_text())
    best = compare["best"]["efficientnet_lite0"]
    assert all(n in summary for n in names)
    if best["best"]:  # marked only where the verdict supports a winner, with its level
        assert f"**efficientnet_lite0-{best['best']}** (best, {best['level']})" in summary
    else:
        assert "(best" not in summary and "**No best mode is established for efficientnet_lite0**" in summary
    probe = json.loads((repo / "metrics" / "probe.json").read_text())
    assert summary.index("## Which way of training wins?") < summary.index("## Can these results be trusted?")
    assert summary.index("## Can these results be trusted?") < summary.index("## The results")
    assert "train.seeds=[0,1,2]" in summary and all(
        c[k]["level"] != "conclusive" for c in compare["pairs"].values() for k in ("auroc", "accuracy")
    )  # one seed: never conclusive
    assert "(conclusive)" not in summary and ", conclusive" not in summary
    assert set(probe) >= {
        "pixels_8",
        "pixels_16",
        "acquisition",
        "outside_lungs",
        "near_duplicates",
        "source",
    }
    assert probe["source"]["skipped"].startswith("no image has a source")
    near = probe["near_duplicates"]  # looser than the split's join: pairs it left apart are counted
    assert (near["max_bits"], near["max_framed_bits"], near["split_join_bits"]) == (24, 36, [12, 24])
    listed = pd.read_csv(repo / "eval" / "probe" / "near_duplicates.csv")
    assert (
        len(listed) == near["pairs"]
        and (listed["split_a"] != listed["split_b"]).sum() == near["cross_split_pairs"]
    )
    assert list(compare["pairs"]) == [
        "efficientnet_lite0-fe vs efficientnet_lite0-scratch",
        "efficientnet_lite0-ft vs efficientnet_lite0-scratch",
        "efficientnet_lite0-ft vs efficientnet_lite0-fe",
        "efficientnet_lite0-ft_gradual vs efficientnet_lite0-scratch",
        "efficientnet_lite0-ft_gradual vs efficientnet_lite0-fe",
        "efficientnet_lite0-ft_gradual vs efficientnet_lite0-ft",
    ]
    gradual = json.loads((repo / "models" / "efficientnet_lite0-ft_gradual-s0" / "model.json").read_text())
    assert gradual["mode_config"]["freeze_epochs"] == 1 and gradual["cached_features"]  # epoch 1 on features
    lr = pd.read_csv(
        repo / "dvclive" / "efficientnet_lite0-ft_gradual-s0" / "plots" / "metrics" / "lr.tsv", sep="\t"
    )
    # the rate logged per epoch; one step per epoch here: warmup's only step is at the full rate, and
    # the cosine starts at its top
    assert lr["step"].tolist() == [1, 2] and lr["lr"].tolist() == pytest.approx([0.001, 0.001])
    for png in ("val_accuracy", "loss", "roc", "confusion"):
        assert (repo / "plots" / f"{png}.png").stat().st_size > 5000
    assert not (repo / ".resume").exists() or not any((repo / ".resume").iterdir())  # removed on success


def test_predict_reproduces_evaluate_and_the_export_carries_the_same_figures(repo, tmp_path):
    """`cxr-transfer predict` on the test split's files: the probabilities evaluate wrote, through
    PyTorch (the model folder) and ONNX Runtime (the export); the card's figures are the headline's
    its decision rule the argmax (the headline's), with evaluate's validation threshold stated beside it."""
    pred = pd.read_csv(repo / "eval" / "efficientnet_lite0-ft-s0" / "predictions.csv")
    files = [f"data/raw/{p}" for p in pred["path"]]
    for model in ("models/efficientnet_lite0-ft-s0", "exported/efficientnet_lite0-ft"):
        out = tmp_path / "p.csv"
        sh(repo, sys.executable, "-m", "cxr_transfer", "predict", *files, "--model", model, "--out", str(out))
        new = pd.read_csv(out)
        assert new["path"].tolist() == files
        assert np.abs(new["p_Covid"].to_numpy() - pred["probability"].to_numpy()).max() < 1e-4, model
    cardj = json.loads((repo / "exported" / "efficientnet_lite0-ft" / "card.json").read_text())
    head = json.loads((repo / "metrics" / "modes" / "efficientnet_lite0-ft.json").read_text())
    full = json.loads((repo / "eval" / "efficientnet_lite0-ft-s0" / "metrics.json").read_text())
    assert cardj["test_metrics"] == head and cardj["classes"] == ["Normal", "Covid"]
    assert cardj["decision"]["alternative"]["threshold"] == full["youden"]["threshold"]
    assert cardj["parity"]["max_abs_diff"] <= 1e-4 and cardj["parity"]["images"] == 6
    # the exported model decides by the card's rule, the argmax, as evaluate's predictions do
    assert (new["predicted"] == np.where(new["p_Covid"] >= 0.5, "Covid", "Normal")).all()
    assert (new["predicted"].to_numpy() == pred["predicted"].to_numpy()).all()


def test_metrics_show_lists_every_mode_and_plots_show_writes_html(repo):
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))
    files = shown[""]["data"]
    modes = [f"metrics/modes/efficientnet_lite0-{mode}.json" for mode in MODES]
    assert set(files) == {*modes, "metrics/shortcuts.json"}  # probe, split, index: plain outputs
    for f in modes:
        head = json.loads(
            (repo / f.replace("metrics/modes/", "eval/").replace(".json", "-s0/headline.json")).read_text()
        )
        assert len(head) == 11  # DVC leaves out figures that are undefined (null) on the tiny test split
        assert files[f]["data"] == {k: v for k, v in head.items() if v is not None}
    probe = json.loads((repo / "metrics" / "probe.json").read_text())
    assert files["metrics/shortcuts.json"]["data"]["shortcut_flags"] == probe["n_flagged"]
    table = sh(repo, "dvc", "metrics", "show").splitlines()
    assert len(table) == len(MODES) + 2 and max(map(len, table)) <= 200  # fits a 200-column terminal
    sh(repo, "dvc", "plots", "show", "-o", "dvc_plots")
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert "Validation accuracy vs epoch" in html and "efficientnet_lite0-fe" in html


def test_a_runs_curves_reach_dvc_plots_as_soon_as_it_has_trained(repo, tmp_path):
    """One train stage alone (the others not run yet): `dvc plots show` already holds that run's
    per-epoch losses, accuracies and learning rate, from live/<run>.csv (rewritten every epoch)."""
    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    shutil.rmtree(work / "live")
    sh(work, "dvc", "repro", "--single-item", "--force", "train@efficientnet_lite0-fe-0")
    data = json.loads(stdout(work, "dvc", "plots", "show", "--json"))["data"]
    live = {k: v for k, v in data.items() if k.startswith("live/")}
    assert list(live) == ["live/efficientnet_lite0-fe-s0.csv"]
    points = live["live/efficientnet_lite0-fe-s0.csv"][0]["content"]["data"]["values"]
    fields = {p["field"] for p in points}
    assert fields == {"train_loss", "val_loss", "train_acc", "val_acc", "lr"}
    meta = json.loads((work / "models" / "efficientnet_lite0-fe-s0" / "model.json").read_text())
    assert len(points) == len(fields) * meta["epochs_run"]
    curves = pd.read_csv(work / "live" / "efficientnet_lite0-fe-s0.csv")  # DVCLive's figures, one file
    dvclive = work / "dvclive" / "efficientnet_lite0-fe-s0" / "plots" / "metrics" / "val" / "acc.tsv"
    assert curves["val_acc"].tolist() == pytest.approx(pd.read_csv(dvclive, sep="\t")["acc"].tolist())


def ran(out: str) -> set[str]:
    """The stages a dvc repro / exp run output says it ran."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def assert_up_to_date(repo: Path) -> None:
    """Nothing left to run: dvc status lists only check_params, which is always changed (it scans
    data.root before DVC hashes it), and a repro runs it alone and leaves dvc.lock as it was."""
    assert sh(repo, "dvc", "status").split() == ["check_params:", "always", "changed"]
    lock = (repo / "dvc.lock").read_text()
    assert ran(sh(repo, "dvc", "repro")) == {"check_params"}
    assert (repo / "dvc.lock").read_text() == lock


def test_second_repro_does_nothing(repo):
    out = sh(repo, "dvc", "repro")
    assert ran(out) == {"check_params"}, out
    skipped = {line.split("'")[1] for line in out.splitlines() if line.endswith("didn't change, skipping")}
    assert len(skipped) == len(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) - 1, out
    assert_up_to_date(repo)


def would_run(repo: Path, *args: str) -> set[str]:
    """Stages `dvc repro --dry` (or `dvc exp run`) runs, from its 'Running stage' lines."""
    return ran(sh(repo, "dvc", *args))


LITE0 = [f"efficientnet_lite0-{m}-0" for m in MODES]  # stage names: arch-mode-seed


def _dry_run_with(repo: Path, changes: dict) -> set[str]:
    """The stages `dvc repro` would run after `changes` to params.yaml (a dry run; the workspace
    is restored)."""
    set_params(repo, changes)
    try:
        # check_params runs for real (its output is the same bytes for every valid file); a dry run
        # cannot know that, and from an always-changed stage --force-downstream names every stage
        # below it: the dry run reads dvc.yaml without always_changed
        assert would_run(repo, "repro", "check_params") == {"check_params"}
        dvc_yaml = (repo / "dvc.yaml").read_text()
        assert "    always_changed: true" in dvc_yaml
        (repo / "dvc.yaml").write_text(dvc_yaml.replace("always_changed: true", "always_changed: false"))
        return would_run(repo, "repro", "--dry", "--force-downstream")
    finally:
        sh(repo, "git", "checkout", "params.yaml", "dvc.lock", "dvc.yaml")


def test_a_misspelled_or_bad_key_stops_repro_and_exp_run_before_anything_runs(repo):
    """No stage reads `train.epoch`, so only the whole-file check can see it: dvc repro and dvc exp
    run stop at check_params with one line naming the key and the nearest valid one."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key, value, line in [
        ("epoch", 3, "params.yaml: train.epoch is not a setting; did you mean train.epochs?"),
        ("epochs", "three", "params.yaml: train.epochs: expected an integer, got 'three'"),
        ("patience", 0, "params.yaml: train.patience: must be >= 1"),
    ]:
        set_params(repo, {("train", key): value})
        try:
            runs = [["dvc", "repro"]] + ([["dvc", "exp", "run", "--temp"]] if key == "epoch" else [])
            for cmd in runs:  # dvc exp run once: it costs a temporary workspace
                r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
                out = r.stdout + r.stderr
                assert r.returncode != 0, out
                assert f"check_params: error: {line}" in out.splitlines(), out
                assert "Traceback" not in out
                assert ran(out) == {"check_params"}, out
        finally:
            sh(repo, "git", "checkout", "params.yaml", "dvc.lock")
    # the key fixed, nothing is left to run: the check's marker was kept (persist) when it failed
    assert_up_to_date(repo)


def test_entries_dvc_cannot_hash_stop_repro_at_check_params_even_with_params_yaml_unchanged(repo, tmp_path):
    """DVC hashes data.root before index runs and would stop at the first dangling link, link loop
    or name that is not UTF-8 with its own error. check_params is always changed, so a folder that
    gains them after params.yaml was checked still stops at it, with all of them in one line."""
    db = radiography_db(tmp_path / "xrays", ("COVID", "Normal"), n=3)
    set_params(repo, {("data", "root"): str(db)})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        assert would_run(repo, "repro", "check_params") == {"check_params"}  # checked, the folder clean
        os.symlink("missing.png", db / "COVID" / "images" / "dangling.png")
        os.symlink("loop.png", db / "COVID" / "images" / "loop.png")
        (Path(os.fsdecode(os.fsencode(db / "Normal" / "images") + b"/caf\xe9.png"))).write_bytes(b"")
        r = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and ran(out) == {"check_params"}, out
        (line,) = [x for x in out.splitlines() if x.startswith("check_params: error:")]
        assert "data.root: 3 entries DVC cannot hash" in line, line
        for entry in ("COVID/images/dangling.png", "COVID/images/loop.png", "Normal/images/caf\\xe9.png"):
            assert f"{db}/{entry} (" in line, entry
        assert "Errno" not in out and "surrogates" not in out and "Traceback" not in out, out
    finally:
        sh(repo, "git", "checkout", "params.yaml", "dvc.lock")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_device_cuda_without_cuda_is_one_line(repo):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    set_params(repo, {("train", "device"): "cuda"})
    try:
        r = subprocess.run(
            [sys.executable, *shlex.split(lock["train@efficientnet_lite0-fe-0"]["cmd"])[1:]],
            cwd=repo,
            capture_output=True,
            text=True,
        )
    finally:
        sh(repo, "git", "checkout", "params.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "train: error: train.device is cuda but no cuda device is available here; use auto or cpu"
    )


def test_changing_image_size_reruns_prepare_and_everything_below_it(repo):
    assert _dry_run_with(repo, {("prepare", "image_size"): 40}) == {
        "prepare",
        "probe",
        *(f"{s}@{n}" for s in ("train", "evaluate") for n in LITE0),
        "report",
        *(f"export@{n[:-2]}" for n in LITE0),
    }
    assert_up_to_date(repo)  # the workspace is untouched


def test_changing_the_ft_lr_reruns_only_the_ft_stages_and_report(repo):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    ran = _dry_run_with(repo, {("modes", "ft"): {**p["modes"]["ft"], "lr": 0.0005}})
    ft = "efficientnet_lite0-ft"
    assert ran == {f"train@{ft}-0", f"evaluate@{ft}-0", "report", f"export@{ft}"}
    assert would_run(repo, "repro", "--dry") == {"check_params"}


def test_another_seed_trains_only_the_new_runs_and_the_report_aggregates_them(repo, tmp_path):
    """train.seeds=[0, 1]: the seed-0 runs are kept, seed 1 trains, and the report's figures are
    the mean and SD over both, with the per-seed paired differences and their t-interval."""
    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["train"]["seeds"] = [0, 1]
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    ran = would_run(work, "repro")
    assert ran == {
        "check_params",
        *(f"{s}@{n[:-2]}-1" for s in ("train", "evaluate") for n in LITE0),
        "report",
    }
    h = {
        (m, s): json.loads((work / "eval" / f"efficientnet_lite0-{m}-s{s}" / "headline.json").read_text())
        for m in MODES
        for s in (0, 1)
    }
    for m in MODES:
        agg = json.loads((work / "metrics" / "modes" / f"efficientnet_lite0-{m}.json").read_text())
        accs = [h[m, 0]["accuracy"], h[m, 1]["accuracy"]]
        assert agg["seeds"] == 2 and agg["accuracy"] == pytest.approx(sum(accs) / 2, abs=1e-6)
        assert agg["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5, abs=1e-6)
        assert "accuracy_ci_low" not in agg  # a single run's bootstrap interval is not the mean's
        iv = json.loads((work / "metrics" / "intervals" / f"efficientnet_lite0-{m}.json").read_text())
        assert iv["accuracy"] == pytest.approx(agg["accuracy"], abs=1e-6)  # the mean's, over the seeds
        if iv["accuracy_ci_low"] is not None:
            assert iv["accuracy_ci_low"] < agg["accuracy"] < iv["accuracy_ci_high"]
    table = pd.read_csv(work / "metrics" / "summary.csv").set_index("NETWORK")
    assert table.loc["efficientnet_lite0-ft", "Seeds"] == 2
    assert table.loc["efficientnet_lite0-ft", "AUROC"] == pytest.approx(
        (h["ft", 0]["auroc"] + h["ft", 1]["auroc"]) / 2, abs=1e-6
    )
    pair = json.loads((work / "metrics" / "compare.json").read_text())["pairs"][
        "efficientnet_lite0-ft vs efficientnet_lite0-fe"
    ]
    diffs = [h["ft", s]["accuracy"] - h["fe", s]["accuracy"] for s in (0, 1)]
    acc = pair["accuracy"]
    assert pair["seeds"] == [0, 1] and acc["method"] == "over_runs" and acc["runs"] == 2
    assert acc["point"] == pytest.approx(
        sum(diffs) / 2, abs=1e-6
    )  # the mean of the paired per-seed differences
    summary = (work / "metrics" / "summary.md").read_text()
    if acc["ci"]:  # two seeds: one degree of freedom for their part, t = 12.7: wide
        spread = abs(diffs[0] - diffs[1]) / 2**0.5
        assert acc["ci"][1] - acc["ci"][0] >= 2 * 1.96 * spread / 2**0.5 - 1e-6
    assert "seeds x test set" in summary and "mean ± SD over 2 seeds" in summary


def test_an_external_site_is_prepared_scored_and_compared(repo, tmp_path):
    """Turning on the demo's external site reruns only what it feeds: its images are indexed and
    prepared by the training data's rules, every model is scored on them with the internal
    validation threshold, and the report puts internal and external side by side; the external
    stages read exactly what dvc.yaml declares."""
    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    set_params(
        work,
        {
            ("synthesize", "external"): "site-b",
            ("external", None): [{"name": "site-b", "root": "data/site-b"}],
        },
    )
    sh(work, "git", "add", "-A")
    sh(work, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "site b")
    ran = would_run(work, "repro")
    assert ran == {
        "check_params",
        "synthesize",
        "external@0",
        "external_eval@0",
        "report",
    }  # the internal images are unchanged
    repo, names = work, [f"efficientnet_lite0-{m}" for m in MODES]
    summary = (repo / "metrics" / "summary.md").read_text()
    ext = json.loads((repo / "metrics" / "external" / "site-b.json").read_text())
    assert ext["images_kept"] == 10 and ext["per_class_kept"] == {"Covid": 3, "Normal": 7}  # 14 // 2, 14 // 4
    assert ext["internal_copies"]["dropped"] == 0
    sites = json.loads((repo / "metrics" / "external.json").read_text())["sites"]
    (site,) = sites
    assert site["name"] == "site-b" and set(site["runs"]) == set(names)
    for n in names:  # each model on the 10 external images, its figures and drop from the files
        pred = pd.read_csv(repo / "eval" / "external" / "site-b" / f"{n}-s0" / "predictions.csv")
        assert len(pred) == 10 and set(pred["path"].str.split("/").str[0]) == {"COVID", "NORMAL"}
        r = site["runs"][n]["accuracy"]
        assert r["external"] == pytest.approx((pred["predicted"] == pred["class"]).mean())
        internal = json.loads((repo / "metrics" / "modes" / f"{n}.json").read_text())
        assert r["internal"] == pytest.approx(internal["accuracy"])
        assert r["drop"]["point"] == pytest.approx(r["external"] - r["internal"], abs=1e-6)
        assert site["runs"][n]["retention_word"] in ("holds", "collapses", "unclear")
        # the threshold is the one chosen on the internal validation split, as evaluate chose it
        ext_m = json.loads((repo / "eval" / "external" / "site-b" / f"{n}-s0" / "metrics.json").read_text())
        int_m = json.loads((repo / "eval" / f"{n}-s0" / "metrics.json").read_text())
        assert ext_m["youden"].get("threshold") == int_m["youden"].get("threshold")
    assert "## External test sets" in summary and "**At site-b** (external, 10 images" in summary
    base = json.loads((repo / "eval" / "external" / "site-b" / "baselines.json").read_text())
    assert {"pixels_8", "pixels_16", "acquisition"} <= set(base)
    assert traced_problems(work, ["external@0", "external_eval@0"], tmp_path) == {}


TRACED = [
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
]
# git's, DVC's and DVCLive's own files, the resume state (tied to a fingerprint), params (compared by key)
TOOL_FILES = (".git/", ".dvc/", ".gitignore", ".dvcignore", ".resume/", "params.yaml")
# check_params' marker: declared by the root stages so they run after the whole-file check; the
# same bytes for every valid file, so it orders and never reruns anything (nothing reads it)
ORDER_DEPS = {"data/params.ok"}
# check_params lists the data folders (names and file types, never contents) to name what DVC cannot
# hash; declaring them would make DVC hash them before it runs. It reads every key (the whole file).
LISTS_ONLY = {"check_params"}


def _under(path: str, prefixes, sep: str = "/") -> bool:
    """`path` is one of `prefixes` or lies inside one (a file in a folder, a key in a section)."""
    return any(path == p or path.startswith(p.rstrip(sep) + sep) for p in prefixes)


def _declared_vs_read(stage: dict, trace: dict, root: Path, lists_only: bool = False) -> dict[str, set]:
    deps = {d["path"] for d in stage.get("deps", [])}
    outs = {o["path"] for o in stage.get("outs", [])}
    read_keys = set(trace["params"])
    whole_file = lists_only and "params.yaml" in deps  # every key declared
    declared_keys = read_keys if whole_file else set(stage.get("params", {}).get("params.yaml", {}))
    files = set()
    code_dirs = {os.path.dirname(m) for m in trace["modules"]}  # the import system lists these
    for f in trace["opened"] + ([] if lists_only else trace["listed"]):
        rel = os.path.relpath(f, root)
        if rel.startswith("..") or rel == "." or rel in code_dirs or _under(rel, TOOL_FILES):
            continue
        if "__pycache__" in rel or rel.endswith(".py"):  # code: compared as imported modules below
            continue
        if not _under(rel, outs):
            files.add(rel)
    files |= {m for m in trace["modules"] if not m.endswith("__init__.py")}
    return {
        "params read, not declared": {k for k in read_keys if not _under(k, declared_keys, ".")},
        "params declared, never read": {
            d for d in declared_keys if not any(_under(k, {d}, ".") or _under(d, {k}, ".") for k in read_keys)
        },
        "files read, not declared": {f for f in files if not _under(f, deps)},
        # params.yaml as a file dependency: check_params reads the whole file (opened, filtered above)
        "deps declared, never read": {
            d for d in deps - ORDER_DEPS - {"params.yaml"} if not any(_under(f, {d}) for f in files)
        },
    }


def test_every_stage_reads_exactly_what_dvc_yaml_declares(repo, tmp_path):
    """Each stage runs with its reads traced (params keys, files, folders, project modules) and is
    compared with its entry in dvc.lock: a read that is not declared means a change that does not
    rerun the stage; a declaration that is never read means reruns for nothing."""
    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    assert traced_problems(work, TRACED, tmp_path) == {}


def traced_problems(work: Path, names, tmp_path: Path) -> dict:
    """Each stage of `names` run with its reads traced, compared with its dvc.lock entry: what was
    read but not declared, or declared but never read (empty when they agree)."""
    set_params(work, {("index", "workers"): 1, ("prepare", "workers"): 1})  # audit hooks see one process
    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    problems = {}
    for name in names:
        argv = shlex.split(lock[name]["cmd"])
        assert argv[:2] == ["python", "-m"], argv
        out = tmp_path / f"{name}.json"
        sh(work, sys.executable, str(ROOT / "tests" / "trace_stage.py"), str(out), *argv[2:])
        trace = json.loads(out.read_text())
        assert trace["exit"] == 0, name
        seen = _declared_vs_read(lock[name], trace, work, lists_only=name in LISTS_ONLY)
        found = {k: sorted(v) for k, v in seen.items() if v}
        if found:
            problems[name] = found
    print(json.dumps(problems, indent=1))
    return problems


def test_radiography_database_layout_by_changing_data_root_alone(repo, tmp_path):
    """In its own copy of the project: it reruns index and prepare on another folder, which must
    not change the shared fixture the other tests read."""
    db = radiography_db(tmp_path / "COVID-19_Radiography_Dataset", ("COVID", "Normal", "Lung_Opacity"), n=5)
    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    set_params(work, {("data", "root"): str(db)})
    sh(work, "dvc", "repro", "prepare")
    report = json.loads((work / "metrics" / "index_report.json").read_text())
    assert report["per_class"] == {"Covid": 5, "Normal": 5}
    assert report["skipped_by_reason"]["mask folder"] == 15
    assert report["root"] == "<absolute>/COVID-19_Radiography_Dataset"  # no personal path committed
    assert report["metadata"] == {  # the class sheets, read with no setting
        "tables": ["COVID.metadata.xlsx", "Normal.metadata.xlsx"],
        "found": "auto",
        "patient_column": None,
        "source_column": "URL",
        "notes": [],
    }
    data = pd.read_csv(work / "data" / "data.csv")
    assert sorted(data["source"].unique()) == sorted(URLS.values())
    n = [json.loads((work / "data" / "prepared" / s / "meta.json").read_text())["n"] for s in SPLITS]
    assert sum(n) == 10
    assert_up_to_date(repo)  # the shared project is untouched


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does where it can)"
)


@needs_chromium
def test_the_report_page_renders_every_chart_offline(repo):
    page = repo / "report" / "index.html"
    assert page.stat().st_size > 300_000  # the Vega bundle and the Grad-CAM grids are inside it
    dom, requests = dump_dom(CHROMIUM, page)
    assert requests == []  # nothing tried to leave the machine
    found = {c["attrs"]["data-chart"]: c for c in charts(dom, "data-chart")}
    assert set(found) == {"val_accuracy", "loss", "roc", "pr", "confusion"}
    for name, c in found.items():
        assert c["attrs"].get("data-rendered") == "yes" and c["svg"] >= 1 and c["marks"] >= 2, (name, c)
    assert dom.count('src="data:image/png;base64,') == len(MODES)  # a Grad-CAM grid per mode
    for heading in (
        "Can these results be trusted?",
        "Mode against mode",
        "Where do the models look?",
        "The data",
    ):
        assert heading in dom
    assert "efficientnet_lite0-ft_gradual" in dom and "torchvision" in dom


@needs_chromium
def test_dvc_plots_show_renders_offline_with_the_project_template(repo):
    sh(repo, "dvc", "plots", "show", "-o", "offline_plots")
    page = repo / "offline_plots" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    dom, requests = dump_dom(CHROMIUM, page)
    assert requests == []
    runs = len(list((repo / "live").glob("*.csv")))  # the `live` plot is a folder: a chart per run
    vega = len(yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]) - 4 - 1 + runs  # 4 PNGs: <img>
    assert dom.count('class="vega-embed') == vega and dom.count("<svg") >= vega
    assert dom.count('class="mark-') >= 2 * vega


@needs_chromium
def test_the_browser_check_catches_a_page_that_loads_from_a_cdn(tmp_path):
    page = tmp_path / "cdn.html"
    page.write_text('<html><head><script src="https://cdn.jsdelivr.net/npm/vega@5"></script></head></html>')
    _, requests = dump_dom(CHROMIUM, page, budget_ms=3000)
    assert any("cdn.jsdelivr.net" in r for r in requests)


def test_the_experiments_table_is_narrow_and_reads_the_headline_files(repo):
    out = sh(
        repo, sys.executable, "-m", "cxr_transfer", "experiments", "--figures", "accuracy", "--intervals"
    )
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["experiment", "fe", "acc"] and max(map(len, lines)) < 200
    fe = json.loads((repo / "metrics" / "modes" / "efficientnet_lite0-fe.json").read_text())
    iv = json.loads((repo / "metrics" / "intervals" / "efficientnet_lite0-fe.json").read_text())
    cell = f"{fe['accuracy']:.3f} [{iv['accuracy_ci_low']:.3f}, {iv['accuracy_ci_high']:.3f}]"
    assert (
        lines[1].split()[0] == "workspace" and lines[1].split()[1:4] == cell.split()
    )  # the figure, its interval


def test_a_folder_remote_round_trip_restores_the_results_without_retraining(repo, tmp_path):
    """Shared storage: `dvc push` from one clone to a remote (a local folder here; S3 or SSH is
    the same commands with the plugin), `dvc pull` in a fresh clone: then `dvc repro` runs no
    stage and `dvc metrics show` is identical. And the registry: a tagged exported model fetched
    by name with `dvc artifacts get` predicts what evaluate scored."""
    origin, fresh, remote = tmp_path / "origin", tmp_path / "fresh", tmp_path / "remote"
    shutil.copytree(repo, origin, symlinks=True)
    sh(origin, "dvc", "remote", "add", "-d", "shared", str(remote))
    sh(origin, "git", "add", ".dvc/config")
    sh(origin, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "remote")
    assert "files pushed" in sh(origin, "dvc", "push")
    sh(tmp_path, "git", "clone", "-q", str(origin), str(fresh))
    assert not (fresh / "models").exists() and not (fresh / "data" / "prepared").exists()
    sh(fresh, "dvc", "pull")
    assert_up_to_date(fresh)

    show = ("dvc", "metrics", "show", "--json")
    assert json.loads(stdout(fresh, *show)) == json.loads(stdout(origin, *show)) != {}
    for f in ("models/efficientnet_lite0-ft-s0/best.pt", "report/index.html"):
        assert (fresh / f).read_bytes() == (origin / f).read_bytes()

    # the model registry: a version tag, then `dvc artifacts get` by name into a folder outside any
    # project, and predict with what arrived gives evaluate's probabilities
    tag = "efficientnet_lite0-ft@v1.0.0"
    sh(origin, "git", "-c", "user.email=t@t", "-c", "user.name=t", "tag", "-a", tag, "-m", "first version")
    # GTO (the registry's own tool) promotes that version to prod and lists it
    who = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    sh(origin, "env", *(f"{k}={v}" for k, v in who.items()), "gto", "assign", "efficientnet_lite0-ft",
       "--version", "v1.0.0", "--stage", "prod")  # fmt: skip
    shown = json.loads(stdout(origin, "gto", "show", "--json"))
    assert shown["efficientnet_lite0-ft"]["version"] == "v1.0.0", shown
    assert shown["efficientnet_lite0-ft"]["stage"]["prod"] == "v1.0.0", shown
    got = tmp_path / "got"
    sh(
        tmp_path,
        "dvc",
        "artifacts",
        "get",
        str(origin),
        "efficientnet_lite0-ft",
        "--stage",
        "prod",
        "-o",
        str(got),
    )
    assert sorted(p.name for p in got.iterdir()) == ["card.json", "model.onnx"]
    pred = pd.read_csv(origin / "eval" / "efficientnet_lite0-ft-s0" / "predictions.csv")
    files = [str(origin / "data" / "raw" / p) for p in pred["path"]]
    sh(
        tmp_path,
        sys.executable,
        "-m",
        "cxr_transfer",
        "predict",
        *files,
        "--model",
        str(got),
        "--out",
        "p.csv",
    )
    new = pd.read_csv(tmp_path / "p.csv")
    assert np.abs(new["p_Covid"].to_numpy() - pred["probability"].to_numpy()).max() < 1e-4


def test_a_queued_grid_runs_two_at_a_time_and_exp_show_compares_it(repo, tmp_path):
    """`dvc exp run --queue` with a grid, `dvc queue start --jobs 2`: both experiments run at once,
    each in its own workspace (nothing shared: the resume folder is per workspace), both succeed,
    and `dvc exp show` lists each with its own parameter and results."""
    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    queued = sh(work, "dvc", "exp", "run", "--queue", "-S", "modes.ft.lr=0.0003,0.0001")
    assert queued.count("Queued experiment") == 2, queued
    sh(work, "env", "OMP_NUM_THREADS=1", "dvc", "queue", "start", "--jobs", "2")  # a core each
    status, deadline = "", time.monotonic() + 900
    while time.monotonic() < deadline:
        status = sh(work, "dvc", "queue", "status")
        if not any(w in status for w in ("Queued", "Running")):
            break
        time.sleep(2)
    assert status.count("Success") == 2 and "Failed" not in status, status
    rows = list(csv.DictReader(io.StringIO(stdout(work, "dvc", "exp", "show", "--csv"))))
    assert rows[0]["rev"] == "workspace" and rows[0]["modes.ft.lr"] == "0.001"
    exps = {r["modes.ft.lr"]: r for r in rows if r["Experiment"]}
    acc = "metrics/modes/efficientnet_lite0-ft.json:accuracy"
    assert set(exps) == {"0.0003", "0.0001"}, rows
    for r in exps.values():  # each reran fine-tuning alone (its own lr), from the shared baseline
        log = sh(work, "dvc", "queue", "logs", r["Experiment"])
        assert "Running stage 'train@efficientnet_lite0-ft-0'" in log and r[acc], log
        assert "Stage 'train@efficientnet_lite0-fe-0' didn't change, skipping" in log


def test_torchrun_with_two_gloo_processes_trains_what_one_process_trains(repo, tmp_path):
    """`train.launcher=torchrun ...` runs the train stage as 2 CPU processes (gloo): each takes half
    of every global batch, DistributedDataParallel averages the gradients, rank 0 alone writes.
    Feature extraction's weights equal the one-process run's within 1e-6: the same images in the
    same global batches, and the only difference is the order in which the two halves' gradients
    are summed (float32 rounding, ~1e-8 per step, carried through a few Adam steps). Fine-tuning
    runs too but is not compared: BatchNorm normalises each half by its own batch statistics."""
    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    set_params(work, {("train", "launcher"): "torchrun --standalone --nproc-per-node 2"})
    out = sh(work, "env", "OMP_NUM_THREADS=1", "dvc", "repro", "train@efficientnet_lite0-fe-0")
    assert "torchrun --standalone --nproc-per-node 2 -m stages.train" in out
    assert "2 processes (torchrun, global batch 32)" in out
    run = work / "models" / "efficientnet_lite0-fe-s0"
    one = torch.load(repo / "models" / "efficientnet_lite0-fe-s0" / "best.pt", weights_only=True)
    two = torch.load(run / "best.pt", weights_only=True)
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], rtol=0, atol=1e-6) for k in one)
    assert json.loads((run / "model.json").read_text())["processes"] == 2
    sh(work, "env", "OMP_NUM_THREADS=1", "dvc", "repro", "train@efficientnet_lite0-ft_gradual-0")
    meta = json.loads((work / "models" / "efficientnet_lite0-ft_gradual-s0" / "model.json").read_text())
    assert (
        meta["processes"] == 2 and meta["epochs_run"] == 2 and not list((work / ".resume").glob("*/last.pt"))
    )


def test_a_stopped_torchrun_run_resumes_from_rank_0s_checkpoint(repo, tmp_path):
    """Two gloo processes stopped (SIGTERM to torchrun, which ends its workers) after their second
    epoch: the rerun says it resumes from the next epoch
    (every process reads rank 0's checkpoint, which landed in ft_gradual's second phase, so DDP
    wraps the unfrozen network anew) and ends with the weights of an uninterrupted 2-process run."""
    import signal

    work = tmp_path / "proj"
    shutil.copytree(repo, work, symlinks=True)
    set_params(work, {("train", "epochs"): 6, ("train", "patience"): 100})
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }

    def argv(name: str) -> list[str]:
        return [
            *("torchrun", "--standalone", "--nproc-per-node", "2", "-m", "stages.train"),
            *("--arch", "efficientnet_lite0", "--mode", "ft_gradual", "--seed", "0"),
            *("--prepared", "data/prepared", "--out", f"models/{name}", "--live", f"dvclive/{name}"),
        ]

    last = work / ".resume" / "killed" / "last.pt"

    def epochs_done() -> int:  # the one checkpoint holds the fit state (replaced atomically)
        return len(torch.load(last, weights_only=True)["state"]["history"])

    proc = subprocess.Popen(
        argv("killed"),
        cwd=work,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            if epochs_done() >= 2:
                proc.send_signal(signal.SIGTERM)  # as a scheduler stops a job: torchrun ends its workers
                break
        time.sleep(0.1)
    proc.wait(60)
    assert proc.returncode != 0, "the run ended before it could be stopped"
    done = epochs_done()
    out = subprocess.run(argv("killed"), cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming a killed run from epoch {done + 1} of 6" in out.stdout + out.stderr, out.stdout[:600]
    sh(work, "env", "OMP_NUM_THREADS=1", *argv("whole"))
    a = torch.load(work / "models" / "killed" / "best.pt", weights_only=True)
    b = torch.load(work / "models" / "whole" / "best.pt", weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)
