"""Temperature scaling (Guo et al., 2017): one scalar, fitted on the validation split, that
softens (T > 1) or sharpens (T < 1) a model's logits so its probabilities mean what they say.

It changes no ranking (AUROC is the same) and no argmax for two classes, only how confident the
probabilities are; evaluate reports ECE and Brier score before and after, on the test split."""

from __future__ import annotations

import math

import numpy as np

from cxr_transfer.evaluate.binary import brier as brier_binary
from cxr_transfer.evaluate.binary import ece
from cxr_transfer.evaluate.metrics import brier, normalise, top_label_ece

LO, HI = 1e-3, 100.0  # the search's bounds on T


def log_odds(logits, positive: int) -> np.ndarray:
    """Two classes: the positive logit minus the other's (the softmax's log-odds), in float64."""
    z = np.asarray(logits, dtype=float)
    return z[:, positive] - z[:, 1 - positive]


def _nll(z: np.ndarray, y: np.ndarray, beta: float) -> float:
    if z.ndim == 1:
        s = beta * z  # -log sigmoid(s) for positives, -log sigmoid(-s) for negatives, computed stably
        return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))
    s = beta * z  # K classes: -log softmax(s)[y]
    return float(np.mean(np.logaddexp.reduce(s, axis=1) - s[np.arange(len(y)), y]))


def fit_temperature(z: np.ndarray, y: np.ndarray, lo: float = LO, hi: float = HI) -> float | None:
    """The T minimising the validation log-loss of sigmoid(z / T) (z: log-odds, two classes) or
    softmax(z / T) (z: (N, K) logits); None when validation has one class. The loss is convex in
    1/T, so a golden-section search on 1/T finds the minimum."""
    z, y = np.asarray(z, dtype=float), np.asarray(y).astype(int)
    if y.min() == y.max():
        return None
    a, b = 1.0 / hi, 1.0 / lo
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(200):
        if _nll(z, y, c) < _nll(z, y, d):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    return 1.0 / ((a + b) / 2)


def unusable(t: float | None) -> str | None:
    """Why a fitted temperature must not be applied, or None. A fit at its bound (within 1%) is
    no estimate: on a validation split the model separates perfectly, the log-loss falls as T
    falls without a minimum, and T = 0.001 would turn every test probability into 0 or 1."""
    if t is None:
        return "the validation split has one class"
    if t <= LO * 1.01 or t >= HI / 1.01:
        return (
            f"the fit ran to its bound (T = {t:.3g}): the validation split is separated perfectly (or "
            "not at all), so no temperature is estimable; not applied"
        )
    return None


def probabilities(z: np.ndarray) -> np.ndarray:
    """(N, K) probabilities from log-odds (two classes) or logits, scaled by 1/T."""
    if z.ndim == 1:
        p = 1.0 / (1.0 + np.exp(-z))
        return np.column_stack([1 - p, p])
    return np.exp(z - np.logaddexp.reduce(z, axis=1, keepdims=True))


def _figures(y, P, bins: int, when: str) -> dict:
    """ECE of the decided class and the Brier score; two classes under the binary names'
    definitions (the positive column's), K classes top-label and multi-class."""
    if P.shape[1] == 2:
        return {f"ece_{when}": ece(y, P[:, 1], bins), f"brier_{when}": brier_binary(y, P[:, 1])}
    return {f"ece_{when}": top_label_ece(y, P, bins), f"brier_{when}": brier(y, P)}


def calibrate(y_val, z_val, y_test, z_test, P_test, bins: int = 10) -> tuple[dict, np.ndarray | None]:
    """Fit T on the validation logits, apply it to the test logits: the figures before (of the
    model's own probabilities `P_test`) and after, and the calibrated (N, K) test probabilities
    (None when T cannot be fitted, or ran to its bound: flagged, not applied). `z`: the log-odds
    (two classes, `log_odds`) or the (N, K) logits; the fit never sees probabilities, which
    saturate in float32 where the logits do not."""
    P_test, y_test = normalise(P_test), np.asarray(y_test).astype(int)
    t = fit_temperature(z_val, y_val)
    before = _figures(y_test, P_test, bins, "before")
    if reason := unusable(t):
        return {"temperature": None, "temperature_fit": t, "reason": reason, **before}, None
    P_cal = probabilities(np.asarray(z_test, dtype=float) / t)
    return {"temperature": t, **before, **_figures(y_test, P_cal, bins, "after")}, P_cal
