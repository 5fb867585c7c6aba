"""ONNX export of a trained model, its parity with PyTorch, and the model card beside it.

The graph takes what prepare stores, uint8 (B, 1, S, S) images, and returns class probabilities:
the normalisation and the softmax are inside it, so a user of the file needs no code of ours,
only the card's preprocessing (8-bit grayscale, PIL bilinear resize to S x S).
"""

from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_transfer.batches import Normalizer
from cxr_transfer.errors import CxrError

PARITY_LIMIT = 1e-4  # max |P_onnxruntime - P_pytorch| on the test store; more fails the stage
TRAINED = ("best_epoch", "epochs_run", "train_seconds", "device", "precision")
VERSIONED = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "numpy", "pillow")


class Probabilities(nn.Module):
    """uint8 (B, 1, S, S) -> (B, K) probabilities: the model with its normalisation and softmax."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.norm, self.model = Normalizer(mean, std), model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.norm(x)).softmax(1)


def export_onnx(wrapped: nn.Module, image_size: int, path: Path) -> str:
    """Write `wrapped` to `path` with a dynamic batch and check it with onnx.checker; returns the
    exporter used. TorchScript's exporter first: it takes 1.0-1.4 s for EfficientNet-Lite0 or
    DenseNet-121 where the dynamo exporter takes 11-16 s (2 CPU cores); it cannot export an
    adaptive pooling whose output does not divide its input (VGG below 224 px), which the dynamo
    exporter can."""
    import onnx

    wrapped = wrapped.eval().cpu()
    x = torch.zeros(2, 1, image_size, image_size, dtype=torch.uint8)
    names = {"input_names": ["image"], "output_names": ["probabilities"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(
            wrapped,
            (x,),
            str(path),
            dynamo=False,
            opset_version=17,
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            **names,
        )
        how = "torch.onnx (TorchScript), opset 17"
    except Exception as first:  # noqa: BLE001 - any failure of the old exporter: try the new one
        try:
            prog = torch.onnx.export(
                wrapped,
                (x,),
                dynamo=True,
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                verbose=False,
                **names,
            )
            prog.save(str(path))
        except Exception as second:  # noqa: BLE001
            raise CxrError(f"ONNX export failed: TorchScript: {first}; dynamo: {second}") from second
        how = "torch.onnx (dynamo)"
    onnx.checker.check_model(str(path))
    return how


def parity(onnx_path: Path, wrapped: nn.Module, x: np.ndarray, batch_size: int = 64) -> dict:
    """ONNX Runtime (CPU) against PyTorch (CPU, float32) on every image of a store: the largest
    absolute difference of any probability, and each runtime's images/s (after one warm batch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    wrapped = wrapped.eval().cpu()
    x = np.array(np.asarray(x)[:, None])  # a writable copy: the store is a read-only memory map

    def ort_run(b):
        return sess.run(None, {"image": b})[0]

    def torch_run(b):
        with torch.no_grad():
            return wrapped(torch.from_numpy(b)).numpy()

    out, speed = {}, {}
    for name, fn in (("onnxruntime", ort_run), ("pytorch", torch_run)):
        fn(x[:batch_size])
        t = time.perf_counter()
        out[name] = np.concatenate([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        speed[name] = len(x) / (time.perf_counter() - t)
    diff = float(np.abs(out["onnxruntime"] - out["pytorch"]).max()) if len(x) else 0.0
    return {
        "images": len(x),
        "max_abs_diff": diff,
        "limit": PARITY_LIMIT,
        "onnxruntime_images_per_s": round(speed["onnxruntime"], 1),
        "pytorch_images_per_s": round(speed["pytorch"], 1),
    }


def versions(packages=VERSIONED) -> dict[str, str]:
    """Python's version and each installed package's (None where it is not installed)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def card(meta: dict, head: dict, full: dict, probe: dict | None, positive, check: dict, how: str) -> dict:
    """What someone receiving model.onnx needs to use it correctly: classes and input, the
    preprocessing, the decision rule, the test figures with intervals, the shortcut probes'
    verdicts, where the training data came from, the parameters and the software."""
    classes, size = meta["classes"], meta["image_size"]
    binary = len(classes) == 2
    youden = full.get("youden", {})
    decision = (
        {
            "rule": f"{positive} when P({positive}) >= threshold",
            "threshold": youden.get("threshold"),
            "chosen_on": "the validation split, maximising sensitivity + specificity (Youden's J)",
            "test_metrics_at_threshold": {k: v for k, v in youden.items() if k != "threshold"},
        }
        if binary and youden.get("threshold") is not None
        else {"rule": "the class of highest probability (argmax)", "threshold": None}
    )
    return {
        "model": f"{meta['arch']}-{meta['mode']}",
        "arch": meta["arch"],
        "mode": meta["mode"],
        "seed": meta.get("seed"),
        "classes": classes,
        "positive": positive,
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 1, size, size]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(classes)]},
        "preprocessing": {
            "image_size": size,
            "steps": [
                "decode (PNG, JPEG, TIFF..., DICOM with its Modality and VOI LUTs, MONOCHROME1 inverted)",
                "8-bit grayscale (16-bit images: full range of bits_stored bits, else the file's 16)",
                f"resize to {size}x{size}, PIL bilinear (antialiased when shrinking), aspect not kept",
            ],
            "bits_stored": meta.get("bits_stored"),
            "normalisation_in_graph": {"scale": "1/255", "mean": meta["mean"], "std": meta["std"]},
        },
        "decision": decision,
        "test_metrics": head,
        "test_intervals": {k: full["ci"][k] for k in head if full.get("ci", {}).get(k)},
        "test_metrics_note": "this run's figures on the test split (eval/<run>/headline.json; with one "
        "seed also metrics/modes/<arch>-<mode>.json); intervals: "
        f"{round(100 * full.get('ci_level', 0.95))}% bootstrap over patients, or images without a "
        "patient table (eval/<run>/metrics.json holds every figure)",
        "calibration": {
            k: full.get("calibration", {}).get(k) for k in ("temperature", "ece_before", "ece_after")
        },
        "probes": None
        if probe is None
        else {
            "flagged": probe.get("flagged", []),
            "n_flagged": probe.get("n_flagged"),
            "figures": {k: v for k, v in probe.items() if isinstance(v, dict)},
        },
        "training_data": {
            "store_sha1": meta.get("data_sha1"),
            "training_images": meta.get("training_images"),
        },
        "params": {"mode": meta.get("mode_config"), **{k: meta.get(k) for k in ("train", "weights")}},
        "trained": {k: meta.get(k) for k in TRAINED},
        "exporter": how,
        "parity": check,
        "versions": versions(),
        "exported_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "intended_use": "research on chest radiographs like the training data; not a medical device",
        "cross_validation": _cv_block(meta, full),
    }


def _cv_block(meta: dict, full: dict) -> dict | None:
    """With k folds, what the card's figures are: pooled out of fold over the k models (this file
    is fold 0's, trained on fold 0's training part), with fold 0's own figures beside them."""
    folds = full.get("folds")
    if not folds:
        return None
    return {
        "k": folds["k"],
        "this_model": f"fold {meta.get('fold', 0)} of {folds['k']}",
        "note": "test_metrics and intervals are pooled out of fold (each image scored by the one fold model "
        "that never saw it); the threshold and temperature were chosen on the folds' validation parts",
        "this_fold": folds["per_fold"][meta.get("fold", 0)],
        "spread": folds["spread"],
    }


def check_parity(check: dict, name: str) -> None:
    if check["max_abs_diff"] > PARITY_LIMIT:
        raise CxrError(
            f"{name}: ONNX Runtime and PyTorch differ by {check['max_abs_diff']:.2e} in a probability on "
            f"the test store (limit {PARITY_LIMIT:g}); the export is not faithful"
        )
