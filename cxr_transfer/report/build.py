"""The report stage's work: every arch x mode compared over its seeds (or folds) and external
sites, written as metrics (summary.md/.csv, compare.json, modes/), plot data, PNGs and the page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr_transfer.core.cli import write_csv, write_json, write_text
from cxr_transfer.core.params import ModeConfig, Params
from cxr_transfer.evaluate import crossval
from cxr_transfer.evaluate import external as EXT
from cxr_transfer.evaluate.seeds import aggregate, answer_lines, paired_over_seeds, run_name
from cxr_transfer.report import summary as R
from cxr_transfer.report.outputs import write_gradcam, write_pages, write_plots
from cxr_transfer.train.card import ModelInfo
from cxr_transfer.train.models import equivalent_modes, get_spec


@dataclass(frozen=True)
class ReportPaths:
    """Where the report reads (eval/, dvclive/, models/, the probe's and index's reports) and writes."""

    params: Path
    prepared: Path
    out_metrics: Path
    modes_metrics: Path
    plots: Path
    eval: Path
    live: Path
    models: Path
    probe: Path
    index_report: Path
    split_report: Path
    html: Path
    plots_template: Path


def build_report(p: Params, paths: ReportPaths, bundle) -> str:
    """Write every report output; returns summary.md's text. `bundle`: the page's Vega bundle
    (webpage.Bundle, possibly still building in another process)."""
    seeds, cfg = p.train.seeds, p.evaluate
    classes = list(p.data.classes)
    figures, auroc_key = R.figures_for(len(classes))
    runs = {f"{a}-{m}": [run_name(a, m, s) for s in seeds] for a in p.archs for m in p.train.modes}
    first = {n: rs[0] for n, rs in runs.items()}  # plots, curves and Grad-CAM show the first seed's run
    full = {
        n: [json.loads((paths.eval / r / "metrics.json").read_text()) for r in rs] for n, rs in runs.items()
    }
    heads = {
        n: [json.loads((paths.eval / r / "headline.json").read_text()) for r in rs] for n, rs in runs.items()
    }
    preds = {n: pd.read_csv(paths.eval / r / "predictions.csv") for n, r in first.items()}
    compare = R.compare_modes(preds, p.data.positive, cfg.bootstrap, cfg.seed, cfg.confidence, classes)
    over = {}
    folds = full[next(iter(full))][0].get("folds")  # k-fold runs: the per-fold figures of each
    if folds:
        for pair in compare:
            a, b = (crossval.by_run(seeds, full[n]) for n in pair.split(" vs "))
            over[pair] = crossval.paired_over_folds(a, b, ("accuracy", auroc_key), cfg.confidence)
            compare[pair]["over_folds"] = over[pair]
    elif len(seeds) > 1:
        for pair in compare:
            a, b = (dict(zip(seeds, heads[n], strict=True)) for n in pair.split(" vs "))
            over[pair] = paired_over_seeds(a, b, ("accuracy", auroc_key), cfg.confidence)
            compare[pair]["over_seeds"] = over[pair]
    paths.modes_metrics.mkdir(parents=True, exist_ok=True)
    for n, hs in heads.items():
        write_json(paths.modes_metrics / f"{n}.json", aggregate(hs))
    table = R.summary_table(full, figures, auroc_key)
    write_csv(table, paths.out_metrics / "summary.csv")
    notes = same_mode_notes(paths.models, first)
    current = {r for rs in runs.values() for r in rs}
    stale = R.stale_runs({"eval": paths.eval, "dvclive": paths.live}, current)
    if stale:
        notes.append(
            f"{', '.join(stale)}: left by an earlier run that params.yaml no longer asks for (archs, "
            "train.modes or train.seeds); not part of these results (delete them: git rm -r)."
        )
    probe = json.loads(paths.probe.read_text())
    unit = R.resampling_unit(next(iter(preds.values()))["group"])
    k = folds["k"] if folds else None
    answer = answer_lines(compare, over, len(seeds), R.flagged_probes(probe), auroc_key, unit, k)
    sites, shortcut = external_results(paths, p, first, preds, probe)
    if sites:
        answer += ["**On images from another site:**", "", *EXT.answer_lines(sites)]
    curves = write_plots(paths, p, runs, first, preds, {n: ms[0] for n, ms in full.items()})
    shares = write_gradcam(paths, p, first, preds)
    md = R.summary_markdown(table, compare, notes, probe, answer, figures, auroc_key, unit)
    if folds:
        head, sep, tail = md.partition("## Mode against mode (same test images")
        md = head + "\n".join(crossval.markdown(full, auroc_key)) + "\n" + sep + ", pooled out of fold" + tail
        md = md.replace(
            "# Results on the test split", f"# Results out of fold ({folds['k']}-fold cross-validation)", 1
        )
    if sites:
        head, sep, tail = md.partition("## Mode against mode")
        md = head + "\n".join(EXT.markdown(sites, unit)) + "\n" + sep + tail
        head, sep, tail = md.partition("## The results")
        lead = "**At the external sites** (do the shortcut baselines carry over?):"
        md = head + "\n".join([lead, "", *shortcut, "", ""]) + sep + tail
    md += R.gradcam_share_lines(shares, p.probe.box, classes, p.data.positive)
    write_text(paths.out_metrics / "summary.md", md)
    write_json(paths.out_metrics / "compare.json", compare)
    write_json(paths.out_metrics / "gradcam_share.json", shares)
    write_json(paths.out_metrics / "external.json", {"sites": sites, "shortcut_baselines": shortcut})
    write_pages(paths, p, md, curves, first, shares, bundle)
    return md


def same_mode_notes(models: Path, runs: dict[str, str]) -> list[str]:
    """A line for each mode that trains exactly what another shown mode trains on its arch."""
    notes = []
    by_arch: dict[str, dict[str, ModeConfig]] = {}
    for name, run_dir in runs.items():
        arch, _, mode = name.rpartition("-")
        by_arch.setdefault(arch, {})[mode] = ModeConfig(**ModelInfo.read(models / run_dir).mode_config)
    for arch, cfgs in by_arch.items():
        for m, other in equivalent_modes(get_spec(arch), cfgs).items():
            notes.append(
                f"{arch}-{m} trains exactly what {arch}-{other} trains (on {arch} the classifier block "
                "is the last layer): the two rows are one result, not two."
            )
    return notes


def external_results(paths, p, first: dict, preds: dict, probe: dict) -> tuple[list[dict], list[str]]:
    """Each external set against the internal test set (the first seed's runs): figures, drops,
    rankings, and whether the probes' baselines and the best internal CNN carry over."""
    sites, lines = [], []
    classes, cfg = list(p.data.classes), p.evaluate
    best = max(first, key=lambda n: (preds[n]["predicted"] == preds[n]["class"]).mean())  # internal winner
    for e in p.external:
        folder = paths.eval / "external" / e.name
        ext = {n: pd.read_csv(folder / r / "predictions.csv") for n, r in first.items()}
        site = EXT.compare_sites(
            e.name,
            len(next(iter(ext.values()))),
            preds,
            ext,
            classes,
            p.data.positive,
            (cfg.bootstrap, cfg.seed, cfg.confidence),
        )
        sites.append(site)
        base = json.loads((folder / "baselines.json").read_text())
        r = site["runs"][best]
        lines.append(
            EXT.shortcut_line(e.name, probe, base, best, r["internal"]["auroc"], r["external"]["auroc"])
        )
    return sites, lines
