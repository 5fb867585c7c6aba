"""Synthetic scores with a known truth, for the simulation tier (tests/test_verdicts_simulation.py).

Binormal models: an image of class y gets the score mu * y + noise with unit variance, the noise
shared in part by the images of one patient, by the models (the image's difficulty) and by the
runs of one model. A model whose mean separation is mu has population AUROC Phi(mu / sqrt(2)) and,
deciding at mu / 2, accuracy Phi(mu / 2); over training runs whose mu varies as N(mu, sd^2) the
expected figures are Phi(mu / sqrt(2 + sd^2)) and Phi(mu / sqrt(4 + sd^2)). These are the truths
the intervals must cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from cxr_transfer.evaluate import verdicts


def true_auroc(mu: float, sd: float = 0.0) -> float:
    return float(norm.cdf(mu / np.sqrt(2 + sd**2)))


def true_accuracy(mu: float, sd: float = 0.0) -> float:
    return float(norm.cdf(mu / np.sqrt(4 + sd**2)))


def mu_for_auroc(auc: float) -> float:
    return float(np.sqrt(2) * norm.ppf(auc))


@dataclass(frozen=True)
class SyntheticSet:
    """`patients` patients of `per` images each; a patient's images share its class and part of
    their noise (`patient` of the variance); `image` of the variance is shared by every model."""

    patients: int = 100
    per: int = 2
    prevalence: float = 0.4
    patient: float = 0.3
    image: float = 0.3

    def draw(self, rng):
        """(labels, groups, shared noise) of one test set."""
        yp = rng.random(self.patients) < self.prevalence
        y = np.repeat(yp, self.per).astype(int)
        groups = np.repeat(np.arange(self.patients), self.per)
        shared = np.sqrt(self.patient) * rng.standard_normal(self.patients)[groups]
        shared += np.sqrt(self.image) * rng.standard_normal(len(y))
        return y, groups, shared

    def scores(self, rng, y, shared, mu: float, own: float = 1.0, run_noise=None):
        """One model's scores: its own noise (the rest of the unit variance) split between the
        model (`own`) and, where `run_noise` (the same for a model's runs) is given, the run."""
        rest = 1 - self.patient - self.image
        z = rng.standard_normal(len(y))
        noise = np.sqrt(rest * own) * (run_noise if run_noise is not None else z)
        if run_noise is not None:
            noise += np.sqrt(rest * (1 - own)) * z
        return mu * y + shared + noise


def decided(y, s, mu: float) -> np.ndarray:
    """Correctness when deciding at the model's midpoint mu / 2."""
    return (s >= mu / 2) == (y == 1)


def runs_draws(figure, y, scores_by_run, mus, w):
    """(R,) points and (R, reps) draws of a figure for each run."""
    pts, draws = [], []
    for s, mu in zip(scores_by_run, mus, strict=True):
        c = decided(y, s, mu)
        pts.append(verdicts.point_of(figure, y, s, c))
        draws.append(verdicts.figure_draws(figure, y, s, c, w))
    return np.array(pts, dtype=float), np.array(draws)


def rate(hits) -> float:
    return float(np.mean(hits))


def mc_error(p: float, n: int) -> float:
    """Two Monte Carlo standard errors of a rate p over n draws."""
    return 2 * np.sqrt(p * (1 - p) / n)
