"""Per-image acquisition facts that carry no diagnosis: size, format, bytes, intensity statistics,
and the fractions of pure-black and pure-white pixels (borders, burned-in text).

If these alone tell the classes apart, the classes differ in how they were acquired, not (only)
in disease: the acquisition probe fits a classifier on exactly these."""

from __future__ import annotations

import numpy as np

NUMERIC = ["width", "height", "aspect", "bytes", "mean", "std", "p01", "p50", "p99", "black", "white"]
CATEGORICAL = ["format", "mode"]
STATS = NUMERIC[4:]  # computed from the pixels


def pixel_facts(gray: np.ndarray) -> dict[str, float]:
    """Intensity mean, std, 1st/50th/99th percentiles and black (<= 2) / white (>= 253) fractions
    of an 8-bit image, from its histogram (linear in pixels, no sort)."""
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    n = hist.sum()
    levels = np.arange(256)
    mean = float((hist * levels).sum() / n)
    std = float(np.sqrt((hist * (levels - mean) ** 2).sum() / n))
    cdf = np.cumsum(hist) / n
    pct = {f"p{q:02d}": int(np.searchsorted(cdf, q / 100.0)) for q in (1, 50, 99)}
    return {
        "mean": round(mean, 3),
        "std": round(std, 3),
        **pct,
        "black": round(float(hist[:3].sum() / n), 5),
        "white": round(float(hist[253:].sum() / n), 5),
    }


def feature_matrix(df) -> tuple[np.ndarray, list[str]]:
    """Numeric facts plus one-hot format and mode, from index columns; (matrix, column names)."""
    import pandas as pd

    num = df.assign(aspect=df["width"] / df["height"])[NUMERIC].astype(float)
    cats = pd.get_dummies(df[CATEGORICAL].astype(str), prefix=CATEGORICAL, dtype=float)
    x = pd.concat([num, cats], axis=1)
    return x.to_numpy(), list(x.columns)
