"""From predicted probabilities to the metrics file: point estimates, intervals, thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_transfer.core.cli import write_csv, write_json
from cxr_transfer.core.decision import decide, decide_positive
from cxr_transfer.evaluate import metrics
from cxr_transfer.evaluate.binary import bootstrap_ci, point_metrics, two_columns, undefined_reasons
from cxr_transfer.evaluate.calibration import calibrate, log_odds
from cxr_transfer.evaluate.metrics import threshold_counts, youden_threshold


def _round(v):
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


def evaluate(y, p, groups, y_val, p_val, reps: int, seed: int, confidence: float, bins: int) -> dict:
    """The metrics of one model on the test split.

    Argmax (threshold 0.5) is the headline; the Youden threshold is chosen on validation and only
    then applied to test, reported separately, so nothing is tuned on test (`y_val` None: none)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    m = point_metrics(y, p, 0.5, bins)
    out = {k: m[k] for k in m if k not in ("per_class", "confusion")}
    out["n_test"] = len(y)
    out["n_groups"] = int(len(set(groups))) if groups is not None else len(y)
    out["per_class"] = m["per_class"]
    out["confusion"] = m["confusion"]
    out["ci"] = bootstrap_ci(y, p, 0.5, groups, reps, seed, confidence, bins)
    out["ci_level"] = confidence
    t = None if y_val is None else youden_threshold(y_val, p_val)
    if y_val is None:  # pooled folds: each fold's own threshold is in its per-fold row
        pass
    elif t is None:
        out["youden"] = {"threshold": None, "reason": "the validation split has one class"}
    else:
        mt = point_metrics(y, p, t, bins)
        keys = ("accuracy", "precision", "recall", "specificity", "f1", "npv", "balanced_accuracy")
        out["youden"] = {"threshold": t, **{k: mt[k] for k in keys}, "confusion": mt["confusion"]}
    out["undefined"] = undefined_reasons(m, y, p, 0.5)
    return _round(out)


def curves(y, p) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC (fpr, tpr, threshold) and precision-recall points at every distinct score; empty
    frames when one class is missing."""
    y = np.asarray(y).astype(int)
    if y.min() == y.max():
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"]), pd.DataFrame(
            columns=["recall", "precision"]
        )
    tp, fp, thr = threshold_counts(y, p)
    roc = pd.DataFrame(
        {"fpr": np.r_[0.0, fp / fp[-1]], "tpr": np.r_[0.0, tp / tp[-1]], "threshold": np.r_[1.0, thr]}
    )
    pr = pd.DataFrame({"recall": np.r_[0.0, tp / tp[-1]], "precision": np.r_[1.0, tp / (tp + fp)]})
    return roc.round(6), pr.round(6)


def prediction_table(test: pd.DataFrame, prob_pos, classes: list[str], positive: str) -> pd.DataFrame:
    """Per test image: path, group, true class and label, P(positive) and the predicted class at
    0.5. The positive class may be either of the two, first or second in data.classes."""
    pos = classes.index(positive)
    neg = classes[1 - pos]
    prob_pos = np.asarray(prob_pos, dtype=float)
    out = test[["path", "group", "class", "label"]].copy()
    out["probability"] = prob_pos.round(6)
    out["predicted"] = np.where(decide_positive(prob_pos), positive, neg)
    return out


HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "auroc",
    "auprc",
    "brier",
    "ece",
    "n_test",
)


def headline(full: dict) -> dict:
    """The lean metrics file `dvc metrics show/diff` and `dvc exp show` compare: the point figures
    a reader compares across modes and experiments, flat. Everything else (intervals, per class,
    confusion, the Youden block, calibration, timings) stays in eval/<run>/metrics.json."""
    return _narrow(full, HEADLINE)


def _narrow(full: dict, figures) -> dict:
    return {k: full[k] for k in figures}


def per_source(test: pd.DataFrame, y, p, bins: int = 10) -> dict:
    """Metrics per image source wherever a source has two classes or more in the test split; a
    source with one class says which (its accuracy would only be that class's recall).

    `p` is P(positive) for two classes, the (N, K) probabilities for more."""
    if "source" not in test or not (test["source"].astype(str) != "").any():
        return {}
    out = {}
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    for src, idx in test.groupby(test["source"].astype(str)).indices.items():
        if src == "":
            continue
        classes = sorted(set(test["class"].iloc[idx]))
        if len(classes) < 2:
            out[src] = {"n": len(idx), "note": f"only {classes[0]} in test: no per-source accuracy or AUROC"}
            continue
        if p.ndim == 1:
            m = point_metrics(y[idx], p[idx], 0.5, bins)
            keys = ("accuracy", "auroc", "recall", "specificity")
        else:
            m = metrics.figures(y[idx], p[idx], bins)
            keys = ("accuracy", "balanced_accuracy", "auroc_macro")
        out[src] = {"n": len(idx), **{k: m[k] for k in keys}}
    return _round(out)


def evaluate_k(y, P, groups, classes, positive, reps: int, seed: int, confidence: float, bins: int) -> dict:
    """The metrics of one K-class model on the test split (K > 2): scikit-learn's figures at the
    argmax, per class one-vs-rest, the confusion matrix, grouped bootstrap intervals, and why any
    figure is undefined. With `positive`, that class against the rest under the binary names."""
    y, P = np.asarray(y).astype(int), metrics.normalise(P)
    m = metrics.sklearn_figures(y, P, classes, bins, positive)
    pos = None if positive is None else classes.index(positive)
    out = {k: m[k] for k in (*metrics.POINT, *(metrics.OVR if positive else ()))}
    out["n_test"] = len(y)
    out["n_groups"] = int(len(set(groups))) if groups is not None else len(y)
    out["classes"] = list(classes)
    out["per_class"] = m["per_class"]
    out["confusion_matrix"] = m["confusion_matrix"]
    out["ci"] = metrics.bootstrap_ci(y, P, groups, reps, seed, confidence, bins, pos)
    out["ci_level"] = confidence
    out["undefined"] = metrics.undefined_reasons(m, classes)
    return _round(out)


HEADLINE_K = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "auroc_macro",
    "auprc_macro",
    "brier",
    "ece",
    "kappa",
)
HEADLINE_POSITIVE = ("recall", "specificity", "auroc")  # data.positive against the rest


def headline_k(full: dict) -> dict:
    """K classes: the lean file `dvc metrics` compares, the macro equivalents of the binary
    headline (with data.positive also its recall, specificity and AUROC against the rest); the
    same keys for every run of one class set."""
    positive = HEADLINE_POSITIVE if "auroc" in full else ()
    return _narrow(full, (*HEADLINE_K, *positive, "n_test"))


def prediction_table_k(test: pd.DataFrame, P, classes: list[str]) -> pd.DataFrame:
    """Per test image: path, group, true class and label, P(class) for every class (p_<class>)
    and the predicted class (the argmax)."""
    P = metrics.normalise(P)
    out = test[["path", "group", "class", "label"]].copy()
    for c, name in enumerate(classes):
        out[f"p_{name}"] = P[:, c].round(6)
    out["predicted"] = np.asarray(classes)[decide(P)]
    return out


def curves_k(y, P, classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One-vs-rest ROC and precision-recall points of every class, with a `class` column."""
    y, P = np.asarray(y).astype(int), np.asarray(P, dtype=float)
    parts = [curves(y == c, P[:, c]) for c in range(len(classes))]
    return tuple(
        pd.concat([p[i].assign(**{"class": name}) for p, name in zip(parts, classes, strict=True)])
        for i in (0, 1)
    )


@dataclass(frozen=True)
class Scores:
    """A model's (N, K) softmax probabilities and the float32 logits they came from (temperature
    scaling divides the logits: probabilities saturate where logits do not)."""

    probs: np.ndarray
    logits: np.ndarray

    @staticmethod
    def concat(parts: list[Scores]) -> Scores:
        return Scores(*(np.concatenate([getattr(q, f) for q in parts]) for f in ("probs", "logits")))


def score_split(test: pd.DataFrame, val: pd.DataFrame, scores: dict, classes: list[str], positive, cfg):
    """One model's scores on a test set, judged: the metrics (threshold from `val`, never from
    test), the per-image predictions (with temperature-scaled probabilities, two classes), the
    ROC and PR points, (y, scores) as the metrics saw them, and the calibration block. `scores`
    holds the Scores of "test" and "val"; `cfg` is params' evaluate section."""
    groups = test["group"].to_numpy()
    reps, seed, conf, bins = cfg.bootstrap, cfg.seed, cfg.confidence, cfg.ece_bins
    probs = {s: v.probs for s, v in scores.items()}
    if len(classes) == 2:
        pos = classes.index(positive)
        y, y_val = (test["label"] == pos).to_numpy(), (val["label"] == pos).to_numpy()
        p_test, p_val = probs["test"][:, pos], probs["val"][:, pos]
        m = evaluate(y, p_test, groups, y_val, p_val, reps, seed, conf, bins)
        z_val, z_test = (log_odds(scores[s].logits, pos) for s in ("val", "test"))
        cal, P_cal = calibrate(y_val, z_val, y, z_test, two_columns(p_test), bins)
        pred = prediction_table(test, p_test, classes, positive)
        if P_cal is not None:
            pred["probability_calibrated"] = P_cal[:, 1].round(6)  # temperature-scaled on validation
        roc_pr = curves(y, p_test)
    else:
        y, y_val, p_test = test["label"].to_numpy(), val["label"].to_numpy(), probs["test"]
        m = evaluate_k(y, p_test, groups, classes, positive, reps, seed, conf, bins)
        z_val, z_test = (scores[s].logits.astype(float) for s in ("val", "test"))
        cal = calibrate(y_val, z_val, y, z_test, p_test, bins)[0]
        pred = prediction_table_k(test, p_test, classes)
        roc_pr = curves_k(y, p_test, classes)
    cal = {k: round(v, 6) if isinstance(v, float) else v for k, v in cal.items()}
    return m, pred, roc_pr, (y, p_test), cal


def write_scored(folder: Path, full: dict, pred: pd.DataFrame, roc: pd.DataFrame, pr: pd.DataFrame) -> None:
    """metrics.json (everything), headline.json (the lean figures the report averages over seeds),
    predictions.csv, roc.csv and pr.csv in `folder`."""
    write_json(folder / "metrics.json", full)
    write_json(folder / "headline.json", headline(full) if "auroc_macro" not in full else headline_k(full))
    write_csv(pred, folder / "predictions.csv")
    write_csv(roc, folder / "roc.csv")
    write_csv(pr, folder / "pr.csv")
