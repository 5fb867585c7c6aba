"""Apply a trained model to new images: a model folder (PyTorch) or an exported ONNX model.

Images go through exactly prepare's preprocessing (8-bit grayscale by the same rule, then PIL
bilinear resize to the training size) and the model's own normalisation; the probabilities are
the same as evaluate's on the same files (a test holds them equal). Files that cannot be read are
listed with index's reasons; images unlike the training data get a warning, not a refusal.

The ONNX path imports neither torch nor the training code: ONNX Runtime and Pillow suffice.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr_transfer.core.decision import decide
from cxr_transfer.core.errors import CxrError
from cxr_transfer.data.imageio import (
    IMAGE_EXTS,
    OS_FILES,
    Unreadable,
    file_problem,
    read_gray,
    shown,
)
from cxr_transfer.data.preprocess import Preprocess, preprocessed
from cxr_transfer.serve.onnx import Loaded, calibrated, load_onnx


def load_torch(model_dir: Path, device: str = "auto", batch_size: int = 64) -> Loaded:
    """A train stage's folder (model.json, best.pt); decisions by the argmax, as the export's."""
    from cxr_transfer.runtime.engine import pick_device, predict_proba
    from cxr_transfer.runtime.models import load_trained

    dev = pick_device(device, "--device")
    model, meta = load_trained(model_dir)
    try:
        steps = Preprocess.from_json(meta.preprocess)
    except ValueError as e:
        raise CxrError(f"{Path(model_dir) / 'model.json'}: preprocess {e} (re-run the train stage)") from None

    def proba(x):
        return predict_proba(model, meta.arch, meta.mean, meta.std, x, dev, batch_size).numpy()

    return Loaded(
        classes=meta.classes,
        image_size=meta.image_size,
        proba=proba,
        runtime="pytorch",
        bits_stored=meta.bits_stored,
        preprocess=steps,
        training_images=meta.training_images,
        torch_model_dir=Path(model_dir),
    )


def load_model(path, device: str = "auto", batch_size: int = 64) -> Loaded:
    path = Path(path)
    if path.suffix == ".onnx" and path.is_file():
        return load_onnx(path, batch_size)
    if (path / "model.onnx").is_file():
        return load_onnx(path / "model.onnx", batch_size)
    if (path / "model.json").is_file() and (path / "best.pt").is_file():
        return load_torch(path, device, batch_size)
    raise CxrError(
        f"--model {path}: neither a trained model folder (model.json + best.pt, e.g. "
        "models/<arch>-<mode>-s0) nor an exported model (model.onnx + card.json, e.g. exported/<arch>-<mode>)"
    )


def gather(inputs: list[str]) -> tuple[list[str], list[dict]]:
    """Files to predict (folders searched recursively, sorted) and those skipped before decoding,
    with index's reasons."""
    from cxr_transfer.data.dicom import is_dicom

    files, skipped = [], []

    def consider(p: Path) -> None:
        name = p.name.lower()
        if name.startswith(".") or name in OS_FILES:
            skipped.append({"path": shown(p), "skipped": "hidden or OS file"})
        elif problem := file_problem(p):
            skipped.append({"path": shown(p), "skipped": problem})
        elif p.suffix.lower() not in IMAGE_EXTS and not is_dicom(p):
            skipped.append({"path": shown(p), "skipped": f"not an image ({p.suffix or 'no extension'})"})
        else:
            files.append(str(p))

    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            for dirpath, dirnames, names in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for n in sorted(names):
                    consider(Path(dirpath) / n)
        elif p.is_file() or os.path.lexists(p):  # a broken link given by name is listed as skipped
            consider(p)
        else:
            raise CxrError(f"{arg}: no such file or folder")
    return files, skipped


def warnings_for(facts: dict, small: np.ndarray, ref: dict | None) -> list[str]:
    """Why an image may be unlike the training data (the model still scores it)."""
    out = []
    if facts.get("colour"):
        out.append("colour image (radiographs are grayscale; the colour was dropped)")
    lo, hi = np.percentile(small, [1, 99])
    if hi - lo < 10 or small.std() < 3:
        out.append(f"nearly blank image (1st-99th percentile {lo:.0f}-{hi:.0f} of 255)")
    if ref:
        w, h = facts["width"], facts["height"]
        if min(w, h) < 0.5 * ref["short_side_p05"]:
            out.append(
                f"much smaller than the training images ({w}x{h}; their shorter side: 5th percentile "
                f"{ref['short_side_p05']:.0f})"
            )
        a = w / h
        if not ref["aspect_p01"] / 1.25 <= a <= ref["aspect_p99"] * 1.25:
            lo_a, hi_a = ref["aspect_p01"], ref["aspect_p99"]
            out.append(f"aspect ratio {a:.2f} far from the training images' ({lo_a:.2f}-{hi_a:.2f})")
    return out


def read_one(path: str, model: Loaded, max_pixels: int) -> tuple[np.ndarray | None, dict]:
    """The resized image and its row (path, warning), or None and the skip reason."""
    try:
        gray, facts = read_gray(path, max_pixels, model.bits_stored)
    except Unreadable as e:
        return None, {"path": path, "skipped": str(e)}
    small = preprocessed(gray, model.image_size, model.preprocess)  # prepare's function
    return small, {"path": path, "warning": "; ".join(warnings_for(facts, small, model.training_images))}


def predict_files(model: Loaded, files: list[str], batch_size: int = 64, max_pixels: int = 50_000_000):
    """Rows for every file, scored in chunks with a progress bar; yields (rows, images) per chunk
    so a caller can draw Grad-CAM maps without holding every image."""
    from tqdm import tqdm

    from cxr_transfer.core.parallel import bar_off

    off = bar_off(len(files), 2 * batch_size)
    with tqdm(total=len(files), unit="img", desc="predict", disable=off) as bar:
        for i in range(0, len(files), batch_size):
            rows, imgs = [], []
            for f in files[i : i + batch_size]:
                small, row = read_one(f, model, max_pixels)
                rows.append(row)
                if small is not None:
                    imgs.append(small)
            if imgs:
                x = np.stack(imgs)
                p = model.proba(x)
                pred = np.asarray(model.classes)[decide(p)]  # the one rule, whichever runtime
                cal = calibrated(p, model.temperature) if model.temperature else None
                k = 0
                for row in rows:
                    if "skipped" in row:
                        continue
                    row.update(
                        {f"p_{c}": round(float(v), 6) for c, v in zip(model.classes, p[k], strict=True)}
                    )
                    if cal is not None:  # the card's temperature, fitted on the validation split
                        row.update(
                            {
                                f"p_{c}_calibrated": round(float(v), 6)
                                for c, v in zip(model.classes, cal[k], strict=True)
                            }
                        )
                    row["predicted"] = pred[k]
                    k += 1
            else:
                x = np.zeros((0, model.image_size, model.image_size), np.uint8)
            bar.update(len(rows))
            yield rows, x


def table(rows: list[dict], model: Loaded):
    """The output CSV's frame: path, p_<class> per class (the network's softmax), with a
    temperature on the card p_<class>_calibrated too, predicted, warning, skipped."""
    import pandas as pd

    cal = [f"p_{c}_calibrated" for c in model.classes] if model.temperature else []
    cols = ["path", *(f"p_{c}" for c in model.classes), *cal, "predicted"]
    df = pd.DataFrame(rows)
    extra = ["gradcam"] if "gradcam" in df else []
    for c in (*cols, "warning", "skipped"):
        if c not in df:
            df[c] = None
    blank = {"warning": "", "skipped": "", **dict.fromkeys(extra, "")}
    return df[[*cols, "warning", "skipped", *extra]].fillna(blank)
