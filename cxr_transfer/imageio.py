"""Decoding any radiograph file into the one 8-bit grayscale array the pipeline uses."""

from __future__ import annotations

import contextlib

import numpy as np
from PIL import Image

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit containers (old Pillow: 16-bit PNG as I)


@contextlib.contextmanager
def pixel_limit(limit: int | None):
    """Set Pillow's decompression-bomb limit for this block only, restoring it after.

    Pillow keeps the limit in one process-wide variable; setting it for good would switch the guard
    off for everything else in the process."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def to_gray8(im: Image.Image, bits_stored: int | None = None) -> np.ndarray:
    """8-bit grayscale pixels of a decoded image of any PIL mode (16-bit, RGBA, P, CMYK, 1...).

    16-bit images are scaled by one rule for the whole dataset, never by a per-image guess:
    full range 0..2**bits_stored - 1, where bits_stored is data.bits_stored (e.g. 12 for 12-bit
    detector data in 16-bit files) or, when that is None, the 16 bits the file declares.
    Alpha is dropped (radiographs carry no meaningful transparency). Floating-point images have
    no declared range and are refused (ValueError)."""
    if im.mode == "F":
        raise ValueError("floating-point pixels have no declared range; convert them to 8 or 16 bits")
    if im.mode in WIDE_MODES:
        top = float(2 ** (bits_stored or 16) - 1)
        a = np.asarray(im, dtype=np.float64)
        return np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)
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
