import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_transfer.audit import probes
from cxr_transfer.data.acquisition import pixel_facts
from cxr_transfer.data.synth import render_cxr

N, TRAIN, SIZE = 60, 40, 64  # per class; the first 40 of each class train, the last 20 test


def dataset(shortcut: str):
    imgs, y = [], []
    for label in (0, 1):
        for i in range(N):
            imgs.append(render_cxr(np.random.default_rng([11, label, i]), SIZE, bool(label), shortcut))
            y.append(label)
    imgs, y = np.stack(imgs), np.array(y)
    rows = []
    for a in imgs:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        rows.append(
            {
                "width": SIZE,
                "height": SIZE,
                "format": "PNG",
                "mode": "L",
                "bytes": buf.tell(),
                **pixel_facts(a),
            }
        )
    table = pd.DataFrame(rows)
    tr = np.r_[0:TRAIN, N : N + TRAIN]
    te = np.r_[TRAIN:N, N + TRAIN : 2 * N]
    return imgs, y, table, tr, te


def probe_aurocs(shortcut: str) -> dict[str, float]:
    imgs, y, table, tr, te = dataset(shortcut)

    def score(p):
        return probes.scored(y[te], p, None, 50, 0, 0.95, 0.8)

    out = {}
    for size in (8, 16):
        out[f"pixels_{size}"] = score(
            probes.logistic_scores(
                probes.thumbnails(imgs[tr], size), y[tr], probes.thumbnails(imgs[te], size)
            )
        )["auroc"]
    p, top = probes.acquisition_probe(table.iloc[tr], table.iloc[te], y[tr], y[te])
    out["acquisition"], out["acquisition_top"] = score(p)["auroc"], dict(top)
    extract = probes.feature_extractor("efficientnet_lite0", "weights", "cpu")
    row = probes.outside_lungs(extract, imgs[tr], y[tr], imgs[te], 0.7, score)
    out["outside_lungs"] = row["masked"]["auroc"]
    return out


@pytest.fixture(scope="module")
def results():
    torch.manual_seed(0)
    return {s: probe_aurocs(s) for s in ("none", "border", "marker", "exposure")}


def test_without_a_shortcut_no_probe_flags(results):
    r = results["none"]
    assert r["pixels_8"] < 0.8 and r["pixels_16"] < 0.8, r
    assert r["acquisition"] < 0.7 and r["outside_lungs"] < 0.7, r


@pytest.mark.parametrize(
    "shortcut, flagged, top",
    [
        ("border", {"pixels_8", "pixels_16", "acquisition", "outside_lungs"}, "black"),
        ("marker", {"pixels_8", "pixels_16", "acquisition", "outside_lungs"}, "white"),
        ("exposure", {"pixels_8", "pixels_16", "acquisition", "outside_lungs"}, "mean"),
    ],
)
def test_each_injected_shortcut_is_flagged_by_the_probes_that_can_see_it(results, shortcut, flagged, top):
    """Seeded: border 1.0 everywhere; marker 1.0 pixels, 0.96 acquisition, 0.98 outside the
    lungs; exposure 1.0 pixels, 0.995 acquisition, 0.88 outside the lungs (AUROC)."""
    r = results[shortcut]
    for probe in flagged:
        assert r[probe] >= 0.85, (shortcut, probe, r)  # above the default flag (0.8), with margin
    assert r["acquisition_top"].get(top, 0) >= 0.8, r  # named among the facts that carry most of it


def test_blackout_keeps_exactly_the_centre_or_the_rest():
    x = np.full((1, 10, 10), 200, np.uint8)
    masked, centre = probes.blackout(x, 0.6, False), probes.blackout(x, 0.6, True)
    assert (masked[0, 2:8, 2:8] == 0).all() and masked.sum() == 200 * (100 - 36)
    assert (centre[0, 2:8, 2:8] == 200).all() and centre.sum() == 200 * 36
    assert (x == 200).all()  # the store itself is untouched


def test_cramers_v_matches_a_hand_computed_case():
    # 2x2: chi2 = n (ad - bc)^2 / ((a+b)(c+d)(a+c)(b+d)) = 100 * 1500^2 / 50^4 = 36, V = sqrt(36 / 100)
    table = pd.DataFrame([[40, 10], [10, 40]], index=["siteA", "siteB"], columns=["Covid", "Normal"])
    assert probes.cramers_v(table) == pytest.approx(0.6)
    assert probes.cramers_v(pd.DataFrame([[5, 5]])) is None
    df = pd.DataFrame(
        {
            "source": ["siteA"] * 50 + ["siteB"] * 50,
            "class": ["Covid"] * 40 + ["Normal"] * 10 + ["Covid"] * 10 + ["Normal"] * 40,
        }
    )
    r = probes.source_probe(df, 0.5)
    assert (
        r["cramers_v"] == pytest.approx(0.6)
        and r["flagged"]
        and r["table"]["siteA"] == {"Covid": 40, "Normal": 10}
    )


def test_no_source_column_skips_the_source_probe_with_a_reason():
    r = probes.source_probe(pd.DataFrame({"source": ["", ""], "class": ["Covid", "Normal"]}), 0.5)
    assert r == {"skipped": "no image has a source (set data.metadata.source_column)", "flagged": False}


def test_multinomial_probe_scores_macro_auroc_and_flags_it():
    """Three classes: the probe is one multinomial regression; its AUROC is the macro one-vs-rest."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, 3, 300), rng.integers(0, 3, 150)
    centres = np.array([[0, 0], [3, 0], [0, 3]])
    x_tr, x_te = centres[y_tr] + rng.normal(size=(300, 2)), centres[y_te] + rng.normal(size=(150, 2))
    p = probes.logistic_scores(x_tr, y_tr, x_te)
    assert p.shape == (150, 3) and np.allclose(p.sum(1), 1.0)
    s = probes.scored(y_te, p, None, 100, 0, 0.95, 0.8)
    assert s["auroc"] == pytest.approx(roc_auc_score(y_te, p, multi_class="ovr"), abs=1e-4)
    assert s["flagged"] and s["auroc_ci_low"] < s["auroc"] < s["auroc_ci_high"]
    assert s["accuracy"] == pytest.approx((p.argmax(1) == y_te).mean(), abs=1e-4)
    # one feature: how far it separates the classes, whichever way round, averaged one-vs-rest
    assert probes.separation(y_te, -x_te[:, 0]) == pytest.approx(
        np.mean([max(a, 1 - a) for a in (roc_auc_score(y_te == c, x_te[:, 0]) for c in range(3))])
    )


def test_the_verdict_is_the_flag_count_alone():
    probe = {"pixels_8": {"auroc": 0.91, "flagged": True}, "n_flagged": 1, "flagged": ["pixels_8"]}
    assert probes.verdict(probe) == {"shortcut_flags": 1}
    assert probes.verdict({**probe, "n_flagged": 0}) == {"shortcut_flags": 0}


def test_sources_of_one_class_each_are_said_to_be_inseparable_from_the_label():
    """The COVID-19 Radiography Database's case: every source supplies one class. The trust row
    says the data cannot separate source from label, not merely that V is high."""
    from cxr_transfer.report.summary import source_row

    df = pd.DataFrame({"source": ["a"] * 30 + ["b"] * 20, "class": ["Covid"] * 30 + ["Normal"] * 20})
    row = source_row(probes.source_probe(df, 0.5), 0.5)
    assert row[:4] == ("source confounding", "Cramer's V 1.000 over 2 sources", ">= 0.5", True)
    assert row[4].startswith("no source holds every class: the data cannot separate source from label")
    mixed = df.assign(source=["a"] * 25 + ["b"] * 25)  # b holds both classes
    assert source_row(probes.source_probe(mixed, 0.5), 0.5)[4].startswith(
        "the image source predicts the class"
    )
