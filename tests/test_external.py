"""External test sets: copies of internal images found, the drop's interval, rankings, the verdict."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_transfer.core.errors import CxrError
from cxr_transfer.data.external import internal_copies
from cxr_transfer.data.index import build_index
from cxr_transfer.data.synth import render_cxr, synthesize
from cxr_transfer.evaluate.external import (
    answer_lines,
    compare_sites,
    drop,
    ranking,
    shortcut_line,
)
from cxr_transfer.evaluate.metrics import auroc

CLASSES = {"Normal": ("NORMAL",), "Covid": ("COVID",)}


def test_exact_and_near_copies_of_internal_images_are_found(tmp_path):
    """An external set holding one internal image as it is, one resized and re-encoded as JPEG, and
    fresh images: the first two are named with the internal image they copy; the fresh ones are not."""
    internal_root, external_root = tmp_path / "internal", tmp_path / "external"
    synthesize(internal_root, 6, 128, seed=0)
    synthesize(external_root, 6, 128, seed=0, site="b")
    a, b = internal_root / "COVID" / "Covid-0001.png", internal_root / "NORMAL" / "Normal-0002.png"
    (external_root / "COVID" / "copied.png").write_bytes(a.read_bytes())
    Image.open(b).resize((160, 160)).save(external_root / "NORMAL" / "resized.jpg", quality=90)
    internal, _ = build_index(internal_root, CLASSES, 10**8, workers=1)
    external, _ = build_index(external_root, CLASSES, 10**8, workers=1)
    found = internal_copies(external, internal, {"phash": 12, "phash_framed": 24})
    assert sorted(found["path"]) == ["COVID/copied.png", "NORMAL/resized.jpg"]
    row = found.set_index("path")
    assert row.loc["COVID/copied.png", "how"] == "exact"
    assert row.loc["COVID/copied.png", "internal_path"] == "COVID/Covid-0001.png"
    assert row.loc["NORMAL/resized.jpg", "internal_path"] == "NORMAL/Normal-0002.png"
    assert row.loc["NORMAL/resized.jpg", "how"] in ("phash", "phash_framed")
    assert internal_copies(external, internal, {"phash": None, "phash_framed": None})["path"].tolist() == [
        "COVID/copied.png"
    ]  # near-copy search off: exact copies only


def _pred(y, p, groups=None):
    return pd.DataFrame(
        {
            "class": np.where(y == 1, "Covid", "Normal"),
            "probability": p,
            "group": groups if groups is not None else [f"g{i}" for i in range(len(y))],
        }
    )


def test_the_drop_is_external_minus_internal_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    yi, ye = rng.integers(0, 2, 200), rng.integers(0, 2, 150)
    pi = np.clip(yi * 0.5 + rng.random(200) * 0.5, 0, 1)  # separates well
    pe = np.clip(ye * 0.1 + rng.random(150) * 0.9, 0, 1)  # barely
    d = drop(_pred(yi, pi), _pred(ye, pe), ["Normal", "Covid"], "Covid", 300, 0, 0.95)
    assert d["internal"]["auroc"] == pytest.approx(auroc(yi, pi), abs=1e-6)
    assert d["auroc_drop"] == pytest.approx(auroc(ye, pe) - auroc(yi, pi), abs=1e-6)
    acc_i, acc_e = ((pi >= 0.5) == yi).mean(), ((pe >= 0.5) == ye).mean()
    assert d["accuracy_drop"] == pytest.approx(acc_e - acc_i, abs=1e-6)
    lo, hi = d["auroc_drop_ci"]
    assert lo < d["auroc_drop"] < hi < 0  # a real drop: the interval excludes 0
    assert (d["internal"]["n"], d["external"]["n"]) == (200, 150)


def test_a_reversed_ranking_is_called_and_a_kept_one_is_not():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 100)
    good, bad = np.where(y == 1, 0.9, 0.1), np.where(y == 1, 0.1, 0.9)
    internal = {"a-ft": _pred(y, good), "a-scratch": _pred(y, bad)}
    flipped = {"a-ft": _pred(y, bad), "a-scratch": _pred(y, good)}
    site = compare_sites("b", 100, internal, flipped, ["Normal", "Covid"], "Covid", (20, 0, 0.95))
    r = site["ranking"]["a"]
    assert (r["internal"], r["external"], r["reversed"]) == (["ft", "scratch"], ["scratch", "ft"], True)
    assert "**The ranking reverses: internally ft wins, at b scratch does**" in answer_lines([site])[0]
    same = compare_sites("b", 100, internal, internal, ["Normal", "Covid"], "Covid", (20, 0, 0.95))
    assert same["ranking"]["a"]["reversed"] is False
    said = answer_lines([same])[0]
    assert "ranks ft > scratch by accuracy (internal: ft > scratch). The internal winner, ft, holds." in said
    both_good = {"a-ft": _pred(y, good), "a-scratch": _pred(y, good)}
    tied = compare_sites("b", 100, internal, both_good, ["Normal", "Covid"], "Covid", (20, 0, 0.95))
    assert tied["ranking"]["a"]["reversed"] is False  # a tie at the site is not a reversal
    said = answer_lines([tied])[0]
    assert "ranks ft = scratch" in said and "it ties at this site" in said
    assert ranking({"x": None, "y": 0.2, "z": 0.9}) == ["z", "y", "x"]


@pytest.mark.parametrize(
    "base_ext, cnn_ext, words",
    [
        (0.55, 0.85, "The baseline collapses and the CNN holds"),
        (0.55, 0.55, "Both collapse: the internal figure was most likely the shortcut"),
        (0.88, 0.86, "Both hold"),
        (0.88, 0.52, "The baseline holds but the CNN collapses"),
    ],
)
def test_the_shortcut_verdict_per_site(base_ext, cnn_ext, words):
    probe = {"pixels_16": {"auroc": 0.9}, "acquisition": {"auroc": 0.6}}
    base = {"pixels_16": {"auroc": base_ext}, "acquisition": {"auroc": 0.5}}
    line = shortcut_line("site-b", probe, base, "arch-ft", 0.9, cnn_ext)
    assert (
        words in line and "pixels 16" in line and f"AUROC 0.90 internal -> {base_ext:.2f} on site-b" in line
    )


def test_no_internal_separation_means_nothing_to_carry_over():
    line = shortcut_line("s", {"pixels_8": {"auroc": 0.48}}, {"pixels_8": {"auroc": 0.5}}, "m", 0.8, 0.7)
    assert "did not separate the classes internally" in line


def test_site_b_is_another_acquisition_of_the_same_anatomy():
    """Site b: the same disease renderer, another exposure (brighter, flatter), more noise and a label
    block; deterministic per image."""
    a = render_cxr(np.random.default_rng([0, 1, 3]), 128, covid=True).astype(float)
    b = render_cxr(np.random.default_rng([0, 1, 3]), 128, covid=True, site="b").astype(float)
    assert np.array_equal(b, render_cxr(np.random.default_rng([0, 1, 3]), 128, covid=True, site="b"))
    assert b.mean() > a.mean() + 15 and b.std() < a.std()  # brighter and flatter
    noise = lambda im: np.abs(np.diff(im, axis=1)).mean()  # noqa: E731
    assert noise(b) > noise(a)


@pytest.mark.parametrize(
    "root, expect",
    [
        (
            "missing",
            "external[0].root {root} does not exist or is not a folder; set external[0].root in params.yaml",
        ),
        (
            "empty",
            "no images found under {root} in folders named ['covid', 'normal']; check external[0].root",
        ),
    ],
)
def test_an_unusable_external_folder_is_one_line_naming_its_key(tmp_path, root, expect):
    folder = tmp_path / root
    if root == "empty":
        folder.mkdir()
    with pytest.raises(CxrError) as e:
        build_index(folder, CLASSES, 10**8, workers=1, key="external[0].root")
    assert str(e.value).startswith(expect.format(root=folder)) and "\n" not in str(e.value)
