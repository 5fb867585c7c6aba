"""Stages fail on bad input with one line naming the problem, never a traceback."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def stage(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize(
    "params, expect",
    [
        (
            "train:\n  epochs: many\n",
            "index: error: params.yaml: train.epochs: expected an integer, got 'many'",
        ),
        ("data:\n  root: /no/such/folder\n", "index: error: data.root /no/such/folder does not exist"),
        ("archs: [alexnet]\n", "index: error: params.yaml: archs: 'alexnet' is not one of"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, params, expect):
    p = tmp_path / "params.yaml"
    p.write_text(params)
    r = stage(
        "stages.index",
        "--params",
        str(p),
        "--out",
        str(tmp_path / "d.csv"),
        "--report",
        str(tmp_path / "r.json"),
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith(expect), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
