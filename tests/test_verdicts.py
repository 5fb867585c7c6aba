"""The verdict procedures by hand (cxr_transfer/evaluate/verdicts.py): resampling by weights, the
three intervals, the words they allow, and mode-vs-mode pairing by seed and by fold."""

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from cxr_transfer.evaluate import verdicts
from cxr_transfer.evaluate.compare import answer_lines, best_modes, compare_modes, folds_difference
from cxr_transfer.evaluate.metrics import auroc


def test_weighted_auroc_with_ones_is_the_mann_whitney_area_ties_included():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60) + 0.3 * y, 1)  # ties on purpose
    assert verdicts.weighted_auroc(y, s, np.ones((1, 60)))[0] == pytest.approx(auroc(y, s))


def test_a_weight_is_a_copy_an_image_counts_as_in_the_expanded_set():
    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 30), np.round(rng.random(30), 1)
    w = rng.integers(0, 4, 30)
    expanded = np.repeat(np.arange(30), w)
    got = verdicts.weighted_auroc(y, s, w[None].astype(float))[0]
    assert got == pytest.approx(auroc(y[expanded], s[expanded]))
    c = rng.random(30) < 0.7
    assert verdicts.weighted_mean(c, w[None].astype(float))[0] == pytest.approx(c[expanded].mean())


def test_resampling_draws_whole_groups():
    groups = np.repeat(["a", "b", "c", "d"], [1, 2, 3, 4])
    rs = verdicts.resample(groups, 10, 500, np.random.default_rng(0))
    assert rs.units == 4 and rs.w.shape == (500, 10)
    for g in "abcd":  # every image of a group has its group's count
        cols = rs.w[:, groups == g]
        assert (cols == cols[:, :1]).all()
    counts = rs.w[:, [0, 1, 3, 6]]  # one column per group
    assert (counts.sum(1) == 4).all()  # each resample draws 4 groups
    assert verdicts.resample(None, 5, 3, np.random.default_rng(0)).units == 5


def test_one_run_is_the_percentile_interval_at_the_level_asked():
    iv = verdicts.one_run(0.5, np.arange(1001, dtype=float), 0.9)
    assert (iv.lo, iv.hi) == (pytest.approx(50.0), pytest.approx(950.0))
    assert iv.level() == verdicts.SUGGESTIVE and iv.runs == 1 and iv.method == "test_set"
    assert verdicts.one_run(0.1, np.linspace(-1, 1, 101), 0.95).level() == verdicts.INCONCLUSIVE
    half_undefined = np.r_[np.full(60, np.nan), np.ones(40)]
    assert verdicts.one_run(1.0, half_undefined, 0.95).ci is None  # most resamples undefined: no interval


def test_over_runs_by_hand():
    """Three seeds: the spread over seeds (less the test noise it already holds) plus the test
    set's variance of the mean, Student's t on the capped Satterthwaite degrees of freedom."""
    rng = np.random.default_rng(2)
    points = np.array([0.10, 0.16, 0.04])
    draws = points[:, None] + rng.normal(0, 0.03, (3, 400)) + rng.normal(0, 0.02, (1, 400))
    iv = verdicts.over_runs(points, draws, 0.95, 120)
    v_test = draws.mean(0).var(ddof=1)
    v_each = draws.var(axis=1, ddof=1).mean()
    spread = points.var(ddof=1) / 3
    v = spread - (v_each - v_test) / 2 + v_test
    sat = v**2 / (spread**2 / 2 + v_test**2 / 119)
    df = min(sat, 2 * v / spread)
    half = student_t.ppf(0.975, df) * math.sqrt(v)
    assert (iv.lo, iv.hi) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert iv.runs == 3 and iv.method == "over_runs"
    assert iv.level() == (verdicts.CONCLUSIVE if iv.lo > 0 else verdicts.INCONCLUSIVE)


def test_identical_runs_and_no_test_noise_give_no_interval_never_conclusive():
    """Accuracy moves in steps of 1/n_test: three seeds can differ by exactly +0.025 each on a set
    where every resample agrees; a zero-width interval would read as certainty."""
    iv = verdicts.over_runs(np.full(3, 0.025), np.full((3, 50), 0.025), 0.95, 40)
    assert iv.ci is None and iv.level() == verdicts.INCONCLUSIVE


def test_over_folds_is_nadeau_bengio_over_the_fold_means_of_the_seeds():
    d = np.array([[0.05, 0.07], [0.02, 0.00], [0.08, 0.10], [-0.01, 0.01], [0.04, 0.04]])  # 5 folds x 2 seeds
    means = d.mean(1)
    m, s = means.mean(), means.std(ddof=1)
    half = student_t.ppf(0.975, 4) * math.sqrt((1 / 5 + 0.25) * s**2)  # J = 5 folds, not 10 runs
    iv = verdicts.over_folds(d, 0.25, 0.95)
    assert (iv.lo, iv.hi) == (pytest.approx(m - half), pytest.approx(m + half))
    assert iv.runs == 10 and iv.method == "over_folds"
    assert verdicts.over_folds(np.full((5, 1), 0.025), 0.25, 0.95).ci is None


def test_folds_are_paired_by_seed_and_fold_not_by_position():
    """Mode a has seeds {0, 1, 2}, mode b {2, 1}: only seeds 1 and 2 pair, fold by fold."""
    a = {
        (s, f): {"accuracy": 0.8 + 0.1 * s + 0.01 * f, "n_test": 20, "n_train": 60}
        for s in (0, 1, 2)
        for f in range(4)
    }
    b = {(s, f): {"accuracy": 0.7, "n_test": 20, "n_train": 60} for s in (2, 1) for f in range(4)}
    d, ratio = folds_difference(a, b, "accuracy")
    assert ratio == pytest.approx(1 / 3) and d.shape == (4, 2)
    assert d[:, 0] == pytest.approx([0.2 + 0.01 * f for f in range(4)])  # seed 1
    assert d[:, 1] == pytest.approx([0.3 + 0.01 * f for f in range(4)])  # seed 2


def _runs(y, seeds_and_scores):
    return {s: verdicts.Scored(y, p, (p >= 0.5) == (y == 1)) for s, p in seeds_and_scores}


def test_seeds_are_paired_by_seed_not_by_position():
    """a's seeds {0, 1, 2} against b's {2, 1}: the difference is taken on seeds 1 and 2 only, each
    against the same seed's run; listing b's runs in another order changes nothing."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    noise = {s: rng.random(80) for s in range(3)}
    a = _runs(y, [(s, np.clip(0.5 * y + 0.5 * noise[s], 0, 1)) for s in (0, 1, 2)])
    b = _runs(y, [(2, np.clip(0.2 * y + 0.8 * noise[2], 0, 1)), (1, np.clip(0.2 * y + 0.8 * noise[1], 0, 1))])
    out = compare_modes({"m-ft": a, "m-scratch": b}, None, ("auroc", "accuracy"), (200, 0, 0.95))
    c = out["m-ft vs m-scratch"]
    assert c["seeds"] == [1, 2] and c["auroc"].runs == 2
    want = np.mean([auroc(y, a[s].scores) - auroc(y, b[s].scores) for s in (1, 2)])
    assert c["auroc"].point == pytest.approx(want)
    flipped = compare_modes(
        {"m-ft": a, "m-scratch": dict(reversed(b.items()))}, None, ("auroc", "accuracy"), (200, 0, 0.95)
    )
    assert flipped["m-ft vs m-scratch"]["auroc"] == c["auroc"]


def test_best_needs_a_supported_lead_over_every_other_mode():
    def iv(lo, hi):
        return verdicts.Interval((lo + hi) / 2, lo, hi, 3, "over_runs")

    compare = {
        "a-fe vs a-scratch": {"auroc": iv(0.1, 0.3)},
        "a-ft vs a-scratch": {"auroc": iv(0.2, 0.4)},
        "a-ft vs a-fe": {"auroc": iv(0.01, 0.1)},
    }
    points = {"a-scratch": 0.6, "a-fe": 0.8, "a-ft": 0.85}
    best = best_modes(compare, list(points), "auroc", points)["a"]
    assert (best["best"], best["level"], best["leader"]) == ("ft", verdicts.CONCLUSIVE, "ft")
    compare["a-ft vs a-fe"] = {"auroc": iv(-0.02, 0.1)}  # ft's lead over fe is not supported
    best = best_modes(compare, list(points), "auroc", points)["a"]
    assert (best["best"], best["level"], best["leader"]) == (None, verdicts.INCONCLUSIVE, "ft")


def test_the_words_follow_the_interval_and_its_procedure():
    assert (
        verdicts.ahead("ft", "fe", verdicts.Interval(0.1, 0.02, 0.2, 3, "over_runs"))
        == "ft ahead (conclusive)"
    )
    assert (
        verdicts.ahead("ft", "fe", verdicts.Interval(-0.1, -0.2, -0.02, 1, "test_set"))
        == "fe ahead (suggestive)"
    )
    assert (
        verdicts.ahead("ft", "fe", verdicts.Interval(0.1, -0.02, 0.2, 3, "over_runs"))
        == "no winner (inconclusive)"
    )
    assert verdicts.retention_word(verdicts.Interval(0.1, 0.02, 0.2, 1, "test_set")) == "holds"
    assert verdicts.retention_word(verdicts.Interval(-0.1, -0.2, -0.02, 1, "test_set")) == "collapses"
    assert verdicts.retention_word(verdicts.Interval(0.0, -0.2, 0.2, 1, "test_set")) == "unclear"
    assert float(verdicts.retention(0.9, 0.7)) == pytest.approx(0.0)  # keeps exactly half of its margin
    assert verdicts.bonferroni(0.95, 3) == pytest.approx(1 - 0.05 / 3)
    assert verdicts.reverses(verdicts.CONCLUSIVE, verdicts.CONCLUSIVE) and not verdicts.reverses(
        verdicts.SUGGESTIVE, verdicts.CONCLUSIVE
    )
    assert not verdicts.reverses(verdicts.CONCLUSIVE, verdicts.SUGGESTIVE)


def test_a_fold_average_is_the_mean_of_each_fold_model_s_figure_on_its_rows():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 40)
    p = rng.random(40)
    rows = [np.arange(0, 20), np.arange(20, 40)]
    parts = tuple((verdicts.Scored(y[r], p[r], (p[r] >= 0.5) == y[r]), r) for r in rows)
    fa = verdicts.FoldAverage(parts, 40)
    points, draws = verdicts.run_draws("auroc", [fa], np.ones((2, 40)))
    assert points[0] == pytest.approx(np.mean([auroc(y[r], p[r]) for r in rows]))
    assert (fa.y == y).all() and draws.shape == (1, 2)


def test_a_tie_for_the_lead_is_said_not_broken_silently_by_the_order_of_params():
    iv = verdicts.Interval(0.0, 0.0, 0.0, 1, "test_set")
    compare = {"a-ft vs a-fe": {"auroc": iv, "accuracy": iv}}
    best = best_modes(compare, ["a-fe", "a-ft"], "auroc", {"a-fe": 1.0, "a-ft": 1.0})["a"]
    assert best["best"] is None and best["leader"] == "fe" and best["tied_with"] == ["ft"]
    text = "\n".join(answer_lines(compare, {"a": best}, ("auroc", "accuracy"), None, "images"))
    assert "fe (tied with ft) has the highest AUROC" in text
