"""The ONNX path: an exported model (model.onnx + card.json) served by ONNX Runtime, with no torch.

Every way the pair can be broken (a truncated graph, an empty card, a card that disagrees with
the graph) is one line. `session` is the one place an ONNX Runtime session is made (predict and
the export's parity check both use it); lint-imports holds this module free of torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr_transfer.core.errors import CxrError, first_line
from cxr_transfer.data.preprocess import PLAIN, Preprocess


@dataclass
class Loaded:
    """What predict needs of a model, whichever runtime serves it."""

    classes: list[str]
    image_size: int
    proba: Callable[[np.ndarray], np.ndarray]  # (N, S, S) uint8 -> (N, K) probabilities
    runtime: str
    positive: str | None = None
    bits_stored: int | None = None
    preprocess: Preprocess = PLAIN  # crop and intensity, applied by predict before the model
    training_images: dict | None = None
    torch_model_dir: Path | None = None
    temperature: float | None = None  # from the card: p_<class>_calibrated = softmax(log p / T)


def batched(fn, batch_size: int):
    def proba(x: np.ndarray) -> np.ndarray:
        return np.concatenate([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    return proba


def read_json_file(path: Path, what: str) -> dict:
    """A JSON object from `path`, or a one-line CxrError saying what is wrong with it."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        why = first_line(e)
        raise CxrError(f"{path}: not a readable {what} ({why}); re-run the stage that writes it") from None
    if not isinstance(obj, dict):
        raise CxrError(f"{path}: a {what} is a JSON object, not {type(obj).__name__}")
    return obj


def _card_fields(card: dict, card_path: Path) -> tuple[list[str], int]:
    """The classes and image size a card must state, checked."""
    try:
        classes, size = card["classes"], card["preprocessing"]["image_size"]
    except (KeyError, TypeError) as e:
        raise CxrError(
            f"{card_path}: no {e} in it; a card states classes and preprocessing.image_size "
            "(re-run the export stage)"
        ) from None
    ok = isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
    if not ok or not isinstance(size, int) or size < 8:
        raise CxrError(
            f"{card_path}: classes {classes!r} or image_size {size!r} unusable (re-run the export stage)"
        )
    return classes, size


def session(onnx_path: Path):
    """An ONNX Runtime CPU session on `onnx_path`, its own warnings quiet (errors still raise)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def load_onnx(onnx_path: Path, batch_size: int = 64) -> Loaded:
    """An exported model: model.onnx and its card.json side by side; every way either can be
    broken (truncated graph, empty card, a card that disagrees with the graph) is one line."""
    card_path = onnx_path.parent / "card.json"
    if not card_path.exists():
        raise CxrError(f"--model {onnx_path}: no card.json beside it (the export stage writes both)")
    card = read_json_file(card_path, "model card")
    classes, size = _card_fields(card, card_path)
    try:
        sess = session(onnx_path)
    except Exception as e:  # ORT raises its own classes (InvalidProtobuf, Fail, ...) for a bad file
        raise CxrError(
            f"{onnx_path}: not a loadable ONNX model ({first_line(e)}); re-run the export stage"
        ) from None
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    if len(shape) != 4 or shape[1] not in (1, None) or any(d not in (size, None) for d in shape[2:]):
        raise CxrError(
            f"{onnx_path}: the graph takes {inp.shape}, but {card_path.name} says image_size {size} "
            "(a card from another export?); re-run the export stage"
        )
    if isinstance(out.shape[-1], int) and out.shape[-1] != len(classes):
        raise CxrError(
            f"{onnx_path}: the graph gives {out.shape[-1]} outputs, {card_path.name} names "
            f"{len(classes)} classes; re-run the export stage"
        )

    def run(x):
        try:
            return sess.run(None, {inp.name: np.ascontiguousarray(x[:, None])})[0]
        except Exception as e:
            raise CxrError(f"{onnx_path}: ONNX Runtime failed ({first_line(e)})") from None

    pre = card["preprocessing"]
    try:
        steps = Preprocess.from_json(pre)
    except ValueError as e:
        raise CxrError(f"{card_path}: preprocessing {e} (re-run the export stage)") from None
    return Loaded(
        classes=classes,
        image_size=size,
        proba=batched(run, batch_size),
        runtime="onnxruntime",
        positive=card.get("positive"),
        bits_stored=pre.get("bits_stored"),
        preprocess=steps,
        training_images=(card.get("training_data") or {}).get("training_images"),
        temperature=(card.get("calibration") or {}).get("temperature"),
    )


def calibrated(p: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities from a softmax's float32 output: softmax(log p / T), in
    float64 (log p is the logits up to a constant per image, exact while p stays above float32's
    smallest normal number, about 1e-38)."""
    z = np.log(np.maximum(np.asarray(p, dtype=float), np.finfo(np.float32).tiny)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
