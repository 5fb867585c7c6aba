import pytest

from cxr_transfer.evaluate.seeds import aggregate, run_name


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
