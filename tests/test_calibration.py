import numpy as np
import pytest

from cxr_transfer.evaluate.binary import two_columns as two
from cxr_transfer.evaluate.calibration import calibrate, fit_temperature, logit


def overconfident(n: int, seed: int, factor: float):
    """Labels drawn from sigmoid(z), reported as sigmoid(factor * z): over-confident by `factor`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-factor * z))


def test_temperature_recovers_the_overconfidence_and_lowers_ece():
    y_val, p_val = overconfident(4000, 0, 4.0)
    t = fit_temperature(logit(p_val), y_val)
    assert t == pytest.approx(4.0, rel=0.1)
    y, p = overconfident(4000, 1, 4.0)
    out, P_cal = calibrate(y_val, two(p_val), y, two(p))
    p_cal = P_cal[:, 1]
    assert out["ece_before"] > 0.1 and out["ece_after"] < 0.03 and out["ece_after"] < out["ece_before"] / 4
    assert out["brier_after"] < out["brier_before"]
    assert ((p_cal >= 0.5) == (p >= 0.5)).all()  # no prediction changes class


def test_a_calibrated_model_keeps_a_temperature_near_one_and_one_class_is_said():
    y, p = overconfident(6000, 2, 1.0)
    assert fit_temperature(logit(p), y) == pytest.approx(1.0, abs=0.1)
    out, p_cal = calibrate(np.ones(5), two(np.full(5, 0.9)), y[:10], two(p[:10]))
    assert (
        out["temperature"] is None and out["reason"] == "the validation split has one class" and p_cal is None
    )


def test_a_fit_at_its_bound_on_a_separated_validation_split_is_flagged_and_not_applied():
    """Validation separated perfectly: the log-loss keeps falling as T falls, the search stops at
    T = 0.001, and applying it would turn the test probabilities into 0 and 1."""
    y_val = np.array([0] * 20 + [1] * 20)
    p_val = np.r_[np.linspace(0.05, 0.45, 20), np.linspace(0.55, 0.95, 20)]
    assert fit_temperature(logit(p_val), y_val) == pytest.approx(1e-3, rel=0.01)
    y, p = overconfident(200, 3, 1.0)
    out, p_cal = calibrate(y_val, two(p_val), y, two(p))
    assert p_cal is None and out["temperature"] is None
    assert out["temperature_fit"] == pytest.approx(1e-3, rel=0.01)
    assert out["reason"].startswith("the fit ran to its bound (T = 0.001)") and "not applied" in out["reason"]
    assert "ece_after" not in out and out["ece_before"] > 0
    three = np.c_[0.9 * (1 - p_val), 0.9 * p_val, np.full(40, 0.1)]  # K = 3, the same separation
    k, _ = calibrate(y_val, three, y, np.c_[0.9 * (1 - p), 0.9 * p, np.full(len(p), 0.1)])
    assert k["temperature"] is None and k["reason"].startswith("the fit ran to its bound")
