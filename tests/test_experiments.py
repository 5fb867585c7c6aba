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


def test_a_running_experiment_is_labelled_and_not_compared(tmp_path):
    """A running experiment's row shows its baseline's files until it ends: the narrow table says
    so and --against leaves it out, saying why."""
    from cxr_transfer.report.paired import against

    t = _table().assign(State=["", "", "Running"])
    assert narrow(t, ["accuracy"], PARAMS)["experiment"].tolist() == ["workspace", "main", "size64 (running)"]
    (tmp_path / "params.yaml").write_text("{}\n")
    lines = against(t, "workspace", tmp_path)
    assert lines[-1] == "size64: running, not compared"


def test_several_archs_keep_their_names():
    t = narrow(_table(("a", "b")), ["accuracy"], PARAMS)
    assert [c for c in t.columns if c.endswith(" acc")] == ["a-fe acc", "a-ft acc", "b-fe acc", "b-ft acc"]
    with pytest.raises(KeyError):
        t["fe acc"]


def test_param_keys_are_dotted_paths_of_the_params_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("prepare:\n  image_size: 96\nmodes:\n  ft:\n    lr: 0.001\narchs: [a]\n")
    assert param_keys(f) == {"prepare", "prepare.image_size", "modes", "modes.ft", "modes.ft.lr", "archs"}


def _predictions(rng, n: int, shift: float, order=None) -> pd.DataFrame:
    """A two-class predictions.csv: n images, half Covid, scores separating by `shift`."""
    import numpy as np

    y = np.arange(n) % 2
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + shift * (2 * y - 1))))
    cls = np.where(y == 1, "Covid", "Normal")
    df = pd.DataFrame(
        {"path": [f"img{i}.png" for i in range(n)], "group": [f"g{i // 2}" for i in range(n)], "class": cls}
    )
    df = df.assign(label=y, probability=p.round(6), predicted=np.where(p >= 0.5, "Covid", "Normal"))
    return df if order is None else df.iloc[order].reset_index(drop=True)


def _commit(repo, files: dict[str, pd.DataFrame], message: str) -> str:
    import subprocess

    for path, df in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(repo / path, index=False)
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True)  # noqa: E731
    run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return run("rev-parse", "HEAD").stdout.strip()


def test_against_pairs_each_experiment_with_the_baseline_on_the_same_images(tmp_path):
    """Two commits (baseline, an experiment whose ft is better at site-b and whose fe scored
    other images): the printed interval is the paired one on the images, realigned by path, at a
    Bonferroni confidence over the comparisons made; the other images are named, not compared."""
    import subprocess

    import numpy as np

    from cxr_transfer.evaluate import verdicts
    from cxr_transfer.evaluate.verdicts import Scored
    from cxr_transfer.report.paired import against

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "params.yaml").write_text("evaluate: {bootstrap: 400, seed: 3, confidence: 0.95}\n")
    rng = np.random.default_rng(0)
    base = {
        "eval/a-ft-s0/predictions.csv": _predictions(rng, 120, 1.0),
        "eval/a-fe-s0/predictions.csv": _predictions(rng, 120, 1.0),
        "eval/external/site-b/a-ft-s0/predictions.csv": _predictions(rng, 200, 0.4),
    }
    b_rev = _commit(tmp_path, base, "baseline")
    shuffled = rng.permutation(200)  # the experiment wrote its rows in another order
    exp = {
        "eval/a-ft-s0/predictions.csv": _predictions(rng, 120, 1.0),
        "eval/a-fe-s0/predictions.csv": _predictions(rng, 100, 1.0),  # another split's test images
        "eval/external/site-b/a-ft-s0/predictions.csv": _predictions(rng, 200, 1.5, shuffled),
    }
    e_rev = _commit(tmp_path, exp, "clahe")
    s_rev = _commit(tmp_path, base, "same")  # DVC's run cache: the baseline's models again
    table = pd.DataFrame(
        {
            "Experiment": ["", "", "clahe", "same"],
            "rev": ["workspace", "main", e_rev[:7], s_rev[:7]],
            "typ": ["baseline", "baseline", "branch_commit", "branch_commit"],
        }
    )
    table.loc[1, "rev"] = b_rev
    lines = against(table, None, tmp_path)
    assert (
        lines[0].startswith(f"Against {b_rev} (auroc:")
        and "97.50% intervals, Bonferroni over 2 comparisons" in lines[0]
    )
    classes = ["Normal", "Covid"]
    ext_b = base["eval/external/site-b/a-ft-s0/predictions.csv"]
    ext_e = (
        exp["eval/external/site-b/a-ft-s0/predictions.csv"].set_index("path").loc[ext_b["path"]].reset_index()
    )
    rs = verdicts.resample(ext_b["group"].to_numpy(), 200, 400, np.random.default_rng(3))
    a, b = Scored.of(ext_e, classes, "Covid"), Scored.of(ext_b, classes, "Covid")
    iv = verdicts.difference("auroc", [a], [b], rs, 0.975)
    site = next(x for x in lines if "at site-b" in x)
    assert f"{iv.point:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}], 1 run (test_set)" in site
    assert iv.lo > 0 and site.endswith("-> clahe ahead (suggestive)")  # one seed: never conclusive
    assert "  clahe ft internal:" in "\n".join(lines)
    assert lines[-2] == f"clahe a-fe internal: not the same images as {b_rev}'s; not compared"
    # identical predictions are no comparison: not tested, not counted in the correction
    assert lines[-1] == f"same: 3 of its runs score exactly as {b_rev}'s (the same models); not compared"
    assert len([x for x in lines if x.startswith("  ")]) == 2
