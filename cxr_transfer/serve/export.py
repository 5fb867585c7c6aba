"""ONNX export of a trained model, its parity with PyTorch, and the model card beside it.

The graph takes what prepare stores, uint8 (B, 1, S, S) images, and returns class probabilities:
the normalisation and the softmax are inside it, so a user of the file needs no code of ours,
only the card's preprocessing (8-bit grayscale, the crop if any, PIL bilinear resize to S x S,
the intensity standardisation if any).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_transfer.core.decision import RULE, decide
from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.versions import versions
from cxr_transfer.data.preprocess import Preprocess, steps_of
from cxr_transfer.runtime.batches import Normalizer
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.serve.onnx import session

# Parity of ONNX Runtime with PyTorch on the test store, on what matters: the logits (log
# probabilities) within a relative tolerance, and the same decision except where PyTorch's top
# two probabilities are within TIE_MARGIN of each other. Float32 reordering moves logits by ~1e-5
# relative; a broken export (wrong normalisation, a missing layer) moves them by far more than 1%.
LOGIT_RTOL, LOGIT_ATOL, TIE_MARGIN = 1e-2, 1e-3, 1e-3
TRAINED = ("best_epoch", "epochs_run", "train_seconds", "device", "precision")


class Probabilities(nn.Module):
    """uint8 (B, 1, S, S) -> (B, K) probabilities: the model with its normalisation and softmax."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.norm, self.model = Normalizer(mean, std), model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.norm(x)).softmax(1)


def export_onnx(wrapped: nn.Module, image_size: int, path: Path) -> str:
    """Write `wrapped` to `path` with a dynamic batch and check it with onnx.checker (atomically:
    a failed or killed export leaves no half-written model.onnx); returns the exporter used."""
    from cxr_transfer.core.cli import atomic_path

    with atomic_path(path) as tmp:
        return _export(wrapped, image_size, tmp)


def _export(wrapped: nn.Module, image_size: int, path: Path) -> str:
    """export_onnx's work, to `path`. TorchScript's exporter first: it takes 1.0-1.4 s for
    EfficientNet-Lite0 or DenseNet-121 where the dynamo exporter takes 11-16 s (2 CPU cores); it
    cannot export an adaptive pooling whose output does not divide its input (VGG below 224 px),
    which the dynamo exporter can."""
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
    absolute difference of any probability and of any logit (log probability; also relative to
    its size), the images whose decision differs (and how many of them are near-ties), and each
    runtime's images/s (after one warm batch)."""
    sess = session(onnx_path)
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
    return {
        "images": len(x),
        **parity_figures(out["onnxruntime"], out["pytorch"]),
        "limits": {"logit_rtol": LOGIT_RTOL, "logit_atol": LOGIT_ATOL, "tie_margin": TIE_MARGIN},
        "onnxruntime_images_per_s": round(speed["onnxruntime"], 1),
        "pytorch_images_per_s": round(speed["pytorch"], 1),
    }


def parity_figures(p_ort: np.ndarray, p_torch: np.ndarray) -> dict:
    """The parity figures of two (N, K) probability arrays for the same images."""
    if not len(p_torch):
        return {"max_abs_diff": 0.0, "max_logit_diff": 0.0, "max_logit_excess": 0.0, "decisions_differ": 0}
    a, b = np.asarray(p_ort, np.float64), np.asarray(p_torch, np.float64)
    za, zb = np.log(np.clip(a, 1e-30, 1.0)), np.log(np.clip(b, 1e-30, 1.0))
    dz = np.abs(za - zb)
    excess = dz / (LOGIT_ATOL + LOGIT_RTOL * np.abs(zb))  # > 1: beyond the tolerance
    top2 = np.sort(b, axis=1)[:, -2:]
    tie = (top2[:, 1] - top2[:, 0]) <= TIE_MARGIN
    differ = decide(a) != decide(b)
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "max_logit_diff": float(dz.max()),
        "max_logit_excess": round(float(excess.max()), 4),
        "decisions_differ": int(differ.sum()),
        "decisions_differ_near_ties": int((differ & tie).sum()),
    }


def card(
    info: ModelInfo, head: dict, full: dict, probe: dict | None, positive, check: dict, how: str
) -> dict:
    """What someone receiving model.onnx needs to use it correctly: classes and input, the
    preprocessing, the decision rule, the test figures with intervals, the shortcut probes'
    verdicts, where the training data came from, the parameters and the software."""
    meta = info.to_json()
    classes, size = meta["classes"], meta["image_size"]
    pre = Preprocess.from_json(meta.get("preprocess"))
    binary = len(classes) == 2
    youden = full.get("youden", {})
    # one rule per model, whatever runs it (predict through PyTorch or ONNX Runtime, evaluate):
    # the argmax, at which test_metrics are measured; the validation-chosen threshold is another
    # operating point a user may apply to the probabilities, stated with its own figures
    decision = {
        "rule": RULE,
        "test_metrics_at_rule": "test_metrics",
        "applied_by": "cxr-transfer predict (PyTorch and ONNX Runtime alike) and evaluate's test_metrics",
    }
    if binary and youden.get("threshold") is not None:
        decision["alternative"] = {
            "rule": f"{positive} when P({positive}) >= threshold",
            "threshold": youden["threshold"],
            "chosen_on": "the validation split, maximising sensitivity + specificity (Youden's J)",
            "test_metrics_at_threshold": {k: v for k, v in youden.items() if k != "threshold"},
            "note": f"not applied by predict; apply it to its p_{positive} column",
        }
    return {
        "model": f"{meta['arch']}-{meta['mode']}",
        "arch": meta["arch"],
        "mode": meta["mode"],
        "seed": meta.get("seed"),
        "classes": classes,
        "positive": positive,
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 1, size, size]},
        "output": {
            "name": "probabilities",
            "dtype": "float32",
            "shape": ["batch", len(classes)],
            "calibrated": False,  # see calibration.applied
        },
        "preprocessing": {
            "image_size": size,
            "steps": [
                "decode (PNG, JPEG, TIFF..., DICOM with its Modality and VOI LUTs, MONOCHROME1 inverted)",
                "8-bit grayscale (16-bit images: full range of bits_stored bits, else the file's 16)",
                *steps_of(pre, size),
            ],
            "bits_stored": meta.get("bits_stored"),
            "intensity": pre.intensity,
            "crop": pre.crop,
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
            **{k: full.get("calibration", {}).get(k) for k in ("temperature", "ece_before", "ece_after")},
            "applied": "the graph outputs the network's own softmax (p_<class> in predict's table); with a "
            "temperature here, cxr-transfer predict adds p_<class>_calibrated = softmax(log p / T), T "
            "fitted on the validation split's logits (evaluate); null: none was estimable, none is applied",
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
    """Fail on a real disagreement only: a decision that differs where PyTorch's call is not a
    near-tie, or a logit beyond the tolerance; float32 noise passes whatever the store's size."""
    real = check["decisions_differ"] - check.get("decisions_differ_near_ties", 0)
    if real > 0:
        raise CxrError(
            f"{name}: ONNX Runtime and PyTorch decide differently on {real} test image(s) that are not "
            f"near-ties (top two probabilities more than {TIE_MARGIN:g} apart); the export is not faithful"
        )
    if check["max_logit_excess"] > 1:
        raise CxrError(
            f"{name}: ONNX Runtime and PyTorch differ by {check['max_logit_diff']:.2e} in a logit on "
            f"the test store, {check['max_logit_excess']:.1f}x the tolerance ({LOGIT_ATOL:g} + "
            f"{LOGIT_RTOL:g} x |logit|); the export is not faithful"
        )
