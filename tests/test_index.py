from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_transfer.data.imageio import pixel_limit, to_gray8
from cxr_transfer.data.index import IndexError_, build_index, inspect_image, read_column
from cxr_transfer.data.prepare import load_resized
from cxr_transfer.data.split import grouped_split

CLASSES = {"Normal": ("NORMAL", "Normal"), "Covid": ("COVID", "COVID-19")}


def index(root, **kw):
    return build_index(root, CLASSES, max_pixels=kw.pop("max_pixels", 10_000), workers=1, **kw)


def test_seed_layout_is_indexed_with_labels_and_columns(seed_layout):
    df, rep = index(seed_layout)
    assert list(df.columns) == [
        *["path", "image_name", "label", "class", "group", "source", "hash", "phash", "phash_framed"],
        *["width", "height", "mode", "format", "bytes", "mean", "std", "p01", "p50", "p99", "black", "white"],
    ]
    assert (df["source"] == "").all() and df["phash"].str.len().eq(64).all()
    assert df["phash_framed"].str.len().eq(64).all() and (df["phash_framed"] != df["phash"]).all()
    assert (df["bytes"] == [(seed_layout / p).stat().st_size for p in df["path"]]).all()
    assert rep["per_class"] == {"Normal": 6, "Covid": 6}
    assert set(df.loc[df["class"] == "Covid", "label"]) == {1}
    assert set(df.loc[df["class"] == "Normal", "label"]) == {0}
    assert (df["width"] == 24).all() and (df["format"] == "PNG").all()
    assert df["group"].nunique() == 12
    assert rep["skipped"] == 0


def _corrupt(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    data = (p.parent / "ok.png").read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "rel, make, reason",
    [
        ("COVID/empty.png", lambda p: p.write_bytes(b""), "empty file"),
        ("COVID/notes.txt", lambda p: p.write_text("hello"), "not an image (.txt)"),
        ("COVID/COVID.metadata.xlsx", lambda p: p.write_bytes(b"PK"), "not an image (.xlsx)"),
        ("COVID/fake.png", lambda p: p.write_text("not a png at all"), "not a decodable image"),
        ("COVID/cut.png", _corrupt, "corrupt or truncated image"),
        ("COVID/masks/m1.png", None, "mask folder"),
        ("COVID/.hidden.png", None, "hidden or OS file"),
        ("COVID/.DS_Store", lambda p: p.write_bytes(b"\0\0"), "hidden or OS file"),
        ("NORMAL/Thumbs.db", lambda p: p.write_bytes(b"\0\0"), "hidden or OS file"),
        ("__MACOSX/COVID/._x.png", None, "OS folder"),
        (".cache/COVID/x.png", None, "hidden folder"),
        ("Viral Pneumonia/v1.png", None, "folder of no configured class"),
        ("COVID/huge.png", "huge", "too many pixels"),
    ],
)
def test_every_skip_reason_is_counted_and_listed(seed_layout, make_image, rel, make, reason):
    make_image(seed_layout / "COVID" / "ok.png", seed=999)
    p = seed_layout / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if make is None:
        make_image(p, seed=555)
    elif make == "huge":
        make_image(p, size=(200, 200), seed=556)
    else:
        make(p)
    df, rep = index(seed_layout)
    assert rep["skipped_by_reason"] == {reason: 1}
    assert rep["skipped_files"][0]["path"] == rel
    assert rel not in set(df["path"])
    assert rep["per_class"] == {"Normal": 6, "Covid": 7}  # the good files all remain


@pytest.mark.parametrize(
    "name, mode, fmt",
    [
        ("a16.png", "I;16", "PNG"),
        ("rgba.png", "RGBA", "PNG"),
        ("pal.png", "P", "PNG"),
        ("cmyk.jpg", "CMYK", "JPEG"),
        ("rgb.JPEG", "RGB", "JPEG"),
        ("b.bmp", "L", "BMP"),
        ("t.tif", "L", "TIFF"),
        ("UPPER.PNG", "L", "PNG"),
    ],
)
def test_reads_many_formats_and_modes(seed_layout, make_image, name, mode, fmt):
    """Each format and mode indexes, and decodes to the grayscale pixels it was written from:
    exactly where the format is lossless (16 bits scaled back, a palette, RGBA, BMP, TIFF), within
    JPEG's loss where it is not; an inverted CMYK or a misread palette would be far off."""
    from cxr_transfer.data.imageio import read_gray

    path = make_image(seed_layout / "COVID" / name, mode=mode, fmt=fmt, seed=7)
    df, rep = index(seed_layout)
    row = df[df["image_name"] == name]
    assert len(row) == 1 and row["format"].iloc[0] == fmt
    assert rep["skipped"] == 0
    written = np.random.default_rng(7).integers(0, 256, (24, 24), dtype=np.uint8)  # write_image's pixels
    gray, _ = read_gray(path, None)
    err = np.abs(gray.astype(int) - written.astype(int))
    if fmt == "JPEG":
        assert err.mean() < 10 and err.max() < 40  # 7.3 mean here; inverted: 126
    else:
        assert err.max() == 0


def test_16_bit_is_scaled_not_clipped():
    a = np.array([[0, 32768, 65535]], dtype=np.uint16)
    assert to_gray8(Image.fromarray(a)).tolist() == [[0, 128, 255]]
    twelve = np.array([[0, 2048, 4095]], dtype=np.uint16)
    assert to_gray8(Image.fromarray(twelve), bits_stored=12).tolist() == [[0, 128, 255]]


@pytest.mark.parametrize("bits, expect", [(None, 16), (12, 255)])
def test_16_bit_scaling_is_one_rule_for_the_whole_dataset(bits, expect):
    """One detector, one raw value, one 8-bit value: never a guess from each image's maximum."""
    dim = np.array([[0, 4095]], dtype=np.uint16)  # this image happens to stay below 4096
    bright = np.array([[4095, 5000]], dtype=np.uint16)
    a = to_gray8(Image.fromarray(dim), bits_stored=bits)[0, 1]
    b = to_gray8(Image.fromarray(bright), bits_stored=bits)[0, 0]
    assert a == b == expect


def test_the_decompression_bomb_guard_is_restored_after_decoding(seed_layout):
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    inspect_image(str(seed_layout / "COVID" / "covid-0.png"), 10_000)
    load_resized(str(seed_layout / "COVID" / "covid-0.png"), 8)
    assert before == Image.MAX_IMAGE_PIXELS
    with pixel_limit(None):
        assert Image.MAX_IMAGE_PIXELS is None
    assert before == Image.MAX_IMAGE_PIXELS


def test_floating_point_images_are_skipped_with_a_reason(seed_layout):
    Image.fromarray(np.ones((24, 24), np.float32) * 0.5, "F").save(seed_layout / "COVID" / "f.tif")
    df, rep = index(seed_layout)
    assert rep["skipped_by_reason"] == {"floating-point pixels (no declared range)": 1}
    assert rep["per_class"] == {"Normal": 6, "Covid": 6}


def test_duplicates_share_a_group_and_label_conflicts_are_dropped(seed_layout, make_image):
    make_image(seed_layout / "COVID" / "copy.png", seed=101)  # same pixels as COVID/covid-1.png
    make_image(seed_layout / "NORMAL" / "clash.png", seed=102)  # same pixels as COVID/covid-2.png
    df, rep = index(seed_layout)
    assert rep["duplicate_sets"] == 1 and rep["duplicates"] == [["COVID/copy.png", "COVID/covid-1.png"]]
    g = df.set_index("path")["group"]
    assert g["COVID/copy.png"] == g["COVID/covid-1.png"]
    assert rep["skipped_by_reason"] == {"label conflict (same pixels in two classes)": 2}
    assert "COVID/covid-2.png" not in set(df["path"]) and "NORMAL/clash.png" not in set(df["path"])


def test_metadata_supplies_patient_groups(seed_layout, tmp_path):
    meta = tmp_path / "meta.csv"
    pd.DataFrame(
        {"FILE NAME": ["covid-0", "covid-1", "normal-0.png"], "PATIENT ID": ["p1", "p1", "p2"]}
    ).to_csv(meta, index=False)
    groups = read_column(meta, "FILE NAME", "PATIENT ID", "patient_column")
    df, rep = index(seed_layout, groups=groups)
    g = df.set_index("image_name")["group"]
    assert g["covid-0.png"] == g["covid-1.png"] == "patient:p1"
    assert g["normal-0.png"] == "patient:p2"
    assert rep["images_without_metadata"] == 9
    with pytest.raises(IndexError_, match="no column 'PATIENT'"):
        read_column(meta, "FILE NAME", "PATIENT", "patient_column")


def test_copies_under_two_patient_ids_are_one_group_and_never_split(seed_layout, make_image, tmp_path):
    """Same patient OR same pixels: groups are connected components, so a chain of links holds."""
    make_image(seed_layout / "COVID" / "copy-a.png", seed=101)  # pixels of COVID/covid-1.png
    make_image(seed_layout / "COVID" / "copy-b.png", seed=104)  # pixels of COVID/covid-4.png
    meta = tmp_path / "meta.csv"
    pd.DataFrame(
        {
            "FILE NAME": ["covid-1", "copy-a", "covid-3", "covid-4"],
            "PATIENT ID": ["p1", "p2", "p2", "p3"],  # copy-a: another id; copy-b: no id at all
        }
    ).to_csv(meta, index=False)
    df, rep = index(seed_layout, groups=read_column(meta, "FILE NAME", "PATIENT ID", "patient_column"))
    g = df.set_index("image_name")["group"]
    assert g["covid-1.png"] == g["copy-a.png"] == g["covid-3.png"] == "patient:p1"
    assert g["covid-4.png"] == g["copy-b.png"] == "patient:p3"
    assert rep["duplicate_sets"] == 2 and rep["groups"] == 14 - 3  # 3 links join 14 images
    for seed in range(50):
        which = grouped_split(df, 0.2, 0.2, seed).set_axis(df["image_name"])
        assert which["covid-1.png"] == which["copy-a.png"] == which["covid-3.png"], seed
        assert which["covid-4.png"] == which["copy-b.png"], seed


def test_radiography_database_layout(tmp_path, make_image):
    root = tmp_path / "COVID-19_Radiography_Dataset"
    for k, folder in enumerate(("COVID", "Normal", "Viral Pneumonia")):
        for i in range(3):
            make_image(root / folder / "images" / f"{folder}-{i}.png", seed=1000 * k + i)
            make_image(root / folder / "masks" / f"{folder}-{i}.png", seed=7000 + i)
        (root / f"{folder}.metadata.xlsx").write_bytes(b"PK")
    (root / "README.md.txt").write_text("readme")
    df, rep = index(root)
    assert rep["per_class"] == {"Covid": 3, "Normal": 3}
    assert rep["skipped_by_reason"] == {
        "mask folder": 9,
        "not an image (.xlsx)": 3,
        "folder of no configured class": 3,
        "not an image (.txt)": 1,
    }
    assert df["path"].str.contains("/images/").all()


def test_fails_clearly_on_missing_root_nothing_found_and_empty_class(tmp_path, make_image):
    with pytest.raises(IndexError_, match="does not exist"):
        index(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexError_, match="no images found"):
        index(tmp_path / "empty")
    make_image(tmp_path / "one" / "NORMAL" / "a.png")
    with pytest.raises(IndexError_, match="class Covid has no usable images"):
        index(tmp_path / "one")


def test_parallel_decode_matches_serial(seed_layout):
    a, _ = build_index(seed_layout, CLASSES, 10_000, workers=1)
    b, _ = build_index(seed_layout, CLASSES, 10_000, workers=2)
    pd.testing.assert_frame_equal(a, b)


def test_pixel_facts_from_the_histogram():
    from cxr_transfer.data.acquisition import pixel_facts

    a = np.zeros((10, 10), np.uint8)
    a[:, 5:] = 255  # half black, half white
    a[0, :5] = 100
    f = pixel_facts(a)
    assert f["black"] == 0.45 and f["white"] == 0.5
    assert f["mean"] == pytest.approx(a.mean()) and f["std"] == pytest.approx(a.std(), abs=1e-3)
    assert (f["p01"], f["p50"], f["p99"]) == (0, 100, 255)


def test_metadata_sources_become_a_column(seed_layout, tmp_path):
    from cxr_transfer.data.index import read_column

    meta = tmp_path / "meta.csv"
    pd.DataFrame({"FILE NAME": ["covid-0", "normal-1.png"], "URL": ["siteA", "siteB"]}).to_csv(
        meta, index=False
    )
    df, rep = index(seed_layout, sources=read_column(meta, "FILE NAME", "URL", "source_column"))
    s = df.set_index("image_name")["source"]
    assert s["covid-0.png"] == "siteA" and s["normal-1.png"] == "siteB" and s["covid-1.png"] == ""
    assert rep["images_without_source"] == 10
    with pytest.raises(IndexError_, match=r"no column 'SITE' \(data.metadata.source_column\)"):
        read_column(meta, "FILE NAME", "SITE", "source_column")


def test_several_metadata_tables_are_merged_and_conflicts_name_both(tmp_path):
    from cxr_transfer.data.index import read_columns

    a, b = tmp_path / "COVID.metadata.csv", tmp_path / "Normal.metadata.csv"
    pd.DataFrame({"FILE NAME": ["COVID-1"], "URL": ["https://a"]}).to_csv(a, index=False)
    pd.DataFrame({"FILE NAME": ["Normal-1"], "URL": ["https://b"]}).to_csv(b, index=False)
    got = read_columns([a, b], "FILE NAME", "URL", "source_column")
    assert got["covid-1"] == "https://a" and got["normal-1"] == "https://b"
    pd.DataFrame({"FILE NAME": ["COVID-1"], "URL": ["https://c"]}).to_csv(b, index=False)
    with pytest.raises(
        IndexError_, match=r"'covid-1' has URL 'https://a' in .*COVID.metadata.csv and 'https://c'"
    ):
        read_columns([a, b], "FILE NAME", "URL", "source_column")


def test_link_loops_dangling_links_and_non_utf8_names_are_skipped_and_listed(seed_layout, tmp_path):
    """Each is one skip with its reason; the good files all remain; data.csv (written by the
    stage) holds only names it can write and read back."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, write_image

    covid = seed_layout / "COVID"
    os.symlink("b.png", covid / "a.png")
    os.symlink("a.png", covid / "b.png")
    os.symlink("/nonexistent/x.png", covid / "x.png")
    os.mkfifo(covid / "pipe.png")  # opening it would block the decode forever
    latin = os.fsdecode(os.fsencode(seed_layout / "NORMAL") + b"/latin\xe9\xff.png")
    write_image(Path(latin), seed=77)
    df, rep = index(seed_layout)
    assert rep["skipped_by_reason"] == {
        "symbolic link loop": 2,
        "dangling symbolic link (its target is missing)": 1,
        "not a regular file (a FIFO, socket or device)": 1,
        "file name is not valid UTF-8 (rename the file)": 1,
    }
    listed = {s["path"]: s["reason"] for s in rep["skipped_files"]}
    assert listed["NORMAL/latin\\xe9\\xff.png"].startswith("file name is not valid UTF-8")
    assert rep["per_class"] == {"Normal": 6, "Covid": 6}
    # the stage end to end: exit 0, a CSV that reads back, a report JSON with the escaped name
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {seed_layout}\nindex:\n  workers: 1\n")
    out, report = tmp_path / "d.csv", tmp_path / "r.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.index",
            "--params",
            str(params),
            "--out",
            str(out),
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert len(pd.read_csv(out)) == 12 and "latin\\\\xe9\\\\xff.png" in report.read_text()


def test_check_params_names_every_entry_dvc_cannot_hash_in_one_line(seed_layout, tmp_path):
    """DVC hashes data.root before index runs and stops at the first such entry with its own error
    (naming no file for a name that is not UTF-8); check_params, which runs first on every dvc
    repro, names them all in one line, folders with such names included."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, write_image

    covid = seed_layout / "COVID"
    os.symlink("b.png", covid / "a.png")
    os.symlink("a.png", covid / "b.png")
    os.symlink("/nonexistent/x.png", covid / "x.png")
    os.mkfifo(covid / "pipe.png")
    normal = os.fsencode(seed_layout / "NORMAL")
    write_image(Path(os.fsdecode(normal + b"/latin\xe9\xff.png")), seed=77)
    os.mkdir(os.fsdecode(normal + b"/scans\xff"))
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {seed_layout}\nexternal: []\n")
    ok = tmp_path / "ok"
    cmd = [sys.executable, "-m", "stages.check_params", "--params", str(params), "--out", str(ok)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and not (tmp_path / "ok").exists(), r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("check_params: error: data.root: 6 entries DVC cannot hash"), line
    for entry, why in [
        ("COVID/a.png", "symbolic link loop"),
        ("COVID/b.png", "symbolic link loop"),
        ("COVID/x.png", "dangling symbolic link (its target is missing)"),
        ("COVID/pipe.png", "not a regular file (a FIFO, socket or device)"),
        ("NORMAL/latin\\xe9\\xff.png", "file name is not valid UTF-8 (rename the file)"),
        ("NORMAL/scans\\xff", "folder name is not valid UTF-8 (rename it)"),
    ]:
        assert f"{seed_layout}/{entry} ({why})" in line, entry
    for f in ("COVID/a.png", "COVID/b.png", "COVID/x.png", "COVID/pipe.png"):
        os.remove(seed_layout / f)
    os.remove(os.fsdecode(normal + b"/latin\xe9\xff.png"))
    os.rmdir(os.fsdecode(normal + b"/scans\xff"))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "ok").read_text() == "params.yaml is valid\n", r.stderr


def test_the_index_stage_writes_data_csv_atomically(seed_layout, tmp_path, monkeypatch):
    """A failure mid-write (here: the CSV writer raising half-way) leaves the previous data.csv
    whole and no temporary file behind."""
    from cxr_transfer.core import cli

    out = tmp_path / "data" / "data.csv"
    out.parent.mkdir()
    out.write_text("path\nold.png\n")
    df, _ = index(seed_layout)

    class Boom(Exception):
        pass

    def half(self, path, **kw):
        Path(path).write_text("path,image_n")  # the first bytes, then the kill
        raise Boom

    monkeypatch.setattr(pd.DataFrame, "to_csv", half)
    with pytest.raises(Boom):
        cli.write_csv(df, out)
    assert out.read_text() == "path\nold.png\n"
    assert [p.name for p in out.parent.iterdir()] == ["data.csv"]
