import pandas as pd
import pytest

from cxr_transfer.report.experiments import narrow, param_keys

PARAMS = {"prepare", "prepare.image_size", "train", "train.epochs"}


def _table(archs=("a",)):
    rows = {
        "Experiment": ["", "", "size64"],
        "rev": ["workspace", "main", "97383e9"],
        "typ": ["baseline", "baseline", "branch_base"],
        "Created": ["", "2026-11-28T18:48:31", "2026-11-28T18:51:22"],
        "parent": ["", "", ""],
        "shortcut_flags": ["0", "0", "0"],
        "prepare.image_size": ["96", "96", "64"],
        "train.epochs": ["5", "5", "5"],
        "models": ["b4eaa3e3fd04d0fca89ab0e9e540b711.dir", "b4eaa3e3fd04d0fca89ab0e9e540b711.dir", ""],
    }
    for arch in archs:
        for mode, acc in (("fe", ["0.775", "0.775", "0.7751"]), ("ft", ["0.675", "0.675", "0.75"])):
            rows[f"metrics/modes/{arch}-{mode}.json:accuracy"] = acc
            rows[f"metrics/modes/{arch}-{mode}.json:auroc"] = ["0.86125", "0.86125", ""]
    return pd.DataFrame(rows)


def test_the_narrow_table_keeps_changed_params_and_names_modes_briefly():
    t = narrow(_table(), ["accuracy", "auroc"], PARAMS)
    assert list(t.columns) == ["experiment", "prepare.image_size", "fe acc", "fe AUROC", "ft acc", "ft AUROC"]
    assert t["experiment"].tolist() == ["workspace", "main", "size64"]
    assert t["fe acc"].tolist() == ["0.775", "0.775", "0.775"] and t["ft acc"].tolist()[2] == "0.750"
    assert t["fe AUROC"].tolist()[2] == "-"  # a failed or partial experiment: no figure


def test_several_archs_keep_their_names():
    t = narrow(_table(("a", "b")), ["accuracy"], PARAMS)
    assert [c for c in t.columns if c.endswith(" acc")] == ["a-fe acc", "a-ft acc", "b-fe acc", "b-ft acc"]
    with pytest.raises(KeyError):
        t["fe acc"]


def test_param_keys_are_dotted_paths_of_the_params_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("prepare:\n  image_size: 96\nmodes:\n  ft:\n    lr: 0.001\narchs: [a]\n")
    assert param_keys(f) == {"prepare", "prepare.image_size", "modes", "modes.ft", "modes.ft.lr", "archs"}
