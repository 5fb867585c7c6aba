"""The report stage's work: every arch x mode compared over its seeds (or folds) and external
sites, written as metrics (summary.md/.csv, compare.json, modes/), plot data, PNGs and the page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_transfer.core.cli import write_csv, write_json, write_text
from cxr_transfer.core.params import ModeConfig, Params
from cxr_transfer.evaluate import compare, crossval, external
from cxr_transfer.evaluate.compare import check_same_images
from cxr_transfer.evaluate.seeds import aggregate, run_name
from cxr_transfer.evaluate.verdicts import FoldAverage, Scored, jsonable
from cxr_transfer.report import summary
from cxr_transfer.report.outputs import write_gradcam, write_pages, write_plots
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.models import equivalent_modes, get_spec


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
    figures, auroc_key = summary.figures_for(len(classes))
    keys, boot = (auroc_key, "accuracy"), (cfg.bootstrap, cfg.seed, cfg.confidence)
    runs = {f"{a}-{m}": [run_name(a, m, s) for s in seeds] for a in p.archs for m in p.train.modes}
    first = {n: rs[0] for n, rs in runs.items()}  # plots, curves and Grad-CAM show the first seed's run
    full, heads, preds_all = (
        {n: [read(paths.eval / r) for r in rs] for n, rs in runs.items()} for read in READERS
    )
    preds = {n: ps[0] for n, ps in preds_all.items()}
    check_same_images(
        {f"{n} (run {i})": list(d["path"]) for n, ps in preds_all.items() for i, d in enumerate(ps)}
    )
    scored = {
        n: {s: internal_view(d, classes, p.data.positive) for s, d in zip(seeds, ps, strict=True)}
        for n, ps in preds_all.items()
    }
    groups = next(iter(preds.values()))["group"].to_numpy()
    folds = full[next(iter(full))][0].get("folds")  # k-fold runs: the per-fold figures of each
    per_fold = {n: crossval.by_run(seeds, full[n]) for n in full} if folds else None
    pairs = compare.compare_modes(scored, groups, keys, boot, per_fold)
    aggregated = {n: aggregate(hs) for n, hs in heads.items()}
    best = compare.best_modes(
        pairs, list(runs), auroc_key, {n: a.get(auroc_key) for n, a in aggregated.items()}
    )
    own = compare.figure_intervals(scored, groups, keys, boot, per_fold)
    notes = same_mode_notes(paths.models, first)
    current = {r for rs in runs.values() for r in rs}
    stale = summary.stale_runs({"eval": paths.eval, "dvclive": paths.live}, current)
    if stale:
        notes.append(
            f"{', '.join(stale)}: left by an earlier run that params.yaml no longer asks for (archs, "
            "train.modes or train.seeds); not part of these results (delete them: git rm -r)."
        )
    probe = json.loads(paths.probe.read_text())
    unit = summary.resampling_unit(groups)
    answer = compare.answer_lines(pairs, best, keys, summary.flagged_probes(probe), unit)
    sites, shortcut = external_results(paths, p, runs, scored, best, auroc_key)
    paths.modes_metrics.mkdir(parents=True, exist_ok=True)
    (paths.out_metrics / "intervals").mkdir(parents=True, exist_ok=True)
    for n, a in aggregated.items():  # the lean headline (a DVC metric) and its intervals beside it
        write_json(paths.modes_metrics / f"{n}.json", a)
        write_json(paths.out_metrics / "intervals" / f"{n}.json", interval_file(own[n], sites, n, keys))
    if sites:
        answer += ["**On images from another site:**", "", *external.answer_lines(sites, auroc_key)]
    table = summary.summary_table(full, figures, auroc_key, best_marks(best, sites))
    write_csv(table, paths.out_metrics / "summary.csv")
    curves = write_plots(paths, p, runs, first, preds, {n: ms[0] for n, ms in full.items()})
    shares = write_gradcam(paths, p, first, preds)
    md = summary.summary_markdown(
        table, compare.table_lines(pairs, keys), notes, probe, answer, figures, auroc_key, unit
    )
    if folds:
        head, sep, tail = md.partition("## Mode against mode (same test images")
        md = (
            head
            + "\n".join(crossval.markdown(full, auroc_key, fold_sources(paths)))
            + "\n"
            + sep
            + ", out of fold"
            + tail
        )
        md = md.replace(
            "# Results on the test split", f"# Results out of fold ({folds['k']}-fold cross-validation)", 1
        )
    if sites:
        head, sep, tail = md.partition("## Mode against mode")
        md = head + "\n".join(external.markdown(sites, auroc_key, unit)) + "\n" + sep + tail
        head, sep, tail = md.partition("## The results")
        lead = "**At the external sites** (do the shortcut baselines carry over?):"
        md = head + "\n".join([lead, "", *shortcut, "", ""]) + sep + tail
    md += summary.gradcam_share_lines(shares, p.probe.box, classes, p.data.positive)
    write_text(paths.out_metrics / "summary.md", md)
    write_json(paths.out_metrics / "compare.json", {"pairs": compare.as_json(pairs), "best": best})
    write_json(paths.out_metrics / "gradcam_share.json", shares)
    skipped = {e.name: why for e in p.external if (why := skipped_site(paths.eval / "external" / e.name))}
    at_sites = {
        "sites": jsonable(sites),
        "shortcut_baselines": shortcut,
        **({"skipped": skipped} if skipped else {}),
    }
    write_json(paths.out_metrics / "external.json", at_sites)
    write_pages(paths, p, md, curves, first, shares, bundle)
    return md


def interval_file(own: dict, sites: list[dict], name: str, keys) -> dict:
    """metrics/intervals/<arch>-<mode>.json, beside the headline in metrics/modes (which stays lean,
    so `dvc metrics show` fits a terminal), what `cxr-transfer experiments` reads from each
    experiment's commit: each of `keys` with its point and interval (the verdict procedure's:
    `<figure>`, `<figure>_ci_low`, `<figure>_ci_high`), and per external site the same figures
    there (`external.<site>`)."""
    out = {key: _r(own[key].point) for key in keys}
    for key in keys:
        iv = own[key]
        out |= {f"{key}_ci_low": _r(iv.lo), f"{key}_ci_high": _r(iv.hi)}
    at = {}
    for s in sites:
        run = s["runs"].get(name)
        if run is None:
            continue
        at[s["name"]] = {}
        for key in keys:
            iv = run[key]["external_interval"]
            at[s["name"]] |= {key: _r(iv.point), f"{key}_ci_low": _r(iv.lo), f"{key}_ci_high": _r(iv.hi)}
    return out | ({"external": at} if at else {})


def fold_sources(paths) -> list[str] | None:
    """The sources that were folds, in fold order (leave-one-source-out), from metrics/split.json."""
    f = paths.out_metrics / "split.json"
    folds = json.loads(f.read_text()).get("folds") if f.exists() else None
    by = (folds or {}).get("by_source")
    return [by["folds"][f"f{i}"] for i in range(len(by["folds"]))] if by else None


def _r(v):
    return None if v is None else round(float(v), 6)


def internal_view(pred: pd.DataFrame, classes: list[str], positive):
    """A run's scores on the internal test set: one model's, or with k folds (a `fold` column) the
    mean over fold models of each one's figure on its own test part."""
    if "fold" not in pred:
        return Scored.of(pred, classes, positive)
    parts = []
    for f in sorted(pred["fold"].unique()):
        rows = np.flatnonzero(pred["fold"].to_numpy() == f)
        parts.append((Scored.of(pred.iloc[rows], classes, positive), rows))
    return FoldAverage(tuple(parts), len(pred))


def external_view(folder: Path, classes: list[str], positive):
    """A run's scores on an external set: its model's, or with k folds every fold model's
    (folder/fold<i>/), averaged figure by figure."""
    subs = [folder, *sorted(folder.glob("fold*"), key=lambda q: int(q.name[4:]))]
    parts = [(Scored.of(pd.read_csv(q / "predictions.csv"), classes, positive), None) for q in subs]
    return parts[0][0] if len(parts) == 1 else FoldAverage(tuple(parts), len(parts[0][0].y))


def skipped_site(folder: Path) -> str | None:
    """Why external_eval skipped a site (its skipped.json: the demo's site with a user's data)."""
    f = folder / "skipped.json"
    return json.loads(f.read_text())["skipped"] if f.exists() else None


READERS = (
    lambda d: json.loads((d / "metrics.json").read_text()),
    lambda d: json.loads((d / "headline.json").read_text()),
    lambda d: pd.read_csv(d / "predictions.csv"),
)


def best_marks(best: dict, sites: list[dict]) -> dict[str, str]:
    """The results table's mark per run name: "best" with its level where the intervals support
    one, and the sites where another mode is shown ahead of it."""
    marks = {}
    for arch, b in best.items():
        if not b["best"]:
            continue
        behind = [
            f"behind {', '.join(r['ahead_at_site'])} at {s['name']}"
            for s in sites
            if (r := s["ranking"].get(arch)) and r["ahead_at_site"]
        ]
        where = "best internally" if behind else "best"
        marks[f"{arch}-{b['best']}"] = "; ".join([f"{where}, {b['level']}", *behind])
    return marks


def same_mode_notes(models: Path, runs: dict[str, str]) -> list[str]:
    """A line for each mode that trains exactly what another shown mode trains on its arch."""
    notes = []
    by_arch: dict[str, dict[str, ModeConfig]] = {}
    for name, run_dir in runs.items():
        arch, _, mode = name.rpartition("-")
        by_arch.setdefault(arch, {})[mode] = ModeConfig.from_json(
            ModelInfo.read(models / run_dir).mode_config
        )
    for arch, cfgs in by_arch.items():
        for m, other in equivalent_modes(get_spec(arch), cfgs).items():
            notes.append(
                f"{arch}-{m} trains exactly what {arch}-{other} trains (on {arch} the classifier block "
                "is the last layer): the two rows are one result, not two."
            )
    return notes


def external_results(
    paths, p, runs: dict, scored: dict, best: dict, figure: str
) -> tuple[list[dict], list[str]]:
    """Each external set against the internal test set (every seed's runs): figures, drops,
    the leader's standing there, and whether the probes' baselines and the leading CNN keep
    their margin over chance."""
    sites, lines = [], []
    classes, cfg = list(p.data.classes), p.evaluate
    first_run = next(iter(runs.values()))[0]
    groups = pd.read_csv(paths.eval / first_run / "predictions.csv")["group"].to_numpy()
    for e in p.external:
        if skipped_site(paths.eval / "external" / e.name):  # not this data's site (external_eval said why)
            continue
        folder = paths.eval / "external" / e.name
        ext = {
            n: {
                s: external_view(folder / r, classes, p.data.positive)
                for s, r in zip(p.train.seeds, rs, strict=True)
            }
            for n, rs in runs.items()
        }
        groups = pd.read_csv(paths.eval / next(iter(runs.values()))[0] / "predictions.csv")[
            "group"
        ].to_numpy()
        ext_groups = pd.read_csv(folder / first_run / "predictions.csv")["group"].to_numpy()
        site = external.site_verdicts(
            e.name,
            scored,
            ext,
            (groups, ext_groups),
            best,
            figure,
            (cfg.bootstrap, cfg.seed, cfg.confidence),
            classes,
            p.data.positive,
        )
        sites.append(site)
        base = json.loads((folder / "baselines.json").read_text())
        arch, b = next(iter(best.items()))
        cnn = f"{arch}-{b['best'] or b['leader']}"
        lines.append(external.shortcut_line(e.name, base, cnn, site["runs"].get(cnn), figure))
    return sites, lines
