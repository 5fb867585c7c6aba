"""Near-duplicate images: a perceptual hash per image (pHash, the imagehash library) and every pair
within a Hamming distance, found with a multi-index hash instead of a quadratic scan.

Public chest X-ray sets hold resized, re-encoded and slightly cropped copies of one radiograph;
their pixels differ, so the exact-pixel groups miss them, but their pHashes are a few bits apart.
The hash is 256 bits (a 16x16 DCT block): chest radiographs all look alike at 64 bits (distinct
synthetic radiographs collide there), much less so at 256.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 16  # 16 x 16 = 256 bits
BITS = HASH_SIZE * HASH_SIZE


def phash(gray: np.ndarray) -> str:
    """pHash (256 bits, 64 hex digits) of an 8-bit grayscale image."""
    return str(imagehash.phash(Image.fromarray(gray, mode="L"), hash_size=HASH_SIZE))


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
