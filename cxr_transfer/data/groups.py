"""Split groups as connected components: images that share a patient, or the same pixels (or, as
one more edge type, near-identical pixels), can never be separated by the split.

A group is a connected component of the graph whose edges are "same key" for each key column
given; union-find keeps it linear in the number of images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = np.arange(n)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return int(i)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def union_pairs(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Join explicit pairs (e.g. near-duplicates found by a perceptual-hash search)."""
        for a, b in pairs:
            self.union(int(a), int(b))

    def union_by_key(self, keys: Sequence) -> None:
        """Join every two items with the same key; None/NaN/'' keys join nothing."""
        first: dict = {}
        for i, k in enumerate(keys):
            if k is None or k != k or k == "":  # k != k: NaN from pandas
                continue
            j = first.setdefault(k, i)
            if j != i:
                self.union(i, j)

    def labels(self) -> np.ndarray:
        """Component root of every item."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def group_names(keys: dict[str, Sequence], pairs: Iterable[tuple[int, int]] = ()) -> list[str]:
    """One name per item for the components of "same value in any key column" plus `pairs`.

    `keys` maps a prefix ("patient", "img"; "" for none) to a column of values; a component is named by the
    first column (in `keys` order) that has a value in it, and the smallest such value, so names
    are stable under reordering of the rows."""
    cols = list(keys.items())
    n = len(cols[0][1]) if cols else 0
    uf = UnionFind(n)
    for _, col in cols:
        uf.union_by_key(col)
    uf.union_pairs(pairs)
    roots = uf.labels()
    best: dict[int, tuple[int, str]] = {}
    for rank, (prefix, col) in enumerate(cols):
        for i, k in enumerate(col):
            if k is None or k != k or k == "":
                continue
            cand = (rank, f"{prefix}:{k}" if prefix else str(k))
            r = int(roots[i])
            if r not in best or cand < best[r]:
                best[r] = cand
    return [best[int(r)][1] if int(r) in best else f"item:{i}" for i, r in enumerate(roots)]
