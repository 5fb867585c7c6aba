"""DICOM radiographs: the header's transforms applied in the standard's order, then 8 bits.

Stored values -> Modality LUT (rescale slope/intercept) -> VOI LUT or window centre/width (the
header's first) -> MONOCHROME1 inverted -> 0..255. Without a VOI transform the range is the one the
header declares (BitsStored through the rescale), never a per-image min/max guess: the same rule
as 16-bit PNGs. PatientID becomes a split group, stored only as a hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

DICOM_EXTS = {".dcm", ".dicom"}


class DicomSkip(ValueError):
    """A DICOM file that cannot be used as one radiograph; the message is the skip reason."""


def has_preamble(path: str | Path) -> bool:
    """True when the file carries DICOM's 'DICM' magic after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom(path: str | Path) -> bool:
    """A .dcm/.dicom file, or any file with the DICM preamble whatever its name: PACS exports name
    files by their UID (1.2.840.113619.2.55.3.604688119.971.1.320), whose last part is no suffix."""
    p = Path(path)
    return p.suffix.lower() in DICOM_EXTS or has_preamble(p)


def patient_key(patient_id: str) -> str:
    """A stable pseudonym for a PatientID (sha256, 16 hex digits): groups images by patient
    without copying the identifier into data.csv, metrics or logs."""
    return "dcm-" + hashlib.sha256(patient_id.encode()).hexdigest()[:16]


def window(x: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI windowing to [0, 1]: LINEAR (the default), LINEAR_EXACT, SIGMOID."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    if width <= 1:
        return (x > centre - 0.5).astype(np.float64)
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first(v) -> float:
    """The first of a possibly multi-valued number (WindowCenter may hold several windows)."""
    if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue":
        v = v[0]
    return float(v)


def number(ds, name: str, default: float | None = None) -> float:
    """A numeric header field (its first value), `default` when absent or empty; DicomSkip naming
    the field when it is missing without a default or holds no number (a hand-edited or broken
    export), instead of an AttributeError or ValueError from deep inside the decode."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns before it raises on a bad DS/IS
            v = ds.get(name)
            x = None if v is None or v == "" else _first(v)
    except (TypeError, ValueError, IndexError):
        raw = ds[name].repval if name in ds else "?"
        raise DicomSkip(f"DICOM header {name} is not a number ({raw[:40]})") from None
    if x is None:
        if default is None:
            raise DicomSkip(f"DICOM header has no {name}")
        return default
    if not np.isfinite(x):
        raise DicomSkip(f"DICOM header {name} is not a finite number ({x})")
    return x


def _lut(x: np.ndarray, item) -> tuple[np.ndarray, int]:
    """Apply a LUT sequence item (VOI or Modality); returns the values and the LUT's bit depth."""
    try:
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        if "LUTData" not in item or not 1 <= bits <= 16:
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        raise DicomSkip("DICOM header LUTDescriptor/LUTData is missing or malformed") from None
    n = n or 65536
    table = np.asarray(item.LUTData, dtype=np.float64).ravel()[:n]
    idx = np.clip(np.round(x - first).astype(np.int64), 0, len(table) - 1)
    return table[idx], bits


def _declared_range(ds) -> tuple[float, float]:
    """The modality-space range the header declares: the stored range through the rescale."""
    bits = int(number(ds, "BitsStored", number(ds, "BitsAllocated", 16)))
    if not 1 <= bits <= 32:
        raise DicomSkip(f"DICOM header BitsStored is {bits}, not in 1-32")
    if int(number(ds, "PixelRepresentation", 0)) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    slope, icpt = _rescale(ds)
    a, b = lo * slope + icpt, hi * slope + icpt
    return min(a, b), max(a, b)


def _rescale(ds) -> tuple[float, float]:
    slope = number(ds, "RescaleSlope", 1.0) or 1.0  # 0 is a broken header's "none"
    return slope, number(ds, "RescaleIntercept", 0.0)


def _window(ds) -> tuple[float, float, str]:
    """The first VOI window (centre, width, function), checked against PS3.3 C.11.2.1.2: width
    >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID (a zero width divides by zero)."""
    centre, width = number(ds, "WindowCenter"), number(ds, "WindowWidth")
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise DicomSkip(f"DICOM header VOILUTFunction {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    if width <= 0:
        raise DicomSkip(f"DICOM header WindowWidth is {width:g} with VOILUTFunction {function} (must be > 0)")
    return centre, width, function


def to_gray8(ds, stored: np.ndarray) -> np.ndarray:
    """8-bit display pixels of a single-frame grayscale image from its stored values `stored`."""
    x = stored.astype(np.float64)
    if "ModalityLUTSequence" in ds:
        x, mbits = _lut(x, ds.ModalityLUTSequence[0])
        lo, hi = 0.0, float(2**mbits - 1)
    else:
        slope, icpt = _rescale(ds)
        x = x * slope + icpt
        lo, hi = _declared_range(ds)
    if "VOILUTSequence" in ds:
        y, vbits = _lut(x, ds.VOILUTSequence[0])
        unit = y / float(2**vbits - 1)
    elif ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        unit = window(x, *_window(ds))
    else:
        unit = (x - lo) / max(hi - lo, 1e-12)
    gray = np.clip(unit, 0.0, 1.0) * 255.0
    if ds.PhotometricInterpretation == "MONOCHROME1":  # low values are white
        gray = 255.0 - gray
    return np.round(gray).astype(np.uint8)


def read_dicom(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """(8-bit pixels, facts) of one DICOM radiograph; DicomSkip naming the reason otherwise.

    facts: width, height, mode ('MONOCHROME2 12-bit'), format 'DICOM', patient (a pseudonym,
    or None when the header has no PatientID)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), force=Path(path).suffix.lower() not in DICOM_EXTS)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DicomSkip(f"not a readable DICOM file ({str(e).splitlines()[0][:100]})") from e
    if "PixelData" not in ds:
        raise DicomSkip("DICOM without pixel data (a report or other non-image object)")
    frames = int(number(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomSkip(f"multi-frame DICOM ({frames} frames), not a single radiograph")
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    if pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomSkip(f"DICOM with PhotometricInterpretation {pi or 'missing'}, not a grayscale radiograph")
    w, h = int(number(ds, "Columns")), int(number(ds, "Rows"))
    if w < 1 or h < 1:
        raise DicomSkip(f"DICOM header Rows x Columns is {h} x {w}")
    if max_pixels is not None and w * h > max_pixels:
        raise DicomSkip(f"too many pixels ({w}x{h} > index.max_pixels={max_pixels})")
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, KeyError, TypeError) as e:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", str(syntax))
        raise DicomSkip(f"DICOM pixel data ({name}) not decodable: {str(e).splitlines()[0][:160]}") from e
    pid = str(ds.get("PatientID", "") or "").strip()
    facts = {
        "width": w,
        "height": h,
        "mode": f"{pi} {int(number(ds, 'BitsStored', 16))}-bit",
        "format": "DICOM",
        "patient": patient_key(pid) if pid else None,
    }
    if stored.ndim != 2:
        raise DicomSkip(f"DICOM pixel data of shape {stored.shape}, not one grayscale image")
    return to_gray8(ds, stored), facts
