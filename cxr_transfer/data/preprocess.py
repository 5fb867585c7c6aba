"""What happens to a decoded 8-bit radiograph before the network sees it, beyond resizing: crop to
the body, then standardise the intensities. Chosen in params.yaml's prepare section and applied by
one function, `preprocessed`, wherever pixels enter: prepare's stores, the external sets' stores,
predict (from the model card) and so the exported model's users.

Order: crop (on the full-resolution image, so the box is found at full detail) -> resize to
image_size x image_size -> intensity (on the resized image: what the network sees, and 10-20x
cheaper than at full resolution).

intensity:
  none        the 8-bit image as decoded
  equalize    global histogram equalisation (skimage.exposure.equalize_hist, 256 bins)
  clahe       contrast-limited adaptive histogram equalisation (skimage.exposure.equalize_adapthist:
              8x8 tiles, clip limit 0.01)
  percentile  clip to the 0.5th-99.5th percentiles and rescale to 0-255 (histogram standardisation)
crop:
  none        the whole image
  body        the bounding box of the body: rows and columns where at least 10% of the pixels lie
              above the image's Otsu threshold (markers and text lines are thinner than that),
              widened by 2% of each side (found on every k-th pixel, k = shorter side // 256,
              so a 2048 px image costs what a 256 px one does); an image whose box would keep
              less than half of either side (nearly blank, or no dark background) is kept whole
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_transfer.core.params import CROPS, INTENSITIES
from cxr_transfer.data.imageio import resize_gray8

ROW_FRACTION = 0.10  # a row or column is body when this share of its pixels is above the threshold
MARGIN = 0.02  # of each side, added around the box
MIN_KEPT = 0.5  # a box keeping less of either side than this is not trusted
CLAHE_CLIP = 0.01
PERCENTILES = (0.5, 99.5)
PROFILE_SIDE = 256  # the body box is found on a view of about this many pixels a side


@dataclass(frozen=True)
class Preprocess:
    intensity: str = "none"
    crop: str = "none"

    def __post_init__(self):
        if self.intensity not in INTENSITIES:
            raise ValueError(f"intensity {self.intensity!r} is not one of {list(INTENSITIES)}")
        if self.crop not in CROPS:
            raise ValueError(f"crop {self.crop!r} is not one of {list(CROPS)}")

    def to_json(self) -> dict:
        return {"intensity": self.intensity, "crop": self.crop}

    @classmethod
    def from_json(cls, d: dict | None) -> Preprocess:
        """From a store's meta, a model.json or a card; absent (older files) = none/none."""
        d = d or {}
        return cls(d.get("intensity", "none"), d.get("crop", "none"))

    @property
    def plain(self) -> bool:
        return self.intensity == "none" and self.crop == "none"


PLAIN = Preprocess()


def body_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive, of the body in an 8-bit radiograph; the
    whole image when no box can be trusted."""
    from skimage.filters import threshold_otsu

    h, w = gray.shape
    whole = (0, h, 0, w)
    k = max(1, min(h, w) // PROFILE_SIDE)  # found on every k-th pixel: the box moves by < k pixels
    sub = gray[::k, ::k]
    if int(sub.min()) == int(sub.max()):
        return whole
    above = sub > threshold_otsu(sub)
    rows = np.flatnonzero(above.mean(axis=1) >= ROW_FRACTION)
    cols = np.flatnonzero(above.mean(axis=0) >= ROW_FRACTION)
    if len(rows) == 0 or len(cols) == 0:
        return whole
    top, bottom, left, right = (
        rows[0] * k,
        min(h, (rows[-1] + 1) * k),
        cols[0] * k,
        min(w, (cols[-1] + 1) * k),
    )
    if bottom - top < MIN_KEPT * h or right - left < MIN_KEPT * w:
        return whole
    mh, mw = round(MARGIN * h), round(MARGIN * w)
    return max(0, top - mh), min(h, bottom + mh), max(0, left - mw), min(w, right + mw)


def standardised(small: np.ndarray, intensity: str) -> np.ndarray:
    """`small` (uint8) with its intensities standardised; a constant image is returned as is."""
    if intensity == "none" or int(small.min()) == int(small.max()):
        return small
    if intensity == "percentile":
        lo, hi = np.percentile(small, PERCENTILES)
        if hi <= lo:
            return small
        a = (small.astype(np.float64) - lo) * (255.0 / (hi - lo))
        return np.clip(a, 0, 255).round().astype(np.uint8)
    from skimage import exposure

    if intensity == "equalize":
        a = exposure.equalize_hist(small, nbins=256)
    else:  # clahe
        a = exposure.equalize_adapthist(small, clip_limit=CLAHE_CLIP)
    return np.clip(a * 255.0, 0, 255).round().astype(np.uint8)


def preprocessed(gray: np.ndarray, size: int, pre: Preprocess = PLAIN) -> np.ndarray:
    """The (size, size) uint8 image the network sees, from a decoded 8-bit radiograph."""
    if pre.crop == "body":
        top, bottom, left, right = body_box(gray)
        gray = gray[top:bottom, left:right]
    return standardised(resize_gray8(np.ascontiguousarray(gray), size), pre.intensity)


STEPS = {
    "body": "crop to the body's bounding box (rows and columns with >= 10% of pixels above the Otsu "
    "threshold, plus 2% of each side; kept whole when that box would keep less than half a side)",
    "equalize": "global histogram equalisation (skimage.exposure.equalize_hist, 256 bins), to 0-255",
    "clahe": "CLAHE (skimage.exposure.equalize_adapthist, clip_limit 0.01, 8x8 tiles), to 0-255",
    "percentile": "clip to the 0.5th-99.5th percentiles and rescale linearly to 0-255",
}


def steps_of(pre: Preprocess, size: int) -> list[str]:
    """The card's words for what `preprocessed` does after decoding, in order."""
    out = [STEPS["body"]] if pre.crop == "body" else []
    out.append(f"resize to {size}x{size}, PIL bilinear (antialiased when shrinking), aspect not kept")
    if pre.intensity != "none":
        out.append(STEPS[pre.intensity] + " (on the resized image)")
    return out
