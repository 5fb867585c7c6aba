"""Near-duplicate images: perceptual hashes per image (pHash, the imagehash library) and every pair
within a Hamming distance, found with a multi-index hash instead of a quadratic scan.

Public chest X-ray sets hold resized, re-encoded and slightly cropped copies of one radiograph;
their pixels differ, so the exact-pixel groups miss them, but their pHashes are a few bits apart.
The hashes are 256 bits (a 16x16 DCT block): chest radiographs all look alike at 64 bits (distinct
synthetic radiographs collide there), much less so at 256. Two per image:

- `phash` of the whole image: resized and re-encoded copies land within a few bits, but a crop of
  2 pixels in 128 moves it by up to 34 bits;
- `phash_framed`, of the image reframed to its body: the window between the 10th and 90th
  percentiles of the intensity mass along each axis (above the 1st-percentile background). A crop
  that trims the frame moves that window with the anatomy, so cropped copies stay close.
"""

from __future__ import annotations

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

HASH_SIZE = 16  # 16 x 16 = 256 bits
BITS = HASH_SIZE * HASH_SIZE


def phash(gray: np.ndarray) -> str:
    """pHash (256 bits, 64 hex digits) of an 8-bit grayscale image."""
    return str(imagehash.phash(Image.fromarray(gray, mode="L"), hash_size=HASH_SIZE))


FRAME_Q = 0.1  # the framed hash's window: this quantile of the intensity mass from each side


def _mass_window(profile: np.ndarray) -> tuple[float, float]:
    c = np.cumsum(profile)
    c = c / c[-1]
    lo, hi = np.interp([FRAME_Q, 1 - FRAME_Q], c, np.arange(1, len(profile) + 1))
    return float(lo), float(hi)


def framed(gray: np.ndarray) -> Image.Image:
    """The image resampled (64x64, box filter) from the window that holds the central 80% of its
    intensity mass along each axis, after subtracting its 1st percentile (black borders weigh 0)."""
    counts = np.cumsum(np.bincount(gray.ravel(), minlength=256))
    background = int(np.searchsorted(counts, 0.01 * gray.size))  # the 1st percentile, from the histogram
    a = np.maximum(gray.astype(np.int32) - background, 0)
    x0, x1 = _mass_window(a.sum(0) + 1e-9)
    y0, y1 = _mass_window(a.sum(1) + 1e-9)
    box = (x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5)  # pixel centres to PIL's corner coordinates
    return Image.fromarray(gray, mode="L").resize((64, 64), Image.Resampling.BOX, box=box)


def framed_phash(gray: np.ndarray) -> str:
    """pHash (256 bits) of the image reframed to its body (see `framed`)."""
    return str(imagehash.phash(framed(gray), hash_size=HASH_SIZE))


def near_pairs_of(df, limits: dict[str, int | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance, hash column) for every pair of rows of `df` within the limit of at least one
    hash column (limit None: that hash is off); a pair found by two hashes is listed once, by the
    first column in `limits`."""
    found, n = [], len(df)
    for col, limit in limits.items():
        if limit is not None and n > 1:
            i, j, d = near_pairs(to_bits(df[col].tolist()), limit)
            found.append(pd.DataFrame({"k": i * n + j, "i": i, "j": j, "distance": d, "hash": col}))
    if not found:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0, dtype=object)
    pairs = pd.concat(found).drop_duplicates("k").sort_values("k")
    return (
        pairs["i"].to_numpy(),
        pairs["j"].to_numpy(),
        pairs["distance"].to_numpy(),
        pairs["hash"].to_numpy(),
    )


def to_bits(hexes) -> np.ndarray:
    """(n, 256) array of 0/1 from 64-hex-digit hashes."""
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hexes), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hexes), BITS // 8), axis=1)


def _same_key_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j), i < j, with keys[i] == keys[j]: sort, then compare each item with the one k
    places after it, for k = 1, 2, ... while some run of equal keys is longer than k."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    a, b = [], []
    k = 1
    while k < len(keys):
        idx = np.flatnonzero(ks[k:] == ks[:-k])
        if len(idx) == 0:
            break
        a.append(order[idx])
        b.append(order[idx + k])
        k += 1
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(a), np.concatenate(b)
    return np.minimum(i, j), np.maximum(i, j)


def near_pairs(bits: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance), sorted, for every pair i < j of hashes at most `max_distance` bits apart.

    Exact, not approximate: the bits are dealt into max_distance + 1 chunks (bit k to chunk
    k mod m, so each chunk mixes low and high frequencies); two hashes that differ in at most
    max_distance bits agree on at least one whole chunk (pigeonhole), so only hashes that share a
    chunk's value are compared, chunk by chunk, and only verified pairs are kept."""
    bits = np.asarray(bits, dtype=np.uint8)
    n, m = len(bits), max_distance + 1
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, empty
    packed = np.packbits(bits, axis=1).view(np.uint64)  # (n, 4) words for the distance
    found = []
    for c in range(min(m, bits.shape[1])):
        _, keys = np.unique(bits[:, c::m], axis=0, return_inverse=True)
        i, j = _same_key_pairs(keys.ravel())
        d = np.bitwise_count(packed[i] ^ packed[j]).sum(axis=1)
        keep = d <= max_distance
        found.append(i[keep] * n + j[keep])
    flat = np.unique(np.concatenate(found))
    i, j = flat // n, flat % n
    return i, j, np.bitwise_count(packed[i] ^ packed[j]).sum(axis=1).astype(np.int64)
