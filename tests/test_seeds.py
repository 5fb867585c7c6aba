import pytest

from cxr_transfer.evaluate.seeds import (
    aggregate,
    answer_lines,
    paired_over_seeds,
    run_name,
    t_interval,
    verdict,
)


def test_one_seed_keeps_the_headline_as_it_is():
    h = {"arch": "a", "mode": "fe", "accuracy": 0.8, "accuracy_ci_low": 0.7, "accuracy_ci_high": 0.9}
    assert aggregate([h]) == h and aggregate([h]) is not h
    assert run_name("a", "fe", 3) == "a-fe-s3"


def test_several_seeds_give_mean_and_sample_sd_and_drop_single_run_intervals():
    hs = [
        {
            "arch": "a",
            "mode": "ft",
            "accuracy": 0.7,
            "auroc": None,
            "accuracy_ci_low": 0.6,
            "n_test": 80,
            "best_epoch": 1,
        },
        {
            "arch": "a",
            "mode": "ft",
            "accuracy": 0.8,
            "auroc": 0.9,
            "accuracy_ci_low": 0.7,
            "n_test": 80,
            "best_epoch": 2,
        },
        {
            "arch": "a",
            "mode": "ft",
            "accuracy": 0.9,
            "auroc": 0.8,
            "accuracy_ci_low": 0.8,
            "n_test": 80,
            "best_epoch": 6,
        },
    ]
    out = aggregate(hs)
    assert out["n_test"] == 80 and "n_test_std" not in out  # shared by every run: kept as it is
    assert out["best_epoch"] == 3 and out["best_epoch_std"] == pytest.approx(2.645751)
    assert out["seeds"] == 3 and out["arch"] == "a" and out["mode"] == "ft"
    assert out["accuracy"] == pytest.approx(0.8) and out["accuracy_std"] == pytest.approx(0.1)
    assert out["auroc"] is None and "auroc_std" not in out  # undefined in one seed: said, not averaged
    assert "accuracy_ci_low" not in out


def test_the_t_interval_matches_the_textbook_value():
    lo, hi = t_interval([1.0, 2.0, 3.0, 4.0, 5.0], 0.95)
    half = 2.776445105 * (2.5**0.5) / 5**0.5  # t(0.975, 4) * sd / sqrt(n)
    assert (lo, hi) == (pytest.approx(3 - half), pytest.approx(3 + half))
    assert t_interval([1.0], 0.95) is None


def test_paired_differences_are_taken_seed_by_seed_on_the_common_seeds():
    a = {0: {"accuracy": 0.9}, 1: {"accuracy": 0.8}, 2: {"accuracy": 0.85}}
    b = {0: {"accuracy": 0.7}, 1: {"accuracy": 0.75}}
    out = paired_over_seeds(a, b, ("accuracy",), 0.95)
    assert out["seeds"] == [0, 1]
    assert out["accuracy"]["per_seed"] == pytest.approx([0.2, 0.05])
    assert out["accuracy"]["mean"] == pytest.approx(0.125)


@pytest.mark.parametrize(
    "boot, seeds, n, expect",
    [
        ([-0.1, 0.2], None, 1, "not conclusive (the interval includes 0)"),
        ([0.1, 0.2], None, 1, "suggestive (one run per mode)"),
        ([0.1, 0.2], [0.05, 0.15], 3, "conclusive (both intervals exclude 0)"),
        ([-0.2, -0.1], [-0.15, -0.05], 3, "conclusive (both intervals exclude 0)"),
        ([-0.1, 0.2], [0.05, 0.15], 3, "not conclusive (the test-set interval includes 0)"),
        ([0.1, 0.2], [-0.05, 0.15], 3, "not conclusive (the interval over 3 seeds includes 0)"),
        ([0.1, 0.2], [-0.15, -0.05], 3, "not conclusive (the seeds and the test set disagree in sign)"),
    ],
)
def test_the_verdict_needs_both_intervals_to_exclude_zero(boot, seeds, n, expect):
    assert verdict(boot, seeds, n) == expect


def test_identical_differences_give_no_interval_and_are_never_conclusive():
    """Accuracy moves in steps of 1/n_test: three seeds can differ by exactly +0.025 each. Their
    SD is 0, a t-interval of width 0 would exclude 0 and read "conclusive"; it must not."""
    from cxr_transfer.evaluate.crossval import corrected_t_interval

    a = {s: {"accuracy": 0.9} for s in (0, 1, 2)}
    b = {s: {"accuracy": 0.875} for s in (0, 1, 2)}
    over = paired_over_seeds(a, b, ("accuracy",), 0.95)["accuracy"]
    assert over["per_seed"] == pytest.approx([0.025] * 3) and over["std"] == 0 and over["ci"] is None
    said = verdict([0.01, 0.04], over["ci"], 3)
    assert said.startswith("not conclusive (no interval over 3 seeds: their differences are identical")
    assert corrected_t_interval([0.025] * 5, 0.25, 0.95) is None
    compare = {"m-ft vs m-fe": _pair(0.025, [0.01, 0.04], 0.01, [0.005, 0.02])}
    text = "\n".join(answer_lines(compare, {"m-ft vs m-fe": {"accuracy": over, "auroc": over}}, 3))
    assert "conclusive (both" not in text and "+0.025 over 3 seeds [n/a]" in text


def _pair(acc, acc_ci, auc, auc_ci):
    return {"accuracy_diff": acc, "accuracy_diff_ci": acc_ci, "auroc_diff": auc, "auroc_diff_ci": auc_ci}


def test_the_answer_names_the_one_ahead_with_both_intervals():
    compare = {"m-ft vs m-fe": _pair(-0.1, [-0.2, -0.02], 0.01, [-0.05, 0.07])}
    over = {
        "m-ft vs m-fe": {
            "accuracy": {"mean": -0.08, "ci": [-0.12, -0.04]},
            "auroc": {"mean": 0.02, "ci": [-0.01, 0.05]},
        }
    }
    text = "\n".join(answer_lines(compare, over, 3, flagged=2))
    assert "**2 shortcut probe(s) flagged below**" in text
    assert (
        "- **m, ft vs fe: fe ahead.** ft minus fe: accuracy -0.080 over 3 seeds [-0.120, -0.040] "
        "(first seed on the test set -0.100 [-0.200, -0.020]), conclusive (both intervals exclude 0); "
        "AUROC +0.020 over 3 seeds [-0.010, +0.050] (first seed on the test set +0.010 [-0.050, +0.070]), "
        "not conclusive (the interval over 3 seeds includes 0)." in text
    )
    assert "Student's t over the 3 paired per-seed differences" in text
    one = "\n".join(answer_lines(compare, {}, 1))
    assert "- **m, ft vs fe: fe ahead.** ft minus fe: accuracy -0.100 [-0.200, -0.020], suggestive" in one
    assert "AUROC +0.010 [-0.050, +0.070], not conclusive (the interval includes 0)." in one
    assert "train.seeds=[0,1,2]" in one and "flagged" not in one
