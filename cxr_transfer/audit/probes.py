"""Shortcut probes: how far can the classes be told apart by things that are not disease?

Each probe fits a logistic regression on something that carries no diagnosis (16x16 thumbnails,
acquisition facts, ImageNet features of images whose lung fields are blacked out), on the train
split, and scores it on the test split with the same grouped bootstrap intervals as evaluate. A
high score means the classes differ in ways a network can use without seeing disease: the
literature calls this shortcut learning (DeGrave et al. 2021; Maguolo & Nanni 2021).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxr_transfer.audit.gradcam import lung_box
from cxr_transfer.core.decision import decide, decide_positive
from cxr_transfer.data.acquisition import feature_matrix
from cxr_transfer.evaluate import binary, metrics
from cxr_transfer.evaluate.metrics import auroc


def thumbnails(x: np.ndarray, size: int) -> np.ndarray:
    """(N, size*size) area-averaged thumbnails in [0, 1] of an (N, S, S) uint8 store."""
    t = torch.from_numpy(np.array(x, dtype=np.float32))[:, None] / 255.0
    return F.adaptive_avg_pool2d(t, size).flatten(1).numpy()


def logistic_scores(x_train, y_train, x_test, c: float = 1.0) -> np.ndarray:
    """P(positive) on the test rows from a standardised logistic regression fit on train; with
    more than two classes a multinomial one, and the (N, K) probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    model.fit(x_train, y_train)
    p = model.predict_proba(x_test)
    return p[:, 1] if p.shape[1] == 2 else p


def scored(y, p, groups, reps: int, seed: int, confidence: float, flag_auroc: float) -> dict:
    """Accuracy and AUROC with grouped bootstrap intervals, and whether the AUROC is a flag.
    `p` (N, K) for more than two classes: the macro one-vs-rest AUROC and the argmax."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    if p.ndim == 2:
        ci = metrics.bootstrap_ci(y, p, groups, reps, seed, confidence)
        names = [str(c) for c in range(p.shape[1])]
        auc, acc = metrics.sklearn_figures(y, p, names)["auroc_macro"], float((decide(p) == y).mean())
        lo, hi = ci.get("auroc_macro") or (None, None)
    else:
        ci = binary.bootstrap_ci(y, p, 0.5, groups, reps, seed, confidence)
        auc, acc = auroc(y, p), float((decide_positive(p) == y).mean())
        lo, hi = ci.get("auroc") or (None, None)
    return {
        "auroc": None if auc is None else round(auc, 4),
        "auroc_ci_low": lo,
        "auroc_ci_high": hi,
        "accuracy": round(acc, 4),
        "flagged": bool(auc is not None and auc >= flag_auroc),
    }


def separation(y, x) -> float | None:
    """How well one score separates the classes, whichever way round: max(AUROC, 1 - AUROC), the
    mean of its one-vs-rest values over the classes for more than two (0.5 none, 1.0 fully)."""
    y = np.asarray(y).astype(int)
    classes = np.unique(y)
    if len(classes) < 2:
        return None
    both = len(classes) == 2
    aucs = [auroc(y == c, x) for c in (classes[1:] if both else classes)]
    return float(np.mean([max(a, 1 - a) for a in aucs]))


def acquisition_probe(train: pd.DataFrame, test: pd.DataFrame, y_train, y_test, top: int = 3):
    """Scores of a logistic regression on acquisition facts, and the facts that carry most of it
    (each fact's own test `separation`)."""
    x, names = feature_matrix(pd.concat([train, test], ignore_index=True))
    x_tr, x_te = x[: len(train)], x[len(train) :]
    keep = x_tr.std(axis=0) > 0  # a constant column carries nothing and upsets nothing
    p = logistic_scores(x_tr[:, keep], y_train, x_te[:, keep])
    single = {}
    for k, name in enumerate(names):
        a = separation(y_test, x_te[:, k]) if keep[k] else None
        if a is not None:
            single[name] = round(a, 3)
    best = sorted(single.items(), key=lambda kv: -kv[1])[:top]
    return p, best


def baselines(
    x_train, y_train, x_test, y_test, train: pd.DataFrame, test: pd.DataFrame, sizes, score
) -> dict:
    """The shortcut baselines fit on the training images and scored on the test ones: logistic
    regression on each thumbnail size (`pixels_<size>`) and on the acquisition facts, each result
    through `score` (test scores -> figures)."""
    out = {}
    for size in sizes:
        p = logistic_scores(thumbnails(x_train, size), y_train, thumbnails(x_test, size))
        out[f"pixels_{size}"] = score(p)
    p_acq, top = acquisition_probe(train, test, y_train, y_test)
    out["acquisition"] = {**score(p_acq), "top_features": ", ".join(f"{n} {a:.2f}" for n, a in top)}
    return out


def external_baselines(cfg, classes: list[str], positive, prepared, splits, x_ext, ext_table, boot) -> dict:
    """The baselines fit on the internal training split (prepare's store, the split's train.csv),
    scored on the internal test split and on an external set: whether each separates the classes
    internally (its AUROC interval above 0.5) and keeps its margin over chance at the site
    (verdicts.retention: holds, collapses or unclear). `boot`: (resamples, seed, confidence)."""
    from cxr_transfer.core.tables import read_table
    from cxr_transfer.data.prepare import load_store
    from cxr_transfer.evaluate import verdicts

    (x_tr, y_tr), (x_te, y_te) = load_store(prepared, "train"), load_store(prepared, "test")
    test, y_ext = read_table(splits / "test.csv"), ext_table["label"].to_numpy()
    if len(classes) == 2:
        pos = classes.index(positive)
        y_tr, y_te, y_ext = ((v == pos).astype(int) for v in (y_tr, y_te, y_ext))
    reps, seed, conf = boot
    rng = np.random.default_rng(seed)
    rs = [verdicts.resample(t["group"].to_numpy(), len(t), reps, rng) for t in (test, ext_table)]
    figure, n = ("auroc" if len(classes) == 2 else "auroc_macro"), len(y_te)
    y_both = np.concatenate([y_te, y_ext])

    def score(p):
        p = np.asarray(p, dtype=float)
        runs = []
        for part, y in ((p[:n], y_te), (p[n:], y_ext)):
            runs.append(
                [verdicts.Scored(y, part, (decide_positive(part) if part.ndim == 1 else decide(part)) == y)]
            )
        (i, e), out = runs, {}
        for where, r, w in (("internal", i, rs[0]), ("external", e, rs[1])):
            points, draws = verdicts.run_draws(figure, r, w.w)
            out[where] = verdicts.combine(points, draws, conf, w.units).as_dict()
            out[where]["auroc"] = out[where]["point"]
        kept = verdicts.two_sets(figure, i, e, rs[0], rs[1], conf, verdicts.retention)
        lo = out["internal"]["ci"][0] if out["internal"]["ci"] else None
        out |= {"retention": kept.as_dict(), "retention_word": verdicts.retention_word(kept)}
        out |= {"separates_internally": lo is not None and lo > 0.5, "auroc": out["external"]["auroc"]}
        return out

    train = read_table(splits / "train.csv")
    x_both = np.concatenate([np.asarray(x_te), np.asarray(x_ext)])
    both = pd.concat([test, ext_table], ignore_index=True)
    return baselines(x_tr, y_tr, x_both, y_both, train, both, cfg.thumbnails, score)


def blackout(x: np.ndarray, box: float, keep_centre: bool) -> np.ndarray:
    """A copy of an (N, S, S) store with its central box (a fraction `box` of each side) black,
    or, with keep_centre, everything but that box black (Maguolo & Nanni's lung-free images)."""
    x = np.array(x, copy=True)
    c = lung_box(x.shape[-1], box)
    if keep_centre:
        centre = x[:, c, c].copy()
        x[:] = 0
        x[:, c, c] = centre
    else:
        x[:, c, c] = 0
    return x


def cramers_v(table: pd.DataFrame) -> float | None:
    """Cramer's V of a contingency table (0 = independent, 1 = one determines the other), with
    no bias correction; None when a margin has fewer than two levels."""
    obs = np.asarray(table, dtype=float)
    if obs.shape[0] < 2 or obs.shape[1] < 2:
        return None
    n = obs.sum()
    expected = obs.sum(1, keepdims=True) * obs.sum(0, keepdims=True) / n
    chi2 = ((obs - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (n * (min(obs.shape) - 1))))


def source_probe(df: pd.DataFrame, flag_v: float) -> dict:
    """The source x class table and Cramer's V, where the index gave images a source."""
    known = df[df["source"].astype(str) != ""]
    if known.empty:
        return {"skipped": "no image has a source (set data.metadata.source_column)", "flagged": False}
    table = pd.crosstab(known["source"], known["class"])
    v = cramers_v(table)
    return {
        "cramers_v": None if v is None else round(v, 4),
        "sources": int(table.shape[0]),
        "images_with_source": len(known),
        "table": {str(s): {str(c): int(n) for c, n in row.items()} for s, row in table.iterrows()},
        "flagged": bool(v is not None and v >= flag_v),
    }


def near_duplicate_report(
    parts: dict[str, pd.DataFrame], max_bits: int | None, max_framed_bits: int | None = None
) -> tuple[dict, pd.DataFrame]:
    """Near pairs over all splits at limits looser than the split's join (the pairs it left
    apart), listed with paths, splits, classes, the hash that found them and its distance.
    Flagged where a test image and a training or validation image of its class form a pair: a
    probable near copy that the test figures may be scored on. Other pairs across splits are
    counted, not flagged: at loose limits two different radiographs can hash alike (a pair of two
    classes; the listed pairs say which they are)."""
    from cxr_transfer.data.neardup import near_pairs_of

    cols = ["path_a", "split_a", "class_a", "path_b", "split_b", "class_b", "hash", "distance"]
    if max_bits is None and max_framed_bits is None:
        skipped = "probe.near_duplicate_bits and probe.near_duplicate_framed_bits are null"
        return {"skipped": skipped, "flagged": False}, pd.DataFrame(columns=cols)
    df = pd.concat([p.assign(split=s) for s, p in parts.items()], ignore_index=True)
    if "class" not in df:  # no labels given: every pair counts as one class's
        df["class"] = ""
    i, j, d, col = near_pairs_of(df, {"phash": max_bits, "phash_framed": max_framed_bits})
    pairs = pd.DataFrame(
        {
            **{f"{c}_a": df[c].to_numpy()[i] for c in ("path", "split", "class")},
            **{f"{c}_b": df[c].to_numpy()[j] for c in ("path", "split", "class")},
            "hash": col,
            "distance": d,
        },
        columns=cols,
    )
    cross = pairs["split_a"] != pairs["split_b"]
    test = (pairs["split_a"] == "test") | (pairs["split_b"] == "test")
    same = int((cross & test & (pairs["class_a"] == pairs["class_b"])).sum())
    summary = {
        "max_bits": max_bits,
        "max_framed_bits": max_framed_bits,
        "pairs": len(pairs),
        "cross_split_pairs": int(cross.sum()),
        "test_pairs_same_class": same,
        "flagged": same > 0,
    }
    return summary, pairs


def feature_extractor(arch: str, weights_dir: str, device):
    """A function from an (N, S, S) uint8 store to the frozen ImageNet features of each image
    (the input of the architecture's last layer); the model is built once."""
    from cxr_transfer.runtime.batches import ArrayBatches
    from cxr_transfer.runtime.engine import FP32, Pass, for_inference, tail_inputs
    from cxr_transfer.runtime.models import build_model, get_spec
    from cxr_transfer.runtime.speed import inference_batch

    spec, device = get_spec(arch), torch.device(device)
    model = build_model(arch, weights_dir, 2, seed=0).eval()
    last = model.get_submodule(spec.last_layer)

    def extract(x: np.ndarray) -> np.ndarray:
        size = x.shape[-1]
        plan = Pass(len(x), size)  # the rules of every inference pass
        forward = for_inference(model, arch, spec.mean, spec.std, device, upto=last, plan=plan)
        batch = inference_batch(device.type, size)
        batches = ArrayBatches(np.asarray(x)[:, None], np.zeros(len(x)), batch, device=device)
        with torch.no_grad():
            return tail_inputs(model, forward, batches, FP32, device).cpu().numpy()

    return extract


def outside_lungs(extract, x_train, y_train, x_test, box: float, score) -> dict:
    """Maguolo & Nanni's probe: a logistic head on the features of images whose central box is
    black (flagged when it still separates the classes), and of the box alone, for contrast."""
    row = {}
    for name, keep_centre in (("masked", False), ("centre_only", True)):
        f_tr = extract(blackout(x_train, box, keep_centre))
        f_te = extract(blackout(x_test, box, keep_centre))
        row[name] = score(logistic_scores(f_tr, y_train, f_te, c=0.1))
    row["flagged"] = row["masked"].pop("flagged")
    row["centre_only"].pop("flagged")  # the contrast says where the signal is; it is not a flag
    return row


def verdict(probe: dict) -> dict:
    """The probe figure `dvc metrics show` and `dvc exp show` carry, one column wide: how many
    probes flagged a shortcut (every figure is in metrics/probe.json)."""
    return {"shortcut_flags": probe["n_flagged"]}
