import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_transfer.evaluate.binary import bootstrap_ci, confusion, ece, point_metrics
from cxr_transfer.evaluate.evaluation import evaluate
from cxr_transfer.evaluate.metrics import auprc, auroc, group_indices, mcnemar_p, youden_threshold

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 200)
P = np.clip(Y * 0.3 + RNG.random(200) * 0.7, 0, 1).round(2)  # ties on purpose


def test_against_scikit_learn():
    m = point_metrics(Y, P)
    pred = P >= 0.5
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(Y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(Y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(Y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(Y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(Y, P))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(Y, P))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(Y, P))


@pytest.mark.parametrize(
    "y, pred, expect",
    [
        ([1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0, 0], {"tp": 2, "fn": 1, "fp": 1, "tn": 4}),
        ([0, 0, 1, 1], [0, 0, 1, 1], {"tp": 2, "fn": 0, "fp": 0, "tn": 2}),
    ],
)
def test_hand_computed_confusion_specificity_npv(y, pred, expect):
    assert confusion(y, pred) == expect
    m = point_metrics(np.array(y), np.array(pred, float))
    tn, fp, fn = expect["tn"], expect["fp"], expect["fn"]
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))


def test_ece_by_hand():
    # two bins used: conf 0.9 (right) and conf 0.6 (wrong, prob 0.4 for class 1 when y=1)
    y, p = np.array([1, 1]), np.array([0.9, 0.4])
    assert ece(y, p, bins=10) == pytest.approx(0.5 * abs(1 - 0.9) + 0.5 * abs(0 - 0.6))


def test_bootstrap_is_seeded_and_contains_the_estimate():
    a = bootstrap_ci(Y, P, 0.5, None, 200, seed=1)
    assert a == bootstrap_ci(Y, P, 0.5, None, 200, seed=1)
    assert a != bootstrap_ci(Y, P, 0.5, None, 200, seed=2)
    m = point_metrics(Y, P)
    for k in ("accuracy", "auroc", "specificity", "brier"):
        lo, hi = a[k]
        assert lo <= m[k] <= hi and lo < hi


def test_the_interval_s_level_is_the_one_asked_for():
    """A 90% or 50% interval reported as 95% would pass a lo < point < hi check; the level and the
    width are pinned: percentiles of the draws, and the binomial width for accuracy, with and
    without patients."""
    from cxr_transfer.evaluate.metrics import interval

    assert interval(list(range(1001)), 0.9) == pytest.approx([50.0, 950.0])
    assert interval(list(range(1001)), 0.95) == pytest.approx([25.0, 975.0])
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.where(rng.random(400) < 0.8, y, 1 - y).astype(float)  # right 80% of the time, independently
    acc = float(((p >= 0.5) == y).mean())
    half = 1.96 * np.sqrt(acc * (1 - acc) / 400)
    lo, hi = bootstrap_ci(y, p, 0.5, None, 2000, seed=0)["accuracy"]
    assert hi - lo == pytest.approx(2 * half, rel=0.1)  # 0.078 wide; a 90% interval is 0.066
    groups = np.repeat(np.arange(100), 4)  # the same right/wrong within each patient of four images
    right = np.repeat(rng.random(100) < 0.8, 4)
    p4 = np.where(right, y, 1 - y).astype(float)
    a4 = float(right.mean())
    glo, ghi = bootstrap_ci(y, p4, 0.5, groups, 2000, seed=0)["accuracy"]
    assert ghi - glo == pytest.approx(2 * 1.96 * np.sqrt(a4 * (1 - a4) / 100), rel=0.1)  # 100 units, not 400


def test_grouped_resampling_differs_from_image_resampling():
    # 10 patients with 10 images each, all of one patient right or all wrong: the patient is the unit
    y = np.repeat(np.arange(10) % 2, 10)
    right = np.repeat(np.arange(10) < 7, 10)
    p = np.where(right, y, 1 - y).astype(float)
    groups = np.repeat(np.arange(10), 10)
    assert len(group_indices(groups, 100)) == 10
    by_img = bootstrap_ci(y, p, 0.5, None, 500, seed=0)["accuracy"]
    by_pat = bootstrap_ci(y, p, 0.5, groups, 500, seed=0)["accuracy"]
    assert by_pat[1] - by_pat[0] > 2 * (by_img[1] - by_img[0])


def test_mcnemar_by_hand():
    a = np.array([True] * 10 + [False] * 0 + [True] * 5)
    b = np.array([False] * 10 + [True] * 5)
    # 10 discordant a-right, 0 b-right: exact two-sided p = 2 * 0.5**10
    assert mcnemar_p(a, b) == pytest.approx(2 * 0.5**10)


def test_one_class_test_split_gives_null_with_reason():
    y, p = np.zeros(10, int), np.linspace(0.1, 0.9, 10)
    m = evaluate(y, p, None, np.array([0, 1, 0, 1]), np.array([0.2, 0.8, 0.3, 0.7]), 50, 0, 0.95, 10)
    assert m["auroc"] is None and m["recall"] is None and m["auprc"] is None
    assert m["undefined"]["auroc"] == "no positive image in the test set"
    assert m["specificity"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(0.5)
    assert m["ci"]["auroc"] is None


def test_model_predicting_one_class_gives_null_precision():
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    m = evaluate(y, p, None, y, p, 50, 0, 0.95, 10)
    assert m["precision"] is None and m["f1"] == 0.0  # scikit-learn's F1: 2TP / (2TP + FP + FN)
    assert m["undefined"] == {"precision": "the model predicts no positive image"}
    assert m["recall"] == 0.0 and m["auroc"] == 0.75  # 3 of 4 (positive, negative) pairs ranked right


def test_youden_threshold_comes_from_validation():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.35, 0.3, 0.8, 0.9])
    assert youden_threshold(y, p) == pytest.approx(0.3)
    assert youden_threshold(np.ones(3), np.ones(3)) is None
    # evaluate: validation and test differ, and their best thresholds too; the one applied is
    # validation's (0.7), never test's own (0.3)
    y_val, p_val = np.array([0, 0, 0, 1, 1, 1]), np.array([0.2, 0.5, 0.6, 0.7, 0.8, 0.9])
    m = evaluate(y, p, None, y_val, p_val, 50, 0, 0.95, 10)
    assert youden_threshold(y_val, p_val) == pytest.approx(0.7) != youden_threshold(y, p)
    assert m["youden"]["threshold"] == pytest.approx(0.7)
    assert m["youden"]["recall"] == pytest.approx(2 / 3)  # 0.8 and 0.9 of the three positives reach 0.7


def test_auc_edge_cases():
    assert auroc([1, 1], [0.2, 0.3]) is None
    assert auprc([0, 0], [0.2, 0.3]) is None
    assert auroc([0, 1], [0.5, 0.5]) == 0.5


def test_ranks_mcnemar_and_curves_match_scipy_and_scikit_learn():
    from scipy.stats import binomtest, rankdata

    from cxr_transfer.evaluate.evaluation import curves
    from cxr_transfer.evaluate.metrics import average_ranks

    assert np.array_equal(average_ranks(P), rankdata(P))
    for b, c in [(3, 9), (0, 5), (7, 7), (40, 25)]:
        a = np.array([True] * b + [False] * c)
        assert mcnemar_p(a, ~a) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)
    roc, pr = curves(Y, P)
    fpr, tpr, _ = skm.roc_curve(Y, P, drop_intermediate=False)
    assert np.allclose(roc["fpr"], fpr, atol=1e-6) and np.allclose(roc["tpr"], tpr, atol=1e-6)
    prec, rec, _ = skm.precision_recall_curve(Y, P)
    got = set(zip(pr["recall"].round(6), pr["precision"].round(6), strict=True))
    assert got == set(zip(rec.round(6), prec.round(6), strict=True))


@pytest.mark.parametrize(
    "y, p",
    [
        (Y, P),
        (np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])),  # the model never says positive
        (np.array([0, 0, 1, 1]), np.array([0.6, 0.7, 0.1, 0.2])),  # every call wrong: F1 is 0, not None
    ],
)
def test_the_binary_figures_are_the_engines_two_class_case_and_scikit_learns(y, p):
    from cxr_transfer.evaluate import metrics
    from cxr_transfer.evaluate.binary import two_columns

    m, k = point_metrics(y, p), metrics.figures(y, two_columns(p), positive=1, pred=(p >= 0.5).astype(int))
    for name in ("accuracy", "precision", "recall", "specificity", "f1", "npv", "auroc", "auprc"):
        assert m[name] == (None if k[name] is None else pytest.approx(k[name])), name
    assert m["brier"] == pytest.approx(k["brier"] / 2) and m["macro_f1"] == pytest.approx(k["f1_macro"])
    pred = p >= 0.5
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0.0))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0.0))
