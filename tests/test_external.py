"""External test sets: copies of internal images found, the drop's interval, rankings, the verdict."""

import numpy as np
import pytest
from PIL import Image

from cxr_transfer.core.errors import CxrError
from cxr_transfer.data.external import internal_copies
from cxr_transfer.data.index import build_index
from cxr_transfer.data.synth import render_cxr, synthesize
from cxr_transfer.evaluate import verdicts
from cxr_transfer.evaluate.external import answer_lines, mode_at_site, shortcut_line, site_verdicts
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


def _scored(y, p):
    return verdicts.Scored(
        np.asarray(y), np.asarray(p, dtype=float), (np.asarray(p) >= 0.5) == (np.asarray(y) == 1)
    )


def test_the_drop_resamples_patients_of_each_set_and_its_interval_is_the_two_sample_one():
    """Internal and external sets of patients with two images each: the drop is external minus
    internal, and its interval is as wide as resampling patients (not images) makes it."""
    rng = np.random.default_rng(0)
    yi, ye = np.repeat(rng.integers(0, 2, 100), 2), np.repeat(rng.integers(0, 2, 75), 2)
    pi = np.clip(np.repeat(yi[::2] * 0.5 + rng.random(100) * 0.5, 2), 0, 1)  # separates well, per patient
    pe = np.clip(np.repeat(ye[::2] * 0.1 + rng.random(75) * 0.9, 2), 0, 1)  # barely
    gi, ge = np.repeat(np.arange(100), 2), np.repeat(np.arange(75), 2)
    rng2 = np.random.default_rng(1)
    rs = [verdicts.resample(g, len(g), 2000, rng2) for g in (gi, ge)]
    row = mode_at_site("auroc", {0: _scored(yi, pi)}, {0: _scored(ye, pe)}, *rs, 0.95)
    assert row["auroc"]["internal"] == pytest.approx(auroc(yi, pi))
    drop = row["auroc"]["drop"]
    assert drop.point == pytest.approx(auroc(ye, pe) - auroc(yi, pi))
    assert drop.hi < 0 and drop.level() == verdicts.SUGGESTIVE  # a real drop, one run
    acc = row["accuracy"]["drop"]
    assert acc.point == pytest.approx(((pe >= 0.5) == ye).mean() - ((pi >= 0.5) == yi).mean())
    # the width a two-sample bootstrap of patients gives: each set's binomial variance over its patients
    a_i, a_e = ((pi >= 0.5) == yi).mean(), ((pe >= 0.5) == ye).mean()
    half = 1.96 * np.sqrt(a_i * (1 - a_i) / 100 + a_e * (1 - a_e) / 75)
    assert acc.hi - acc.lo == pytest.approx(2 * half, rel=0.15)
    per_image = [verdicts.resample(None, len(g), 2000, np.random.default_rng(1)) for g in (gi, ge)]
    narrow = mode_at_site("accuracy", {0: _scored(yi, pi)}, {0: _scored(ye, pe)}, *per_image, 0.95)
    assert narrow["accuracy"]["drop"].hi - narrow["accuracy"]["drop"].lo < 0.85 * (acc.hi - acc.lo)


def _site(internal, external, best_level, seeds=(0,)):
    best = {"a": {"best": "ft", "level": best_level, "leader": "ft", "modes": 2}}
    y = internal["y"]
    runs_i = {f"a-{m}": {s: _scored(y, p) for s in seeds} for m, p in internal["p"].items()}
    runs_e = {f"a-{m}": {s: _scored(external["y"], p) for s in seeds} for m, p in external["p"].items()}
    groups = (None, None)
    return site_verdicts(
        "b", runs_i, runs_e, groups, best, "auroc", (300, 0, 0.95), ["Normal", "Covid"], "Covid"
    )


def test_a_reversal_is_called_only_when_the_internal_best_is_conclusive_and_so_is_the_site():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 150)
    good = np.clip(np.where(y == 1, 0.75, 0.25) + rng.normal(0, 0.15, 150), 0, 1)
    bad = np.clip(0.5 + rng.normal(0, 0.2, 150), 0, 1)
    internal = {"y": y, "p": {"ft": good, "scratch": bad}}
    flipped = {"y": y, "p": {"ft": bad, "scratch": good}}
    site = _site(internal, flipped, verdicts.CONCLUSIVE, seeds=(0, 1, 2))
    r = site["ranking"]["a"]
    assert r["ahead_at_site"] == ["scratch"] and r["ahead_level"] == verdicts.CONCLUSIVE and r["reversed"]
    said = answer_lines([site], "auroc")[0]
    assert "**The ranking reverses**: scratch is ahead of the internal best, ft, at b (conclusive" in said
    one_seed = _site(internal, flipped, verdicts.SUGGESTIVE)
    r1 = one_seed["ranking"]["a"]
    assert (
        r1["ahead_level"] == verdicts.SUGGESTIVE and not r1["reversed"]
    )  # one run per mode: never "reverses"
    said = answer_lines([one_seed], "auroc")[0]
    assert "reverses" not in said and "scratch is ahead of the internal best, ft, at b (suggestive" in said
    same = _site(internal, internal, verdicts.CONCLUSIVE, seeds=(0, 1, 2))
    assert not same["ranking"]["a"]["reversed"] and same["ranking"]["a"]["ahead_at_site"] == []
    assert "No mode is shown ahead of the internal best, ft, at b" in answer_lines([same], "auroc")[0]


def test_the_site_line_gives_prevalence_and_the_majority_class_accuracy():
    y = np.array([1] * 10 + [0] * 20)
    p = np.where(y == 1, 0.4, 0.1)  # every Covid image missed at 0.5, yet ranked above every Normal one
    site = _site(
        {"y": y, "p": {"ft": p, "scratch": p[::-1]}},
        {"y": y, "p": {"ft": p, "scratch": p[::-1]}},
        verdicts.INCONCLUSIVE,
    )
    assert site["site"] == {
        "shares": {"Covid": 0.3333, "Normal": 0.6667},
        "majority": "Normal",
        "majority_accuracy": 0.6667,
    }
    said = answer_lines([site], "auroc")[0]
    assert "ft 1.000" in said and "against 0.667 for always calling Normal" in said


def test_a_site_with_one_class_has_no_auroc_and_says_so():
    y = np.ones(20, int)
    p = np.linspace(0.3, 0.9, 20)
    site = _site(
        {"y": np.r_[y, 1 - y], "p": {"ft": np.r_[p, 1 - p], "scratch": np.r_[1 - p, p]}},
        {"y": y, "p": {"ft": p, "scratch": p}},
        verdicts.SUGGESTIVE,
    )
    assert site["runs"]["a-ft"]["auroc"]["external"] is None
    assert site["runs"]["a-ft"]["accuracy"]["external"] == pytest.approx((p >= 0.5).mean())  # Covid recall
    assert "AUROC is undefined at b (it holds one class)" in answer_lines([site], "auroc")[0]


def _base(word, internal=0.9, external=0.55, lo=0.8):
    point = (external - 0.5) - 0.5 * (internal - 0.5)
    ci = {"holds": [0.02, 0.3], "collapses": [-0.3, -0.02], "unclear": [-0.1, 0.1]}[word]
    return {
        "internal": {"auroc": internal, "ci": [lo, 0.95]},
        "external": {"auroc": external, "ci": None},
        "retention": {"point": point, "ci": ci, "runs": 1, "method": "test_set"},
        "retention_word": word,
        "separates_internally": lo > 0.5,
    }


@pytest.mark.parametrize(
    "base_word, cnn_word, words",
    [
        ("collapses", "holds", "The baseline collapses and the CNN holds"),
        ("collapses", "collapses", "this site's images differ enough (domain shift) to defeat both"),
        ("holds", "holds", "Both hold"),
        ("holds", "collapses", "The baseline holds but the CNN collapses"),
        ("unclear", "holds", "No verdict on a shortcut: for the baseline the interval holds the line"),
    ],
)
def test_the_shortcut_verdict_per_site_comes_from_both_retention_intervals(base_word, cnn_word, words):
    base = {"pixels_16": _base(base_word), "acquisition": _base("unclear", 0.6, 0.5, 0.45)}
    iv = {"holds": (0.02, 0.3), "collapses": (-0.3, -0.02)}[cnn_word]
    cnn = {
        "auroc": {"internal": 0.9, "external": 0.8},
        "retention": verdicts.Interval(0.1, *iv, 1, "test_set"),
        "retention_word": cnn_word,
    }
    line = shortcut_line("site-b", base, "arch-ft", cnn, "auroc")
    assert words in line and "pixels 16" in line and "AUROC 0.900 internal -> 0.550 here" in line
    assert f": {base_word};" in line


def test_no_baseline_separating_internally_means_nothing_to_carry_over():
    base = {"pixels_8": _base("unclear", 0.6, 0.5, 0.45)}  # its internal interval holds 0.5
    line = shortcut_line("s", base, "m", None, "auroc")
    assert "no shortcut baseline separated the classes internally" in line


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


def test_the_demo_s_site_goes_with_the_demo_s_data_only(tmp_path):
    """site-b (with_root: data/raw) is scored while data.root is data/raw; with a user's own
    data.root its stages write why they skip, and the report never shows it."""
    from cxr_transfer.core.params import parse_params
    from cxr_transfer.core.sites import belongs, skip_if_not_this_data, skipped_sites

    demo = parse_params({})
    assert [e.name for e in demo.external if belongs(e, demo.data.root)] == ["site-b"]
    assert skipped_sites(demo) == {}
    mine = parse_params({"data": {"root": "/data/mine"}})
    assert not belongs(mine.external[0], mine.data.root)
    why = skipped_sites(mine)["skipped"]["site-b"]
    assert why == "scored only while data.root is data/raw (its with_root); data.root is /data/mine"
    assert skip_if_not_this_data(mine, "site-b", tmp_path / "out", tmp_path / "r.json") == why
    assert (tmp_path / "out" / "skipped.json").exists() and (tmp_path / "r.json").exists()
    assert skip_if_not_this_data(demo, "site-b", tmp_path / "out2") is None
    assert not (tmp_path / "out2").exists()
    own = parse_params({"data": {"root": "/data/mine"}, "external": [{"name": "h2", "root": "/data/h2"}]})
    assert belongs(own.external[0], own.data.root)  # a site without with_root goes with any data


def test_an_external_site_may_hold_only_some_classes(tmp_path):
    root = tmp_path / "site"
    synthesize(root, 4, 64, seed=0, site="b")
    for f in (root / "NORMAL").iterdir():
        f.unlink()
    (root / "NORMAL").rmdir()
    with pytest.raises(CxrError, match="class Normal has no usable images"):
        build_index(root, CLASSES, 10**8, workers=1)  # internal data: every class is needed
    df, _ = build_index(root, CLASSES, 10**8, workers=1, all_classes=False)
    covid = len(list((root / "COVID").iterdir()))
    assert set(df["class"]) == {"Covid"} and len(df) == covid > 0


def test_the_site_s_own_near_copies_share_a_resampling_group(tmp_path):
    from cxr_transfer.data.external import join_near_copies

    root = tmp_path / "site"
    synthesize(root, 4, 128, seed=0, site="b")
    a = sorted((root / "COVID").iterdir())[0]
    Image.open(a).resize((150, 150)).save(root / "COVID" / "resized.png")
    df, _ = build_index(root, CLASSES, 10**8, workers=1)
    joined, merged = join_near_copies(df, {"phash": 12, "phash_framed": 24})
    g = joined.set_index("path")["group"]
    assert merged == 1 and g["COVID/resized.png"] == g[f"COVID/{a.name}"]
    assert joined["group"].nunique() == len(df) - 1
