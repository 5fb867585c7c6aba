import math

import numpy as np
import pytest
from scipy.stats import t as student_t
from sklearn.metrics import accuracy_score, roc_auc_score

from cxr_transfer.evaluate.crossval import corrected_t_interval, fold_figures, paired_over_folds, spread


def test_the_corrected_interval_is_nadeau_bengios_by_hand():
    d = [0.05, 0.02, 0.08, -0.01, 0.04]
    m, s = np.mean(d), np.std(d, ddof=1)
    half = 2.776445105 * math.sqrt((1 / 5 + 0.25) * s**2)  # t(0.975, 4); n_test / n_train = 1/4 (k = 5)
    assert corrected_t_interval(d, 0.25, 0.95) == pytest.approx([m - half, m + half], abs=1e-8)
    plain = corrected_t_interval(d, 0.0, 0.95)
    assert plain == pytest.approx([m - 2.776445105 * s / math.sqrt(5), m + 2.776445105 * s / math.sqrt(5)])
    assert plain[1] - plain[0] < 2 * half  # the overlap of the training sets widens it
    assert corrected_t_interval([0.1], 0.25, 0.95) is None


def test_the_correction_widens_the_interval_by_the_overlap():
    d = [0.03, 0.01, 0.05, 0.02, 0.04, 0.0, 0.06, 0.03, 0.02, 0.04]
    lo, hi = corrected_t_interval(d, 1 / 9, 0.95)  # k = 10
    plo, phi = corrected_t_interval(d, 0.0, 0.95)
    assert (hi - lo) / (phi - plo) == pytest.approx(math.sqrt((1 / 10 + 1 / 9) / (1 / 10)))


def test_fold_figures_are_scikit_learns_per_fold():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    fold = np.repeat([0, 1, 2], 20)
    rows = fold_figures(y, p, fold, {0: 40, 1: 40, 2: 40})
    for r in rows:
        i = fold == r["fold"]
        assert r["accuracy"] == pytest.approx(accuracy_score(y[i], p[i] >= 0.5), abs=1e-6)
        assert r["auroc"] == pytest.approx(roc_auc_score(y[i], p[i]), abs=1e-6)
        assert (r["n_test"], r["n_train"]) == (20, 40)
    sp = spread(rows)
    accs = [r["accuracy"] for r in rows]
    assert sp["accuracy"]["mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert sp["accuracy"]["sd"] == pytest.approx(np.std(accs, ddof=1), abs=1e-6)
    P = np.stack([1 - p, p], 1)
    three = fold_figures(y, P, fold, {0: 40, 1: 40, 2: 40})  # K-class form: macro AUROC
    assert three[0]["auroc_macro"] == pytest.approx(roc_auc_score(y[:20], p[:20]), abs=1e-6)


def test_paired_over_folds_pairs_the_same_seed_and_fold():
    a = {(0, f): {"accuracy": 0.8 + 0.01 * f, "auroc": 0.9, "n_test": 20, "n_train": 80} for f in range(5)}
    b = {
        (0, f): {"accuracy": 0.7, "auroc": None if f == 4 else 0.85, "n_test": 20, "n_train": 80}
        for f in range(5)
    }
    out = paired_over_folds(a, b, ("accuracy", "auroc"), 0.95)
    d = [0.1 + 0.01 * f for f in range(5)]
    assert out["accuracy"]["per_run"] == pytest.approx(d) and out["test_over_train"] == 0.25
    assert out["accuracy"]["ci"] == pytest.approx(corrected_t_interval(d, 0.25, 0.95), abs=1e-6)
    assert out["auroc"]["per_run"] == pytest.approx([0.05] * 4)  # fold 4's undefined AUROC is left out
    t = student_t.ppf(0.975, 4)
    assert out["accuracy"]["ci_uncorrected"][1] == pytest.approx(
        np.mean(d) + t * np.std(d, ddof=1) / math.sqrt(5), abs=1e-6
    )
