"""The metrics engine (K classes): scikit-learn's definitions, the fast bootstrap form held equal to
them, and undefined figures with reasons."""

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_transfer.evaluate import metrics
from cxr_transfer.evaluate.binary import ece
from cxr_transfer.evaluate.calibration import calibrate, fit_temperature

CLASSES = ["Normal", "Covid", "Pneumonia"]


def _case(seed: int, n: int = 300, k: int = 3, skill: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k)) + skill * np.eye(k)[y]
    P = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return y, P


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_metrics_are_scikit_learns(seed):
    y, P = _case(seed)
    m = metrics.sklearn_figures(y, P, CLASSES)
    pred = P.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg)
        assert (m[f"precision_{avg}"], m[f"recall_{avg}"], m[f"f1_{avg}"]) == pytest.approx((p, r, f))
    assert m["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, P, multi_class="ovr", average="macro"))
    assert m["auprc_macro"] == pytest.approx(skm.average_precision_score(np.eye(3)[y], P, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, P))
    assert m["brier"] == pytest.approx(np.mean(((P - np.eye(3)[y]) ** 2).sum(1)))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["confusion_matrix"]["rows_true_columns_predicted"] == skm.confusion_matrix(y, pred).tolist()
    covid = m["per_class"]["Covid"]
    tn = int(((y != 1) & (pred != 1)).sum())
    assert covid["specificity"] == pytest.approx(tn / (y != 1).sum())
    assert covid["auroc"] == pytest.approx(skm.roc_auc_score(y == 1, P[:, 1]))
    assert covid["support"] == int((y == 1).sum()) and covid["predicted"] == int((pred == 1).sum())
    # a skilled model on these draws: every figure well above chance, so the test can fail
    assert m["accuracy"] > 0.55 and m["auroc_macro"] > 0.75 and m["kappa"] > 0.3


def test_positive_class_gets_the_binary_names_one_vs_rest():
    y, P = _case(3)
    m = metrics.sklearn_figures(y, P, CLASSES, positive="Covid")
    pred = P.argmax(1) == 1
    assert m["recall"] == pytest.approx(skm.recall_score(y == 1, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y == 1, pred))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y == 1, P[:, 1]))
    assert "recall" not in metrics.sklearn_figures(y, P, CLASSES)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fast_metrics_equal_point_metrics(seed):
    y, P = _case(seed, n=120, k=3 + seed % 2, skill=seed)
    names = [f"c{i}" for i in range(P.shape[1])]
    ref, fast = metrics.sklearn_figures(y, P, names, positive="c1"), metrics.figures(y, P, 10, positive=1)
    assert set(fast) == set(metrics.POINT) | set(metrics.OVR)
    for k, v in fast.items():
        assert v == pytest.approx(ref[k], abs=1e-12), k


def test_fast_metrics_equal_point_metrics_when_figures_are_undefined():
    """Class 2 absent from the test set, class 1 never predicted: the same Nones both ways."""
    y = np.array([0, 0, 0, 1, 1, 0])
    P = np.array([[0.8, 0.1, 0.1]] * 4 + [[0.6, 0.1, 0.3], [0.2, 0.1, 0.7]])
    ref, fast = metrics.sklearn_figures(y, P, CLASSES), metrics.figures(y, P)
    for k, v in fast.items():
        assert v == (None if ref[k] is None else pytest.approx(ref[k])), k
    assert ref["recall_macro"] is None and ref["auroc_macro"] is None and ref["precision_macro"] is None
    assert ref["per_class"]["Covid"]["precision"] is None and ref["per_class"]["Covid"]["f1"] == 0.0
    why = metrics.undefined_reasons(ref, CLASSES)
    assert why["per_class.Pneumonia.recall"] == "no Pneumonia image in the test set"
    assert why["per_class.Covid.precision"] == "the model predicts no Covid image"
    assert why["precision_macro"] == "precision is undefined for Covid (see per_class)"
    assert why["recall_macro"] == "recall is undefined for Pneumonia (see per_class)"


def test_top_label_ece_is_the_binary_ece_for_two_classes_and_known_by_hand():
    rng = np.random.default_rng(0)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    assert metrics.top_label_ece(y, np.c_[1 - p, p]) == pytest.approx(ece(y, p))
    # two images: top probability 0.9 and 0.5 (K = 3, bins over [1/3, 1]); one right, one wrong
    P = np.array([[0.9, 0.05, 0.05], [0.25, 0.5, 0.25]])
    assert metrics.top_label_ece(np.array([0, 0]), P, bins=10) == pytest.approx((0.1 + 0.5) / 2)


def test_bootstrap_intervals_hold_the_point_and_resample_groups():
    y, P = _case(5, n=200)
    ci = metrics.bootstrap_ci(y, P, None, 200, 0, 0.95)
    m = metrics.figures(y, P)
    for k in ("accuracy", "auroc_macro", "f1_macro", "kappa", "log_loss"):
        lo, hi = ci[k]
        assert lo < m[k] < hi and hi - lo < 0.3, k
    # one group = every image: each resample is the whole set, the interval a point
    one = metrics.bootstrap_ci(y, P, np.zeros(len(y)), 20, 0)
    assert one["accuracy"] == [pytest.approx(m["accuracy"])] * 2


def test_multiclass_temperature_matches_the_binary_one_and_softens_overconfidence():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-z / 3))).astype(int)  # true logits are z / 3
    t2 = fit_temperature(z, y)
    tk = fit_temperature(np.c_[np.zeros_like(z), z], y)
    assert tk == pytest.approx(t2, rel=1e-6) and 2.0 < t2 < 4.5
    zk = rng.normal(0, 1.5, (1200, 3))
    truth = np.exp(zk) / np.exp(zk).sum(1, keepdims=True)
    yk = (rng.random((1200, 1)) > truth.cumsum(1)).sum(1)  # a draw from the true probabilities
    P = np.exp(3 * zk) / np.exp(3 * zk).sum(1, keepdims=True)  # three times too confident
    cal, _ = calibrate(yk[:600], 3 * zk[:600], yk[600:], 3 * zk[600:], P[600:])
    assert 2.0 < cal["temperature"] < 4.0  # 2.50 on this draw
    assert cal["ece_after"] < cal["ece_before"] / 2 and cal["brier_after"] < cal["brier_before"]
