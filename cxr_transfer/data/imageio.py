"""Decoding any radiograph file into the one 8-bit grayscale array the pipeline uses."""

from __future__ import annotations

import contextlib
import errno
import os
import stat

import numpy as np
from PIL import Image

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}  # DICOM: by its preamble too
OS_FILES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"}
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


def shown(path) -> str:
    """A path as text for reports and CSVs: bytes that are not UTF-8 written as \\xNN escapes (a
    name Python holds with surrogates cannot be encoded into UTF-8 files at all)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def file_problem(path, name: str | None = None) -> str | None:
    """Why a listed file cannot be read as one (a skip reason), or None: a name that is not UTF-8
    (`name`, default the path: it could not be written to data.csv and read back), a symbolic
    link loop, a dangling link, a folder/FIFO/device, or no permission to read it."""
    text = os.fspath(path) if name is None else name
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename the file)"
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if e.errno == errno.ENOENT:
            link = os.path.islink(path)
            return "dangling symbolic link (its target is missing)" if link else "file vanished"
        if e.errno == errno.EACCES:
            return "permission denied"
        return f"unreadable file ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, socket or device)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


class Unreadable(ValueError):
    """A file that cannot be used as a radiograph: `reason` (one of index's skip reasons) and an
    optional detail."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def is_colour(im: Image.Image) -> bool:
    """True when an image's colour channels differ somewhere (a photo or a coloured annotation,
    not a grayscale radiograph stored as RGB)."""
    if im.mode not in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return False
    a = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool((np.abs(a[..., 0] - a[..., 1]) > 2).any() or (np.abs(a[..., 1] - a[..., 2]) > 2).any())


def read_gray(
    path, max_pixels: int | None, bits_stored: int | None = None, colour: bool = True
) -> tuple[np.ndarray, dict]:
    """Any radiograph file (PNG, JPEG, TIFF..., DICOM) -> its 8-bit grayscale pixels and facts
    (width, height, mode, format, and with `colour` whether it is a colour image); `Unreadable`
    with index's reasons otherwise. The one decoding rule: index, prepare and predict use it."""
    import warnings

    from PIL import UnidentifiedImageError

    from cxr_transfer.data.dicom import DicomSkip, is_dicom, read_dicom

    problem = file_problem(path)
    if problem:
        raise Unreadable(problem)
    if os.path.getsize(path) == 0:
        raise Unreadable("empty file")
    if is_dicom(path):
        try:
            gray, facts = read_dicom(path, max_pixels)
        except DicomSkip as e:
            raise Unreadable(str(e)) from None
        return gray, {**facts, "colour": False}
    try:
        with warnings.catch_warnings(), pixel_limit(None):  # our own limit applies, before decoding
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                if max_pixels is not None and w * h > max_pixels:
                    raise Unreadable("too many pixels", f"{w}x{h} > index.max_pixels={max_pixels}")
                fmt, mode = im.format, im.mode
                if mode == "F":
                    raise Unreadable("floating-point pixels (no declared range)")
                im.load()
                colour = is_colour(im) if colour else None
                gray = to_gray8(im, bits_stored)
    except UnidentifiedImageError:
        raise Unreadable("not a decodable image") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, Unreadable):
            raise
        raise Unreadable("corrupt or truncated image", str(e).splitlines()[0][:120]) from None
    return gray, {"width": w, "height": h, "mode": mode, "format": fmt, "colour": colour}
