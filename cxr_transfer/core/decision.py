"""The one decision rule, used by evaluate, predict (both runtimes), the export's card, the probes
and the report: the class of highest probability. For two classes that is P(positive) >= 0.5; the
threshold chosen on validation is reported beside it as an alternative, never applied silently."""

from __future__ import annotations

import numpy as np

RULE = "the class of highest probability (argmax; two classes: P(positive) >= 0.5)"


def decide(proba) -> np.ndarray:
    """(N, K) probabilities -> each row's class index (the argmax)."""
    return np.asarray(proba).argmax(1)


def decide_positive(prob_pos) -> np.ndarray:
    """Two classes scored by P(positive) alone -> True where the positive class is decided."""
    return np.asarray(prob_pos) >= 0.5
