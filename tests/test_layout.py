"""The tree shows the pipeline and keeps its shape: the import contracts hold (and do catch a
violation), and every stage script stays an entry point, not logic."""

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
STAGES = sorted(p for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_import_contracts_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "4 kept, 0 broken" in r.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        (
            "data/groups.py",
            "from cxr_transfer.train import loop",
            "Data never imports train, and never torch",
        ),
        ("core/errors.py", "import torch", "Data never imports train, and never torch"),
        (
            "train/speed.py",
            "from cxr_transfer.evaluate import metrics",
            "The library is layered as the pipeline runs",
        ),
        (
            "report/charts.py",
            "from cxr_transfer.serve import export",
            "The library is layered as the pipeline runs",
        ),
        (
            "serve/onnx.py",
            "from cxr_transfer.train.card import ModelInfo",
            "The ONNX path never imports torch",
        ),
        ("evaluate/seeds.py", "import stages.train", "Nothing imports the stage scripts"),
    ],
)
def test_a_planted_violation_breaks_its_contract(tmp_path, module, line, contract):
    for part in ("cxr_transfer", "stages", "bench"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "results"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "cxr_transfer" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    r = lint_imports(tmp_path)
    assert r.returncode == 1
    assert verdicts(r.stdout) == {c: c.startswith(contract) for c in verdicts(r.stdout)}, r.stdout[-1500:]


def verdicts(out: str) -> dict[str, bool]:
    """contract name -> broken?, from lint-imports' summary (it wraps long names over lines)."""
    text = " ".join(out.split())
    text = text[text.index("dependencies. ") :].split("---")[-1].split(" Contracts: ")[0]
    return {m[0].strip(): m[1] == "BROKEN" for m in re.findall(r"(.+?) (KEPT|BROKEN)", text)}


@pytest.mark.parametrize("stage", STAGES, ids=lambda p: p.stem)
def test_every_stage_is_an_entry_point_not_logic(stage):
    """<= 60 lines a script, <= 40 its main(), and nothing else defined there: the logic is in
    the library, where unit tests reach it."""
    tree = ast.parse(stage.read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert [d.name for d in defs] == ["main"]
    main = defs[0]
    assert len(stage.read_text().splitlines()) <= 60
    assert main.end_lineno - main.lineno + 1 <= 40


def test_every_exported_model_of_params_is_a_registry_artifact():
    """dvc.yaml's artifacts: one model per arch x mode of the committed params.yaml, its path the
    export stage's output, labelled with its arch and mode (what `dvc artifacts get` and gto read)."""
    import yaml

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    names = {f"{a}-{m}" for a in params["archs"] for m in params["train"]["modes"]}
    arts = dvc["artifacts"]
    assert set(arts) == names
    out = dvc["stages"]["export"]["outs"][0].replace("${item.arch}-${item.mode}", "{}")
    for name, art in arts.items():
        arch, _, mode = name.partition("-")
        assert art["path"] == out.format(name) and art["type"] == "model"
        assert art["labels"][:2] == [arch, mode] and art["desc"]
