"""Map a function over a list in chunks, in worker processes, in order, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm


def bar_off(n: int, least: int = 4) -> bool | None:
    """tqdm's `disable` for a loop of n steps: off for a few steps, and (None) off whenever the
    output is not a terminal, so a `dvc repro` log holds the stages' lines, not bar redraws."""
    return True if n < least else None


def chunked_map(fn: Callable, items: list, extra: tuple, workers: int, desc: str) -> Iterator:
    """Yield fn((chunk, *extra)) for consecutive chunks of `items`, in order.

    workers 0 = one process per CPU core; a single chunk or worker runs in this process."""
    workers = workers or os.cpu_count() or 1
    step = max(1, min(64, -(-len(items) // (4 * workers))))
    chunks = [(items[i : i + step], *extra) for i in range(0, len(items), step)]
    off = bar_off(len(items), 2)
    with tqdm(total=len(items), desc=desc, unit="img", mininterval=1.0, disable=off) as bar:
        if workers == 1 or len(chunks) <= 1:
            for c in chunks:
                yield fn(c)
                bar.update(len(c[0]))
            return
        with ProcessPoolExecutor(workers) as pool:
            for c, res in zip(chunks, pool.map(fn, chunks), strict=True):
                yield res
                bar.update(len(c[0]))
