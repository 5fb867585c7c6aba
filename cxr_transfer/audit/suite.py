"""Every shortcut probe in one call, as the probe stage writes them: the pixel and acquisition
baselines, Grad-CAM-free outside-the-lungs features per architecture (ImageNet weights only), the
near-duplicates across splits and the source confounding; with the flags they raise."""

from __future__ import annotations

import pandas as pd

from cxr_transfer.audit import probes
from cxr_transfer.core.params import Params
from cxr_transfer.runtime.engine import pick_device


def run_probes(
    p: Params, parts: dict[str, pd.DataFrame], train, test, classes: list[str]
) -> tuple[dict, pd.DataFrame]:
    """`parts`: the split tables; `train`, `test`: (images, labels) stores. Returns every probe's
    figures (metrics/probe.json) and the near-duplicate pairs listed."""
    cfg = p.probe
    (x_tr, y_tr), (x_te, y_te) = train, test
    if len(classes) == 2:  # the positive class against the other
        pos = classes.index(p.data.positive)
        y_tr, y_te = (y_tr == pos).astype(int), (y_te == pos).astype(int)
    groups = parts["test"]["group"].to_numpy()

    def score(p_test):
        return probes.scored(y_te, p_test, groups, cfg.bootstrap, cfg.seed, cfg.confidence, cfg.flag_auroc)

    out = probes.baselines(x_tr, y_tr, x_te, y_te, parts["train"], parts["test"], cfg.thumbnails, score)
    device = pick_device(p.train.device)
    if p.weights.source == "imagenet":
        out["outside_lungs"] = {}
        for arch in p.archs:
            extract = probes.feature_extractor(arch, p.weights.dir, device)
            out["outside_lungs"][arch] = probes.outside_lungs(extract, x_tr, y_tr, x_te, cfg.box, score)
    near, pairs = probes.near_duplicate_report(
        parts, p.probe.near_duplicate_bits, p.probe.near_duplicate_framed_bits
    )
    near["split_join_bits"] = [p.split.near_duplicate_bits, p.split.near_duplicate_framed_bits]
    out["near_duplicates"] = near
    out["source"] = probes.source_probe(pd.concat(parts.values(), ignore_index=True), cfg.flag_cramers_v)
    flags = [k for k, v in out.items() if v.get("flagged")]
    flags += [f"outside_lungs.{a}" for a, v in out.get("outside_lungs", {}).items() if v["flagged"]]
    out["n_flagged"], out["flagged"] = len(flags), sorted(flags)
    out["flag_auroc"], out["flag_cramers_v"], out["box"] = cfg.flag_auroc, cfg.flag_cramers_v, cfg.box
    if len(classes) > 2:  # multinomial probes: the AUROCs are one-vs-rest, averaged over the classes
        out["auroc_average"] = f"macro one-vs-rest over {len(classes)} classes"
    return out, pairs
