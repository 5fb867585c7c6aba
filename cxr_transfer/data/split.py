"""Grouped, stratified, seeded train/val/test split: no group (patient or duplicate image) in
two splits, class proportions kept in each."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_transfer.core.errors import CxrError
from cxr_transfer.data.groups import group_names
from cxr_transfer.data.neardup import near_pairs_of

SPLITS = ("train", "val", "test")


class SplitError(CxrError):
    """The table cannot be split as asked; the message names the class and the fix."""


def _targets(n: int, test_size: float, val_size: float) -> dict[str, int]:
    """Images per split for one class: test first, then val as a fraction of the rest (the seed's way)."""
    n_test = max(1, round(n * test_size))
    n_val = max(1, round((n - n_test) * val_size))
    return {"test": n_test, "val": n_val, "train": n - n_test - n_val}


def grouped_split(df: pd.DataFrame, test_size: float, val_size: float, seed: int) -> pd.Series:
    """A split name per row. Groups are dealt, in a seeded random order, to test, then val, then
    train, per class (a group's class is its most common label), until each split's share is met."""
    rng = np.random.default_rng(seed)
    g = df.groupby("group", sort=True)["label"]
    group_label = g.agg(lambda s: s.value_counts().idxmax())
    group_size = g.size()
    assign: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        names = group_label.index[group_label == label].to_numpy()
        cls = df.loc[df["label"] == label, "class"].iloc[0]
        if len(names) < 3:
            raise SplitError(
                f"class {cls} has {len(names)} independent image group(s); at least 3 are needed "
                "to put one in each of train/val/test; add images of this class"
            )
        names = names[rng.permutation(len(names))]
        sizes = group_size[names].to_numpy()
        want = _targets(int(sizes.sum()), test_size, val_size)
        filled = {"test": 0, "val": 0}
        for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
            left = len(names) - i  # keep at least one group for each split still empty
            if filled["test"] < want["test"] and left > 2:
                split = "test"
            elif filled["val"] < want["val"] and left > 1:
                split = "val"
            else:
                split = "train"
            filled[split] = filled.get(split, 0) + int(size)
            assign[name] = split
    return df["group"].map(assign)


def _group_folds(df: pd.DataFrame, n_splits: int, seed: int, what: str) -> np.ndarray:
    """Fold number (0..n_splits-1) of every row: scikit-learn's StratifiedGroupKFold, seeded, so no
    group straddles two folds and each fold keeps the class proportions as well as groups allow."""
    from sklearn.model_selection import StratifiedGroupKFold  # here: the single split needs no sklearn

    n_groups = df.groupby("label")["group"].nunique()
    short = n_groups[n_groups < n_splits]
    if len(short):
        cls = df.loc[df["label"] == short.index[0], "class"].iloc[0]
        raise SplitError(
            f"{what}: class {cls} has {int(short.iloc[0])} independent image group(s), fewer than the "
            f"{n_splits} folds; lower split.folds or add images of this class"
        )
    folds = np.empty(len(df), dtype=np.int64)
    kf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(kf.split(np.zeros(len(df)), df["label"], df["group"])):
        folds[test] = i
    return folds


def source_folds(df: pd.DataFrame) -> tuple[np.ndarray, list[str], dict]:
    """Leave-one-source-out: the test fold of every row (-1: never tested), the sources that are
    folds, and what each source holds. A source is a fold when it holds every class (its test
    part can score a model); a source of one class only trains, in every fold. Fewer than two
    such sources: a SplitError saying the data cannot separate source from label."""
    known = df["source"].astype(str) if "source" in df else pd.Series("", index=df.index)
    if (known == "").all():
        raise SplitError(
            "split.folds_by: source: no image has a source; give data.metadata.source_column (or a labels "
            "table's source column), or use folds_by: group"
        )
    classes = sorted(df["class"].unique())
    held = {s: sorted(df.loc[known == s, "class"].unique()) for s in sorted(set(known) - {""})}
    both = [s for s, c in held.items() if c == classes]
    if len(both) < 2:
        each = "; ".join(f"{s}: {', '.join(c)}" for s, c in held.items())
        raise SplitError(
            f"split.folds_by: source: {len(both)} of {len(held)} sources hold every class ({each}), so the "
            "data cannot separate source from label: a model may score by recognising the source, and no "
            "split of these images can tell; only an external set can (params.yaml external:). Use "
            "folds_by: group, and read its results beside the source-confounding probe"
        )
    fold = np.full(len(df), -1, dtype=np.int64)
    for i, s in enumerate(both):
        fold[(known == s).to_numpy()] = i
    return fold, both, {s: c for s, c in held.items()}


def fold_roles(
    df: pd.DataFrame, k: int, val_size: float, seed: int, test_fold: np.ndarray | None = None
) -> pd.DataFrame:
    """k-fold cross-validation: columns f0..f{k-1}, each row's role (train/val/test) in each fold.

    Every row is `test` in exactly one fold (grouped, stratified k-fold); each fold's validation
    part is carved from its training part the same way, as one of round(1 / val_size) grouped
    stratified folds of it (0.2 -> a fifth), seeded per fold. `test_fold` given (leave-one-source-
    out): each row's test fold, -1 for rows tested in none."""
    if test_fold is None:
        test_fold = _group_folds(df, k, seed, f"split.folds={k}")
    roles = pd.DataFrame(index=df.index)
    n_val = max(2, round(1 / val_size))
    for i in range(k):
        rest = np.flatnonzero(test_fold != i)
        inner = _group_folds(df.iloc[rest], n_val, seed + 1 + i, f"fold {i}'s validation part")
        role = np.full(len(df), "train", dtype=object)
        role[test_fold == i] = "test"
        role[rest[inner == 0]] = "val"
        roles[f"f{i}"] = role
    return roles


def fold_summary(df: pd.DataFrame, roles: pd.DataFrame) -> dict:
    """Per fold: images per class and groups in each role, and any group in two roles (0 when the
    folds are sound); over all folds: how often each image is tested (once each)."""
    folds = {}
    for f in roles.columns:
        parts = {s: df[roles[f] == s] for s in SPLITS}
        folds[f] = {
            s: {
                "images": len(p),
                "groups": int(p["group"].nunique()),
                "counts": {str(c): int(n) for c, n in p["class"].value_counts().sort_index().items()},
            }
            for s, p in parts.items()
        }
        folds[f]["group_overlap"] = sum(
            len(set(parts[a]["group"]) & set(parts[b]["group"]))
            for i, a in enumerate(SPLITS)
            for b in SPLITS[i + 1 :]
        )
    tested = (roles == "test").sum(axis=1)
    return {
        "k": roles.shape[1],
        "folds": folds,
        "images_tested_once": int((tested == 1).sum()),
        "images": len(df),
        "groups": int(df["group"].nunique()),
    }


def join_near_duplicates(
    df: pd.DataFrame, max_bits: int | None, max_framed_bits: int | None = None
) -> tuple[pd.DataFrame, int]:
    """Merge the groups of images whose pHashes are at most `max_bits` apart (resized, re-encoded
    copies) or whose framed pHashes are at most `max_framed_bits` apart (cropped copies), so the
    split keeps each such set in one split; None = that hash is off.
    Returns the table with its new groups and the number of near-duplicate pairs found."""
    i, j, _, _ = near_pairs_of(df, {"phash": max_bits, "phash_framed": max_framed_bits})
    if len(i) == 0:
        return df, 0
    merged = group_names({"": df["group"].tolist()}, zip(i.tolist(), j.tolist(), strict=True))
    return df.assign(group=merged), len(i)


GROUP_WARN_SHARE = 0.05  # one group above 5% of the images is a quarter of a 20% test split


def largest_group(df: pd.DataFrame, test_size: float) -> dict:
    """The largest split group (images, share, classes) and, above GROUP_WARN_SHARE, a warning.

    Near-duplicate joining is single-linkage: on real radiographs, whose hashes cluster, it can
    chain thousands of different images into one group, which the grouped split then deals whole
    to one part (test, often), distorting the proportions and what the test split measures."""
    sizes = df["group"].value_counts()
    name, n = str(sizes.index[0]), int(sizes.iloc[0])
    share = n / len(df)
    rows = df[df["group"] == name]
    out = {
        "images": n,
        "share": round(share, 4),
        "classes": {str(k): int(v) for k, v in rows["class"].value_counts().sort_index().items()},
        "warn_above": GROUP_WARN_SHARE,
        "warning": None,
    }
    if share > GROUP_WARN_SHARE:
        out["warning"] = (
            f"one split group holds {n} images ({share:.0%} of {len(df)}); it goes whole into one part, so "
            f"the {1 - test_size:.0%}/{test_size:.0%} proportions and that part's figures are distorted. If "
            "it comes from near-duplicate joining (single-linkage chains), lower split.near_duplicate_bits "
            "and split.near_duplicate_framed_bits or set them to null; if from the patient table, check it"
        )
    return out


def split_summary(parts: dict[str, pd.DataFrame], seed: int, test_size: float, val_size: float) -> dict:
    """Counts per class per split and the group overlap between splits, computed from the output."""
    overlap = 0
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            overlap += len(set(parts[a]["group"]) & set(parts[b]["group"]))
    total = sum(len(p) for p in parts.values())
    return {
        "seed": seed,
        "test_size": test_size,
        "val_size": val_size,
        "counts": {
            s: {str(k): int(v) for k, v in p["class"].value_counts().sort_index().items()}
            for s, p in parts.items()
        },
        "fractions": {s: round(len(p) / total, 4) for s, p in parts.items()},
        "group_overlap": overlap,
    }


def split_data(df: pd.DataFrame, cfg) -> tuple[dict[str, pd.DataFrame], pd.DataFrame | None, dict]:
    """The split stage's work on data.csv under params' `split` (cfg): near-duplicates joined into
    one group, then train/val/test (or k folds, whose fold 0 is also written as train/val/test).
    Returns the parts, the folds table (None without folds) and split.json's summary."""
    groups_before = df["group"].nunique()
    df, n_near = join_near_duplicates(df, cfg.near_duplicate_bits, cfg.near_duplicate_framed_bits)
    folds = by_source = None
    if cfg.folds_by == "source":  # one fold per source holding every class
        test_fold, names, held = source_folds(df)
        roles = fold_roles(df, len(names), cfg.val_size, cfg.seed, test_fold)
        folds, which = pd.concat([df, roles], axis=1), roles["f0"]
        by_source = {"folds": {f"f{i}": s for i, s in enumerate(names)}, "held": held}
        by_source["never_tested"] = int((test_fold < 0).sum())
    elif cfg.folds:  # every image in one fold's test part; train/val/test.csv are fold 0's parts
        roles = fold_roles(df, cfg.folds, cfg.val_size, cfg.seed)
        folds, which = pd.concat([df, roles], axis=1), roles["f0"]
    else:
        which = grouped_split(df, cfg.test_size, cfg.val_size, cfg.seed)
    parts = {s: df[which == s] for s in SPLITS}
    summary = split_summary(parts, cfg.seed, cfg.test_size, cfg.val_size)
    summary["near_duplicates"] = {
        "max_bits": cfg.near_duplicate_bits,
        "max_framed_bits": cfg.near_duplicate_framed_bits,
        "pairs": n_near,
        "groups_before": int(groups_before),
        "groups_after": int(df["group"].nunique()),
    }
    summary["largest_group"] = largest_group(df, cfg.test_size)
    summary["folds"] = fold_summary(df, roles) if folds is not None else None
    if by_source:
        summary["folds"]["by_source"] = by_source
    summary["sources"] = source_counts(parts)
    return parts, folds, summary


def source_counts(parts: dict[str, pd.DataFrame]) -> dict | None:
    """Images per source and class in each split (None when no image has a source)."""
    if not any("source" in p and (p["source"].astype(str) != "").any() for p in parts.values()):
        return None
    out = {}
    for s, p in parts.items():
        src = p["source"].astype(str).replace("", "(none)")
        table = pd.crosstab(src, p["class"]) if len(p) else pd.DataFrame()
        out[s] = {str(r): {str(c): int(n) for c, n in row.items() if n} for r, row in table.iterrows()}
    return out
