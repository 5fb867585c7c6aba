"""Stage report: every arch x mode compared over its seeds (table, statistics, plots, Grad-CAM grids,
the offline page); cxr_transfer.report.build does the work."""

from cxr_transfer.report.webpage import Bundle

BUNDLE = Bundle() if __name__ == "__main__" else None  # built on the other core while torch imports

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from cxr_transfer.core.cli import run  # noqa: E402
from cxr_transfer.core.params import load_params  # noqa: E402
from cxr_transfer.report.build import ReportPaths, build_report  # noqa: E402
from cxr_transfer.runtime.speed import keep_freed_memory  # noqa: E402

ARGS = {  # --name: (default, help)
    "params": ("params.yaml", "the params file"),
    "prepared": ("data/prepared", "prepare's folder (test/ is read for Grad-CAM)"),
    "out-metrics": ("metrics", "summary.md/.csv, compare.json, gradcam_share.json, external.json"),
    "modes-metrics": ("metrics/modes", "headline per arch-mode (over seeds)"),
    "plots": ("plots", "plot data and PNGs"),
    "eval": ("eval", "evaluate stages' folders"),
    "live": ("dvclive", "train stages' DVCLive folders"),
    "models": ("models", "train stages' folders"),
    "probe": ("metrics/probe.json", "the probe stage's figures"),
    "index-report": ("metrics/index_report.json", "the index stage's report"),
    "split-report": ("metrics/split.json", "the split stage's report"),
    "html": ("report/index.html", "the offline report page"),
    "plots-template": ("report/dvc_plots_template.html", "offline template for `dvc plots show`"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for name, (default, help_) in ARGS.items():
        ap.add_argument(f"--{name}", type=Path, default=Path(default), help=help_)
    paths = ReportPaths(**vars(ap.parse_args()))
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.runtime.speed)
    print(build_report(load_params(paths.params), paths, BUNDLE or Bundle()))


if __name__ == "__main__":
    run(main, "report")
