"""Repeated training runs: the folder each run writes, and the spread of each figure over seeds.

One training run per mode answers "which is better" only up to the luck of its initialisation and
batch order; on small medical sets another seed moves accuracy by several points. Mode-vs-mode
verdicts over seeds combine that spread with the test set's noise (evaluate/verdicts.py).
"""

from __future__ import annotations

import statistics


def run_name(arch: str, mode: str, seed: int) -> str:
    """The folder of one training run: models/, dvclive/ and eval/ use it."""
    return f"{arch}-{mode}-s{seed}"


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def aggregate(headlines: list[dict]) -> dict:
    """One arch x mode's headline over its seeds: each figure's mean, and with more than one seed
    its sample standard deviation (`<figure>_std`) and the number of seeds. With one seed the
    headline is returned as it is, bootstrap intervals included; with more, the intervals of single
    runs are dropped (the spread over seeds replaces them)."""
    if len(headlines) == 1:
        return dict(headlines[0])
    out = {}
    for k, v in headlines[0].items():
        if k.endswith(("_ci_low", "_ci_high")):
            continue
        vals = [h[k] for h in headlines]
        if not _number(v) or any(x is None for x in vals):
            out[k] = v if not _number(v) else None
            continue
        if all(isinstance(x, int) and x == v for x in vals):  # a count every run shares (n_test)
            out[k] = v
            continue
        out[k] = round(statistics.fmean(vals), 6)
        out[f"{k}_std"] = round(statistics.stdev(vals), 6)
    out["seeds"] = len(headlines)
    return out
