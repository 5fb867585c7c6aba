import numpy as np
import pytest

from cxr_transfer.evaluate.binary import two_columns as two
from cxr_transfer.evaluate.calibration import calibrate, fit_temperature, log_odds


def overconfident(n: int, seed: int, factor: float):
    """Labels drawn from sigmoid(z), reported with log-odds factor * z: over-confident by `factor`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, factor * z


def sig(z):
    return 1 / (1 + np.exp(-z))


def test_temperature_recovers_the_overconfidence_and_lowers_ece():
    y_val, z_val = overconfident(4000, 0, 4.0)
    assert fit_temperature(z_val, y_val) == pytest.approx(4.0, rel=0.1)
    y, z = overconfident(4000, 1, 4.0)
    out, P_cal = calibrate(y_val, z_val, y, z, two(sig(z)))
    p_cal = P_cal[:, 1]
    assert out["ece_before"] > 0.1 and out["ece_after"] < 0.03 and out["ece_after"] < out["ece_before"] / 4
    assert out["brier_after"] < out["brier_before"]
    assert ((p_cal >= 0.5) == (z >= 0)).all()  # no prediction changes class
    assert p_cal == pytest.approx(sig(z / out["temperature"]))


def test_the_fit_reads_logits_not_saturated_float32_probabilities():
    """Confident logits (eight times too confident, |z| up to ~100): their float32 probabilities
    round to 0 and 1, so a fit on logit(clip(p, 1e-7)) sees every |z| above ~16 as 16 and finds a
    T far too small. On the logits the fit recovers the true over-confidence."""
    rng = np.random.default_rng(4)
    z_true = rng.normal(0, 4, 3000)
    y = (rng.random(3000) < sig(z_true)).astype(int)
    logits = np.c_[np.zeros(3000), 8 * z_true].astype(np.float32)
    assert fit_temperature(log_odds(logits, 1), y) == pytest.approx(8.0, rel=0.1)  # 8.50 on this draw
    p32 = 1 / (1 + np.exp(-logits[:, 1].astype(np.float64)))
    clipped = np.clip(p32.astype(np.float32).astype(float), 1e-7, 1 - 1e-7)
    assert fit_temperature(np.log(clipped) - np.log1p(-clipped), y) < 6.0  # the old way: 5.77


def test_log_odds_are_the_positive_logit_minus_the_other_whichever_column_it_is():
    z = np.array([[1.0, 3.0], [2.0, -1.0]])
    assert log_odds(z, 1).tolist() == [2.0, -3.0] and log_odds(z, 0).tolist() == [-2.0, 3.0]


def test_a_calibrated_model_keeps_a_temperature_near_one_and_one_class_is_said():
    y, z = overconfident(6000, 2, 1.0)
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.1)
    out, p_cal = calibrate(np.ones(5), np.full(5, 2.2), y[:10], z[:10], two(sig(z[:10])))
    assert (
        out["temperature"] is None and out["reason"] == "the validation split has one class" and p_cal is None
    )


def test_a_fit_at_its_bound_on_a_separated_validation_split_is_flagged_and_not_applied():
    """Validation separated perfectly: the log-loss keeps falling as T falls, the search stops at
    T = 0.001, and applying it would turn the test probabilities into 0 and 1."""
    y_val = np.array([0] * 20 + [1] * 20)
    z_val = np.r_[np.linspace(-3, -0.2, 20), np.linspace(0.2, 3, 20)]
    assert fit_temperature(z_val, y_val) == pytest.approx(1e-3, rel=0.01)
    y, z = overconfident(200, 3, 1.0)
    out, p_cal = calibrate(y_val, z_val, y, z, two(sig(z)))
    assert p_cal is None and out["temperature"] is None
    assert out["temperature_fit"] == pytest.approx(1e-3, rel=0.01)
    assert out["reason"].startswith("the fit ran to its bound (T = 0.001)") and "not applied" in out["reason"]
    assert "ece_after" not in out and out["ece_before"] > 0
    three = np.c_[np.zeros(40), z_val, np.full(40, -5.0)]  # K = 3, the same separation
    k3 = np.c_[np.zeros(len(z)), z, np.full(len(z), -5.0)]
    P3 = np.exp(k3) / np.exp(k3).sum(1, keepdims=True)
    k, _ = calibrate(y_val, three, y, k3, P3)
    assert k["temperature"] is None and k["reason"].startswith("the fit ran to its bound")
