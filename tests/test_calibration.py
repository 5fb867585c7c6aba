import numpy as np
import pytest

from cxr_transfer.calibration import calibrate, fit_temperature, logit


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
    out, p_cal = calibrate(y_val, p_val, y, p)
    assert out["ece_before"] > 0.1 and out["ece_after"] < 0.03 and out["ece_after"] < out["ece_before"] / 4
    assert out["brier_after"] < out["brier_before"]
    assert ((p_cal >= 0.5) == (p >= 0.5)).all()  # no prediction changes class


def test_a_calibrated_model_keeps_a_temperature_near_one_and_one_class_is_said():
    y, p = overconfident(6000, 2, 1.0)
    assert fit_temperature(logit(p), y) == pytest.approx(1.0, abs=0.1)
    out, p_cal = calibrate(np.ones(5), np.full(5, 0.9), y[:10], p[:10])
    assert (
        out["temperature"] is None and out["reason"] == "the validation split has one class" and p_cal is None
    )
