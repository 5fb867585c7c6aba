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
    """A .dcm/.dicom file, or an extension-less one with the DICM preamble."""
    p = Path(path)
    suffix = p.suffix.lower()
    return suffix in DICOM_EXTS or (suffix == "" and has_preamble(p))


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
    try:
        return float(v[0])
    except TypeError:
        return float(v)


def _lut(x: np.ndarray, item) -> tuple[np.ndarray, int]:
    """Apply a LUT sequence item (VOI or Modality); returns the values and the LUT's bit depth."""
    n, first, bits = (int(v) for v in item.LUTDescriptor)
    n = n or 65536
    table = np.asarray(item.LUTData, dtype=np.float64).ravel()[:n]
    idx = np.clip(np.round(x - first).astype(np.int64), 0, len(table) - 1)
    return table[idx], bits


def _declared_range(ds) -> tuple[float, float]:
    """The modality-space range the header declares: the stored range through the rescale."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    slope, icpt = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    a, b = lo * slope + icpt, hi * slope + icpt
    return min(a, b), max(a, b)


def to_gray8(ds, stored: np.ndarray) -> np.ndarray:
    """8-bit display pixels of a single-frame grayscale image from its stored values `stored`."""
    x = stored.astype(np.float64)
    if "ModalityLUTSequence" in ds:
        x, mbits = _lut(x, ds.ModalityLUTSequence[0])
        lo, hi = 0.0, float(2**mbits - 1)
    else:
        slope, icpt = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        x = x * slope + icpt
        lo, hi = _declared_range(ds)
    if "VOILUTSequence" in ds:
        y, vbits = _lut(x, ds.VOILUTSequence[0])
        unit = y / float(2**vbits - 1)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        unit = window(
            x, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "LINEAR"))
        )
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
        ds = pydicom.dcmread(str(path), force=Path(path).suffix == "")
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DicomSkip(f"not a readable DICOM file ({str(e).splitlines()[0][:100]})") from e
    if "PixelData" not in ds:
        raise DicomSkip("DICOM without pixel data (a report or other non-image object)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomSkip(f"multi-frame DICOM ({frames} frames), not a single radiograph")
    pi = str(ds.get("PhotometricInterpretation", ""))
    if pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomSkip(f"DICOM with PhotometricInterpretation {pi or 'missing'}, not a grayscale radiograph")
    w, h = int(ds.Columns), int(ds.Rows)
    if max_pixels is not None and w * h > max_pixels:
        raise DicomSkip(f"too many pixels ({w}x{h} > index.max_pixels={max_pixels})")
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError) as e:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", str(syntax))
        raise DicomSkip(f"DICOM pixel data ({name}) not decodable: {str(e).splitlines()[0][:160]}") from e
    pid = str(ds.get("PatientID", "") or "").strip()
    facts = {
        "width": w,
        "height": h,
        "mode": f"{pi} {int(ds.get('BitsStored', 16))}-bit",
        "format": "DICOM",
        "patient": patient_key(pid) if pid else None,
    }
    return to_gray8(ds, stored), facts
