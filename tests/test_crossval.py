import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from cxr_transfer.evaluate.crossval import fold_figures, spread


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
