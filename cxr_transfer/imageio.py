"""Decoding any radiograph file into the one 8-bit grayscale array the pipeline uses."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_gray8(im: Image.Image) -> np.ndarray:
    """8-bit grayscale pixels of a decoded image of any PIL mode (16-bit, RGBA, P, CMYK, 1...).

    16-bit data are scaled by their container's range: 12-bit (max <= 4095) or full 16-bit.
    Alpha is dropped (radiographs carry no meaningful transparency).
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 4095.0 if a.max() <= 4095 else 65535.0
        if im.mode == "F":
            top = max(float(a.max()), 1.0)
        return np.clip(a / top * 255.0, 0, 255).round().astype(np.uint8)
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGB")
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)


def resize_gray8(a: np.ndarray, size: int) -> np.ndarray:
    """Resize to (size, size) the way the seed did (PIL bilinear, antialiased when shrinking)."""
    if a.shape == (size, size):
        return a
    return np.asarray(Image.fromarray(a, mode="L").resize((size, size), Image.BILINEAR))
