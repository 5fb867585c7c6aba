"""End to end: the project copied into a fresh git + DVC repo, `dvc repro` on a tiny dataset."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, write_image

TINY = {
    ("synthesize", "n_per_class"): 14,
    ("synthesize", "image_size"): 64,
    ("prepare", "image_size"): 32,
    ("train", "epochs"): 2,
    ("evaluate", "bootstrap"): 20,
    ("report", "gradcam_per_group"): 1,
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


def set_params(repo: Path, changes: dict) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for (section, key), value in changes.items():
        p[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dst = tmp_path_factory.mktemp("e2e") / "proj"
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    keep = ("stages/", "cxr_transfer/", ".dvc/", "dvc.yaml", "params.yaml", ".gitignore", "pyproject.toml")
    for f in files:
        if f.startswith(keep) and (ROOT / f).exists():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    set_params(dst, TINY)
    sh(dst, "git", "init", "-q")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", "--allow-empty")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project")
    sh(dst, "dvc", "repro")
    return dst


def test_repro_writes_every_output(repo):
    names = ["efficientnet_lite0-scratch", "efficientnet_lite0-fe", "efficientnet_lite0-ft"]
    keys = None
    for n in names:
        m = json.loads((repo / "metrics" / f"{n}.json").read_text())
        keys = keys or set(m)
        assert set(m) == keys  # identical keys for every mode
        assert 0 <= m["accuracy"] <= 1 and m["n_test"] == 6
        assert (repo / "models" / n / "best.pt").exists() and (repo / "models" / n / "last.pt").exists()
        sidecar = json.loads((repo / "models" / n / "model.json").read_text())
        assert sidecar["image_size"] == 32 and sidecar["classes"] == ["Normal", "Covid"]
        assert (repo / "dvclive" / n / "plots" / "metrics" / "val" / "acc.tsv").exists()
        assert (repo / "plots" / "gradcam" / f"{n}.png").stat().st_size > 1000
    split = json.loads((repo / "metrics" / "split.json").read_text())
    assert split["group_overlap"] == 0
    assert split["counts"] == {
        "train": {"Covid": 9, "Normal": 9},
        "val": {"Covid": 2, "Normal": 2},
        "test": {"Covid": 3, "Normal": 3},
    }
    summary = (repo / "metrics" / "summary.md").read_text()
    assert all(n in summary for n in names) and "(best)" in summary
    compare = json.loads((repo / "metrics" / "compare.json").read_text())
    assert set(compare) == {
        "efficientnet_lite0-fe vs efficientnet_lite0-scratch",
        "efficientnet_lite0-ft vs efficientnet_lite0-scratch",
        "efficientnet_lite0-ft vs efficientnet_lite0-fe",
    }
    for png in ("val_accuracy", "loss", "roc", "confusion"):
        assert (repo / "plots" / f"{png}.png").stat().st_size > 5000


def test_metrics_show_lists_every_mode_and_plots_show_writes_html(repo):
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json"))
    files = shown[""]["data"]
    for mode in ("scratch", "fe", "ft"):
        assert files[f"metrics/efficientnet_lite0-{mode}.json"]["data"]["mode"] == mode
    sh(repo, "dvc", "plots", "show", "-o", "dvc_plots")
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert "Validation accuracy vs epoch" in html and "efficientnet_lite0-fe" in html


def test_second_repro_does_nothing(repo):
    out = sh(repo, "dvc", "repro")
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_changing_image_size_reruns_prepare_and_below_only(repo):
    set_params(repo, {("prepare", "image_size"): 40})
    status = sh(repo, "dvc", "status")
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith("\t")}
    assert "prepare" in changed
    assert not {"synthesize", "index", "split"} & changed
    set_params(repo, {("prepare", "image_size"): 32})
    assert "up to date" in sh(repo, "dvc", "status")


def test_radiography_database_layout_by_changing_data_root_alone(repo, tmp_path):
    db = tmp_path / "COVID-19_Radiography_Dataset"
    for k, folder in enumerate(("COVID", "Normal", "Lung_Opacity")):
        for i in range(5):
            write_image(db / folder / "images" / f"{folder}-{i + 1}.png", size=(40, 40), seed=100 * k + i)
            write_image(db / folder / "masks" / f"{folder}-{i + 1}.png", size=(40, 40), seed=900 + i)
        (db / f"{folder}.metadata.xlsx").write_bytes(b"PK\x03\x04")
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["data"]["root"] = str(db)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        sh(repo, "dvc", "repro", "prepare")
        report = json.loads((repo / "metrics" / "index_report.json").read_text())
        assert report["per_class"] == {"Covid": 5, "Normal": 5}
        assert report["skipped_by_reason"]["mask folder"] == 15
        meta = json.loads((repo / "data" / "prepared" / "meta.json").read_text())
        assert sum(s["n"] for s in meta["splits"].values()) == 10
    finally:
        sh(repo, "git", "checkout", "params.yaml")
