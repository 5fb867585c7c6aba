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
    assert "6 kept, 0 broken" in r.stdout


def test_the_light_stages_contract_names_the_stages_that_never_wait_for_the_warm_server():
    import tomllib

    import stages

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (light,) = [c for c in contracts if c["name"].startswith("The light stages")]
    assert set(light["source_modules"]) == {f"stages.{name}" for name in stages.LIGHT}
    assert "torch" in light["forbidden_modules"]


@pytest.mark.parametrize(
    "module, line, contract",
    [
        (
            "data/groups.py",
            "from cxr_transfer.runtime import batches",
            "Data never imports the torch runtime",
        ),
        ("core/errors.py", "import torch", "Data never imports the torch runtime"),
        (
            "report/charts.py",
            "from cxr_transfer.train import loop",
            "Nothing but the train stage, the bench and train itself imports train",
        ),
        (
            "runtime/speed.py",
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
            "from cxr_transfer.runtime.card import ModelInfo",
            "The ONNX path never imports torch",
        ),
        ("evaluate/seeds.py", "import stages.train", "Nothing imports the stage scripts"),
        ("../stages/index.py", "from cxr_transfer.runtime import batches", "The light stages"),
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


def test_what_a_change_reruns_is_what_docs_internals_says():
    """docs/internals.md's table (a subpackage -> the stages a change to one of its files reruns)
    is dvc.yaml's: each stage depends on the subpackage folders of its layer."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = {name: set(s.get("do", s)["deps"]) for name, s in stages.items()}
    doc = (ROOT / "docs" / "internals.md").read_text()
    rows = dict(re.findall(r"^\| `cxr_transfer/(\w+)/` \| ([^|]+) \|$", doc, re.M))
    packages = sorted(p.name for p in (ROOT / "cxr_transfer").iterdir() if (p / "__init__.py").exists())
    assert sorted(rows) == packages  # every subpackage has its row
    for package, said in rows.items():
        reruns = {n for n, d in deps.items() if f"cxr_transfer/{package}" in d}
        if said.strip() == "every stage":
            want = set(stages)
        elif said.strip().startswith("every stage but "):
            want = set(stages) - {said.strip().removeprefix("every stage but ")}
        else:
            want = {x.strip() for x in said.split(",")}
        assert reruns == want, package
    for name, d in deps.items():  # code reaches a stage only by its script and its layers' folders
        code = {x for x in d if x.startswith(("cxr_transfer", "stages"))}
        assert all(x.count("/") == 1 for x in code), name


def test_no_library_function_takes_more_than_nine_parameters():
    """Settings reach a function as the sections it reads and small run-time dataclasses, never as
    long lists of loose fields (docs/internals.md)."""
    long = []
    for path in sorted((ROOT / "cxr_transfer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                n = len(names) - (names[:1] in (["self"], ["cls"])) + bool(a.vararg) + bool(a.kwarg)
                if n > 9:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({n})")
    assert long == []
