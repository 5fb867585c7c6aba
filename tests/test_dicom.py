import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from cxr_transfer.data.dicom import DicomSkip, is_dicom, patient_key, read_dicom, window
from cxr_transfer.data.index import build_index
from cxr_transfer.data.prepare import load_resized

CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


def make_dicom(path, stored, bits=12, pi="MONOCHROME2", patient="PAT-001", signed=False, **header):
    """A single-frame radiograph as a modality would write it (preamble, file meta, pixels)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID, ds.PatientName = patient, "Doe^Jane"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, pi
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    for k, v in header.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return ds


RAMP = np.array([[0, 1024, 2048], [3072, 4095, 100]])


@pytest.mark.parametrize(
    "bits, pi, header, expect",
    [
        # no VOI: the declared 12-bit range 0..4095 -> 0..255
        (12, "MONOCHROME2", {}, [[0, 64, 128], [191, 255, 6]]),
        # MONOCHROME1: low values are white
        (12, "MONOCHROME1", {}, [[255, 191, 127], [64, 0, 249]]),
        # 16-bit container with 16 bits stored: 4095 is only 1/16 of the range
        (16, "MONOCHROME2", {}, [[0, 4, 8], [12, 16, 0]]),
        # window centre 2048, width 2049: linear from 1023.5 to 3072.5
        (12, "MONOCHROME2", {"WindowCenter": 2048, "WindowWidth": 2049}, [[0, 0, 128], [255, 255, 0]]),
        # rescale to a -1024 offset, then a window on the rescaled values (centre 0 = stored 1024)
        (
            12,
            "MONOCHROME2",
            {"RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": 0, "WindowWidth": 4},
            [[0, 170, 255], [255, 255, 0]],
        ),
        # several windows in the header: the first is the one applied
        (
            12,
            "MONOCHROME1",
            {"WindowCenter": [2048, 100], "WindowWidth": [4097, 10]},
            [[255, 191, 127], [64, 0, 249]],
        ),
    ],
    ids=["mono2-12bit", "mono1-12bit", "mono2-16bit", "window", "rescale-window", "multi-window-mono1"],
)
def test_decoded_pixels_match_hand_computed_values(tmp_path, bits, pi, header, expect):
    make_dicom(tmp_path / "a.dcm", RAMP, bits, pi, **header)
    gray, facts = read_dicom(tmp_path / "a.dcm")
    assert gray.tolist() == expect
    assert facts == {
        "width": 3,
        "height": 2,
        "mode": f"{pi} {bits}-bit",
        "format": "DICOM",
        "patient": patient_key("PAT-001"),
    }


def test_a_voi_lut_sequence_maps_through_its_table(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 100, 8]  # 4 entries for stored values 100..103, 8-bit output
    item.add_new(0x00283006, "US", [0, 51, 204, 255])  # LUTData
    stored = np.array([[99, 100, 101], [102, 103, 4000]])
    make_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[item])
    gray, _ = read_dicom(tmp_path / "lut.dcm")
    assert gray.tolist() == [[0, 0, 51], [204, 255, 255]]  # outside the table: its end values


def test_window_functions_follow_the_standard():
    x = np.array([0.0, 49.5, 50.0, 100.0])
    assert window(x, 50, 101).tolist() == pytest.approx([0.005, 0.5, 0.505, 1.0])
    assert window(x, 50, 100, "LINEAR_EXACT").tolist() == pytest.approx([0.0, 0.495, 0.5, 1.0])
    assert window(np.array([50.0]), 50, 10, "SIGMOID").tolist() == [0.5]


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000-openjpeg"])
def test_a_compressed_file_decodes_to_the_same_pixels(tmp_path, syntax):
    stored = np.random.default_rng(1).integers(0, 4096, (64, 48))  # openjpeg needs more than a few pixels
    ds = make_dicom(tmp_path / "raw.dcm", stored, 12)
    ds.compress(syntax)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert read_dicom(tmp_path / "rle.dcm")[0].tolist() == read_dicom(tmp_path / "raw.dcm")[0].tolist()


def _rewrite(path, change):
    """Write a radiograph at `path`, then change its header in place."""
    import pydicom

    make_dicom(path, RAMP)
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def _no_pixels(ds):
    del ds.PixelData


def _two_frames(ds):
    ds.NumberOfFrames = 2
    ds.PixelData = np.concatenate([RAMP, RAMP]).astype(np.uint16).tobytes()


def _jpeg2000_without_a_decoder(ds):
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 40])


def _rgb(ds):
    ds.PhotometricInterpretation = "RGB"


@pytest.mark.parametrize(
    "change, reason",
    [
        (_no_pixels, "DICOM without pixel data"),
        (_two_frames, "multi-frame DICOM (2 frames)"),
        (
            _jpeg2000_without_a_decoder,
            "DICOM pixel data (JPEG 2000 Image Compression (Lossless Only)) not decodable",
        ),
        (_rgb, "DICOM with PhotometricInterpretation RGB, not a grayscale radiograph"),
    ],
    ids=["no-pixels", "multi-frame", "undecodable-jpeg2000", "colour"],
)
def test_unusable_dicom_is_skipped_with_its_reason(tmp_path, change, reason):
    with pytest.raises(DicomSkip, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        read_dicom(_rewrite(tmp_path / "x.dcm", change))


def test_index_finds_dicom_by_extension_or_preamble_and_groups_by_hashed_patient(tmp_path):
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for cls in ("NORMAL", "COVID"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 4096, (24, 20))
            pid = f"{cls}-patient-{i // 2}"  # images 0 and 1 of a class: one patient
            name = f"{i}.dcm" if i < 2 else f"IM{i:04d}"  # the last one has no extension
            make_dicom(root / cls / name, img, pi="MONOCHROME1" if i == 1 else "MONOCHROME2", patient=pid)
        (root / cls / "notes").write_text("not DICOM, no extension")
        _rewrite(root / cls / "multi.dcm", _two_frames)
    df, report = build_index(root, {"Normal": ("NORMAL",), "Covid": ("COVID",)}, 10**6, workers=1)
    assert len(df) == 6 and sorted(df["format"].unique()) == ["DICOM"]
    assert set(df.loc[df["path"] == "NORMAL/IM0002", "mode"]) == {"MONOCHROME2 12-bit"}
    groups = df.set_index("path")["group"]
    assert groups["NORMAL/0.dcm"] == groups["NORMAL/1.dcm"] == f"patient:{patient_key('NORMAL-patient-0')}"
    assert groups["NORMAL/IM0002"] != groups["NORMAL/0.dcm"]
    text = df.to_csv() + str(report)
    assert "patient-0" not in text and "Doe" not in text  # no identifier or name leaves the header
    reasons = {s["path"]: s["reason"] for s in report["skipped_files"]}
    assert reasons["NORMAL/notes"] == "not an image (no extension)"
    assert reasons["COVID/multi.dcm"].startswith("multi-frame DICOM (2 frames)")
    # prepare decodes the same pixels through the same path
    small = load_resized(str(root / "NORMAL" / "0.dcm"), 24)
    assert small.shape == (24, 24) and small.dtype == np.uint8


def test_is_dicom_needs_the_extension_or_the_magic(tmp_path):
    (tmp_path / "plain").write_bytes(b"\0" * 200)
    assert not is_dicom(tmp_path / "plain") and is_dicom(tmp_path / "x.DCM")
    make_dicom(tmp_path / "IM1", RAMP)
    assert is_dicom(tmp_path / "IM1")


def _patched(path, header, field=None, new=None, drop=()):
    """A radiograph whose header `field` is then overwritten at the byte level with `new` (pydicom
    refuses to write a non-numeric DS/IS value, but files in the wild carry them)."""
    import struct

    import pydicom

    make_dicom(path, RAMP, **header)
    if drop:
        ds = pydicom.dcmread(path)
        for k in drop:
            delattr(ds, k)
        ds.save_as(path, enforce_file_format=True)
    if field:
        tag = pydicom.datadict.tag_for_keyword(field)
        b = path.read_bytes()
        at = b.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF), 132)  # explicit VR little endian
        (n,) = struct.unpack("<H", b[at + 6 : at + 8])
        assert len(new) == n
        path.write_bytes(b[: at + 8] + new + b[at + 8 + n :])
    return path


@pytest.mark.parametrize(
    "header, field, new, drop, reason",
    [
        ({}, None, None, ("Rows", "Columns"), "DICOM header has no Columns"),
        (
            {"WindowCenter": "1234", "WindowWidth": "400"},
            "WindowCenter",
            b"abcd",
            (),
            "DICOM header WindowCenter is not a number ('abcd')",
        ),
        (
            {"RescaleSlope": "1.25"},
            "RescaleSlope",
            b"x1.5",
            (),
            "DICOM header RescaleSlope is not a number ('x1.5')",
        ),
        (
            {"NumberOfFrames": 97},
            "NumberOfFrames",
            b"ab",
            (),
            "DICOM header NumberOfFrames is not a number ('ab')",
        ),
        (
            {"WindowCenter": "2000", "WindowWidth": "0", "VOILUTFunction": "SIGMOID"},
            None,
            None,
            (),
            "DICOM header WindowWidth is 0 with VOILUTFunction SIGMOID (must be > 0)",
        ),
    ],
    ids=["no-rows-columns", "text-window-centre", "text-rescale-slope", "text-frames", "sigmoid-width-0"],
)
def test_a_broken_header_is_a_skip_naming_the_field(tmp_path, header, field, new, drop, reason):
    import warnings

    path = _patched(tmp_path / "x.dcm", header, field, new, drop)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no divide-by-zero garbage either
        with pytest.raises(DicomSkip) as e:
            read_dicom(path)
    assert str(e.value) == reason


def test_pacs_exports_named_by_uid_are_found_by_the_preamble(tmp_path):
    """`1.2.840....320`: the last UID component looks like a suffix; the DICM magic decides."""
    root = tmp_path / "raw"
    rng = np.random.default_rng(1)
    for cls in ("NORMAL", "COVID"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            make_dicom(
                root / cls / f"1.2.840.113619.2.55.3.604688119.971.1.{320 + i}",
                rng.integers(0, 4096, (16, 16)),
            )
        (root / cls / "1.2.3.txt").write_text("a note, not DICOM")
    _patched(root / "COVID" / "broken.dcm", {"RescaleSlope": "1.25"}, "RescaleSlope", b"x1.5")
    df, report = build_index(root, {"Normal": ("NORMAL",), "Covid": ("COVID",)}, 10**6, workers=1)
    assert len(df) == 4 and set(df["format"]) == {"DICOM"}
    assert report["skipped_by_reason"] == {
        "not an image (.txt)": 2,
        "DICOM header RescaleSlope is not a number ('x1.5')": 1,
    }
