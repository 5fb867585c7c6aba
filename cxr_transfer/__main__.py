"""cxr-transfer's command line: `cxr-transfer predict ...` (or `python -m cxr_transfer predict ...`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

START = time.perf_counter()


def predict(args) -> None:
    from cxr_transfer.core.cli import write_csv
    from cxr_transfer.core.errors import CxrError
    from cxr_transfer.serve.predict import gather, load_model, predict_files, table

    if args.batch_size < 1:
        raise CxrError(f"--batch-size {args.batch_size}: must be >= 1")
    model = load_model(args.model, args.device, args.batch_size)
    if args.gradcam and model.torch_model_dir is None:
        raise CxrError("--gradcam needs the PyTorch model folder (models/<arch>-<mode>-s<seed>), not ONNX")
    files, skipped = gather(args.inputs)
    loaded = time.perf_counter() - START
    rows, n = [], 0
    draw = _gradcam_writer(model, args.gradcam) if args.gradcam else None
    for chunk, x in predict_files(model, files, args.batch_size, args.max_pixels):
        rows += chunk
        if draw:
            draw([r for r in chunk if "skipped" not in r], x, n)
        n += len(x)
    df = table(rows + skipped, model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(df, args.out)
    bad = df["skipped"] != ""
    warned = (df["warning"] != "") & ~bad
    total = time.perf_counter() - START
    print(
        f"predict: {int((~bad).sum())} images scored with {model.runtime} "
        f"({', '.join(model.classes)}), {int(warned.sum())} with a warning, {int(bad.sum())} skipped "
        f"-> {args.out}; start-up {loaded:.2f} s, total {total:.2f} s"
    )
    for reason, k in df.loc[bad, "skipped"].str.split(":").str[0].value_counts().items():
        print(f"  skipped {k}: {reason}", file=sys.stderr)
    if not (~bad).any():
        what = f"all {len(df)} files were skipped (reasons in {args.out})" if len(df) else "no files found"
        raise CxrError(f"no image could be scored: {what}")


def _gradcam_writer(model, folder: Path):
    """A function drawing each scored image's Grad-CAM toward its predicted class."""
    from PIL import Image

    from cxr_transfer.audit.cams import CamModel
    from cxr_transfer.audit.gradcam import overlay

    trained = CamModel(model.torch_model_dir)
    folder.mkdir(parents=True, exist_ok=True)

    def draw(rows, x, start):
        if not len(x):
            return
        targets = [model.classes.index(r["predicted"]) for r in rows]
        cams = trained.maps(x, targets)
        for i, (r, img, cam) in enumerate(zip(rows, x, cams, strict=True)):
            name = f"{start + i:05d}-{Path(r['path']).stem}.png"
            Image.fromarray(overlay(img, cam)).save(folder / name)
            r["gradcam"] = str(folder / name)

    return draw


def main(argv=None) -> None:
    from cxr_transfer.core.cli import run

    ap = argparse.ArgumentParser(prog="cxr-transfer", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_experiments(sub)
    args, rest = ap.parse_known_args(argv)
    if args.command == "experiments":
        from cxr_transfer.report.experiments import show

        run(lambda: print(show(args.figures, rest, args.against, args.modes, args.intervals)), args.command)
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    run(lambda: predict(args), args.command)


def _add_experiments(sub) -> None:
    p = sub.add_parser(
        "experiments",
        help="the DVC experiment table, narrow: changed params and each mode's headline figures",
        description="One row per experiment (what `dvc exp show` lists): the params that differ between "
        "the rows and, per arch x mode, the chosen figures. Other arguments go to `dvc exp show` "
        "(e.g. -A for every commit, -n 5).",
    )
    p.add_argument(
        "--figures",
        nargs="+",
        default=["accuracy", "auroc"],
        help="headline keys to show per mode (accuracy auroc; auroc_macro for more than two classes)",
    )
    p.add_argument("--modes", nargs="+", help="only these modes' columns and comparisons (default: all)")
    p.add_argument(
        "--intervals",
        action="store_true",
        help="each figure with its interval (metrics/intervals/, from each experiment's commit), and the "
        "same figures at each external site",
    )
    p.add_argument(
        "--against",
        nargs="?",
        const="",
        metavar="EXPERIMENT",
        help="also set each experiment's modes against this row's (default: the baseline commit's), on "
        "the same images, paired by seed, with Bonferroni intervals over every comparison (AUROC)",
    )


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="score new images with a trained or exported model",
        description="Score images with a trained model folder (models/<arch>-<mode>-s<seed>, PyTorch) or an "
        "exported one (exported/<arch>-<mode>/ or its model.onnx: ONNX Runtime, no torch).",
    )
    p.add_argument("inputs", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--model", required=True, help="a model folder, an export folder or a model.onnx")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write (predictions.csv)")
    p.add_argument("--gradcam", type=Path, help="folder for one Grad-CAM overlay per image (PyTorch models)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (PyTorch models)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-pixels", type=int, default=50_000_000, help="larger images are skipped")


if __name__ == "__main__":
    main()
