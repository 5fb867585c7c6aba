"""Two classes, named as a binary table names them: the K = 2 case of the metrics engine
(evaluate/metrics.py), seen from the positive class. P(positive) `p` stands for the (N, 2)
probabilities [1 - p, p]; a decision is P(positive) >= threshold (0.5: the argmax, the one rule).

Where a binary table and the K-class figures differ, this view says so: the Brier score is the
positive column's (half the K = 2 multi-class one), and balanced accuracy is None unless both
classes are in the test set (scikit-learn would average the one present)."""

from __future__ import annotations

import numpy as np

from cxr_transfer.evaluate import metrics

POINT = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "npv",
    "balanced_accuracy",
    "auroc",
    "auprc",
    "brier",
    "ece",
)
NAMES = {  # binary figure -> (class index, one-vs-rest figure), in the files' order
    "precision": (1, "precision"),
    "recall": (1, "recall"),
    "specificity": (0, "recall"),
    "f1": (1, "f1"),
    "npv": (0, "precision"),
}


def two_columns(p) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.column_stack([1 - p, p])


def confusion(y, pred) -> dict[str, int]:
    """Counts with label 1 as the positive class."""
    cm = metrics.confusion_matrix(np.asarray(y).astype(int), np.asarray(pred).astype(int), 2)
    return {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])}


def ece(y, p, bins: int = 10) -> float:
    """Expected calibration error of the decided class's confidence (max(p, 1 - p))."""
    return metrics.top_label_ece(
        np.asarray(y).astype(int), two_columns(p), bins, (np.asarray(p) >= 0.5).astype(int)
    )


def brier(y, p) -> float:
    """The binary Brier score, mean((p - y)^2): half the K = 2 multi-class one."""
    return metrics.brier(np.asarray(y).astype(int), two_columns(p)) / 2


def point_metrics(y, p, threshold: float = 0.5, bins: int = 10) -> dict:
    """Every figure at one threshold on P(positive), with each class's figures and the counts."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    cm = metrics.confusion_matrix(y, pred, 2)
    per = metrics.per_class(cm)
    neg, pos = ({m: metrics.finite(per[m][c]) for m in metrics.COUNTED} for c in (0, 1))
    rec, spec, f1, f1_neg = pos["recall"], pos["specificity"], pos["f1"], neg["f1"]
    return {
        "accuracy": float(np.trace(cm) / len(y)) if len(y) else None,
        **{name: metrics.finite(per[m][c]) for name, (c, m) in NAMES.items()},
        "balanced_accuracy": None if rec is None or spec is None else (rec + spec) / 2,
        "auroc": metrics.auroc(y, p),
        "auprc": metrics.auprc(y, p),
        "brier": brier(y, p),
        "ece": ece(y, p, bins),  # of the rule's decisions (P >= 0.5), whatever the threshold
        "macro_f1": None if f1 is None or f1_neg is None else (f1 + f1_neg) / 2,
        "per_class": {
            "negative": {"precision": neg["precision"], "recall": neg["recall"], "f1": neg["f1"]},
            "positive": {"precision": pos["precision"], "recall": pos["recall"], "f1": pos["f1"]},
        },
        "confusion": {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])},
    }


def undefined_reasons(m: dict, y, p, threshold: float) -> dict[str, str]:
    """Why each None figure is None: the engine's reason for the class it belongs to."""
    y, pred = np.asarray(y).astype(int), (np.asarray(p) >= threshold).astype(int)
    cls = ("negative", "positive")
    why = {}
    for name, (c, f) in NAMES.items():
        if m[name] is None:
            why[name] = metrics.why_undefined(cls[c], f, int((y == c).sum()), int((pred == c).sum()))
    for name in ("auroc", "auprc"):
        if m[name] is None:
            why[name] = metrics.why_undefined("positive", name, int(y.sum()), int(pred.sum()))
    for k in ("balanced_accuracy", "macro_f1"):
        if m[k] is None:
            why[k] = "needs both classes in the test set and in the predictions"
    return why


def bootstrap_ci(y, p, threshold, groups, reps, seed, confidence=0.95, bins=10) -> dict:
    """Percentile intervals of every POINT figure but NO_INTERVAL's, resampling groups."""
    y, p = np.asarray(y), np.asarray(p)
    stat = lambda i: point_metrics(y[i], p[i], threshold, bins)  # noqa: E731
    return metrics.bootstrap(stat, len(y), groups, reps, seed, confidence, keys=POINT)
