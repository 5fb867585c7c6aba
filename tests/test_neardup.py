import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_transfer.data.index import build_index
from cxr_transfer.data.neardup import framed_phash, near_pairs, phash, to_bits
from cxr_transfer.data.split import grouped_split, join_near_duplicates
from cxr_transfer.data.synth import render_cxr

CLASSES = {"Normal": ("NORMAL",), "Covid": ("COVID",)}


@pytest.mark.parametrize("max_distance", [0, 3, 12, 40])
def test_the_multi_index_search_equals_a_brute_force_scan(max_distance):
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2, (150, 256), dtype=np.uint8)
    copies = base[:50].copy()
    for row in copies:  # near copies at 0..45 bits
        row[rng.choice(256, rng.integers(0, 46), replace=False)] ^= 1
    bits = np.concatenate([base, copies])
    i, j, d = near_pairs(bits, max_distance)
    full = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    ii, jj = np.triu_indices(len(bits), 1)
    keep = full[ii, jj] <= max_distance
    assert list(zip(i, j, d, strict=True)) == list(zip(ii[keep], jj[keep], full[ii, jj][keep], strict=True))
    assert len(i) >= (max_distance >= 40) * 40  # the search is exercised, not empty by luck


def _variants(img: np.ndarray) -> dict[str, bytes]:
    """Resized, re-encoded and slightly cropped copies of one radiograph (128 px): each crop trims
    2 pixels (1.6%) from one side or 1 from every side, as exports and re-uploads do."""
    im = Image.fromarray(img)
    w = im.width
    out = {}
    for name, v, fmt in (
        ("resized", im.resize((100, 100)), "PNG"),
        ("jpeg", im, "JPEG"),
        ("resized-jpeg", im.resize((120, 120)), "JPEG"),
        ("crop-left", im.crop((2, 0, w, w)), "PNG"),
        ("crop-top-jpeg", im.crop((0, 2, w, w)), "JPEG"),
        ("crop-all-jpeg", im.crop((1, 1, w - 1, w - 1)), "JPEG"),
    ):
        buf = io.BytesIO()
        v.save(buf, format=fmt, quality=75)
        out[name] = (buf.getvalue(), fmt.lower())
    return out


def _distances(img: np.ndarray) -> dict[str, tuple[int, int]]:
    """(whole-image, framed) pHash distances of each variant from the original."""
    ref = to_bits([phash(img), framed_phash(img)])
    out = {}
    for name, (data, _) in _variants(img).items():
        g = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        out[name] = tuple(int(v) for v in (to_bits([phash(g), framed_phash(g)]) != ref).sum(1))
    return out


def test_crops_move_the_whole_image_hash_but_not_the_framed_one():
    """Of 20 seeded radiographs, how many copies each hash finds within its limit (12 and 24 bits):
    the whole-image hash finds every resized or re-encoded copy and almost no cropped one; the
    framed hash finds the cropped ones (19 of 20 for the 2-pixel top crop re-encoded as JPEG)."""
    found = {}
    for i in range(20):
        img = render_cxr(np.random.default_rng([5, i]), 128, covid=bool(i % 2))
        for k, (p, f) in _distances(img).items():
            n = found.setdefault(k, [0, 0, 0])
            n[0], n[1], n[2] = n[0] + (p <= 12), n[1] + (f <= 24), n[2] + (p <= 12 or f <= 24)
    assert found == {  # [whole-image hash, framed hash, either]
        "resized": [20, 19, 20],
        "jpeg": [20, 20, 20],
        "resized-jpeg": [20, 19, 20],
        "crop-left": [2, 20, 20],
        "crop-top-jpeg": [2, 19, 19],
        "crop-all-jpeg": [6, 20, 20],
    }


def test_distinct_radiographs_are_not_joined():
    """400 distinct synthetic radiographs (the demo's size), which all share one anatomy: no pair
    is within either limit (at 20 bits the whole-image hash already joins distinct ones at 2000)."""
    imgs = [render_cxr(np.random.default_rng([11, i]), 128, covid=bool(i % 2)) for i in range(400)]
    df = pd.DataFrame({"group": [str(i) for i in range(400)], "phash": [phash(a) for a in imgs]}).assign(
        phash_framed=[framed_phash(a) for a in imgs]
    )
    assert join_near_duplicates(df, 12, 24)[1] == 0


def test_resized_reencoded_and_cropped_copies_are_found_and_kept_in_one_split(tmp_path):
    root = tmp_path / "raw"
    originals = 0
    for label, folder in enumerate(("NORMAL", "COVID")):
        for i in range(12):
            img = render_cxr(np.random.default_rng([9, label, i]), 128, covid=bool(label))
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / folder / f"{i}.png")
            originals += 1
            if i < 4:  # four images per class come with near copies (the crop all round: not all)
                for name, (data, ext) in _variants(img).items():
                    if name != "crop-all-jpeg":
                        (root / folder / f"{i}-{name}.{ext}").write_bytes(data)
    df, _ = build_index(root, CLASSES, 10**6, workers=1)
    assert df["group"].nunique() == len(df)  # the copies' pixels differ: exact groups miss them
    joined, n_pairs = join_near_duplicates(df, 12, 24)
    assert joined["group"].nunique() == originals  # every copy joined its original, nothing else
    assert n_pairs >= 2 * 4 * 5  # at least each copy with its original
    for seed in range(20):
        which = grouped_split(joined, 0.2, 0.2, seed).set_axis(joined["path"])
        for folder in ("NORMAL", "COVID"):
            for i in range(4):
                names = [f"{folder}/{i}.png"] + [p for p in which.index if p.startswith(f"{folder}/{i}-")]
                assert len(names) == 6 and which[names].nunique() == 1, (seed, names)
    alone, _ = join_near_duplicates(df, 12, None)  # the whole-image hash alone misses the crops
    assert alone["group"].nunique() > originals


def test_joining_is_off_with_null_and_the_hashes_are_256_bits():
    img = render_cxr(np.random.default_rng(0), 64, covid=False)
    h, f = phash(img), framed_phash(img)
    assert len(h) == len(f) == 64 and to_bits([h, f]).shape == (2, 256)
    df = pd.DataFrame({"group": ["a", "b"], "phash": [h, h], "phash_framed": [f, f]})
    assert join_near_duplicates(df, None, None)[1] == 0
    joined, n = join_near_duplicates(df, 0, None)
    assert n == 1 and joined["group"].tolist() == ["a", "a"]
    assert join_near_duplicates(df, None, 0)[1] == 1 and join_near_duplicates(df, 0, 0)[1] == 1  # listed once


def test_the_frame_follows_the_body_not_the_border():
    """A black border added around the image (padding, letterboxing) leaves the frame in place."""
    img = render_cxr(np.random.default_rng(3), 128, covid=True)
    padded = np.pad(img, ((0, 0), (12, 12)))
    d = (to_bits([framed_phash(img)]) != to_bits([framed_phash(padded)])).sum()
    assert d <= 24 and (to_bits([phash(img)]) != to_bits([phash(padded)])).sum() > 24


def test_the_probe_flags_near_pairs_of_one_class_across_splits_not_of_two():
    """At the probe's looser limits: a test image 20 bits from a training image of its class is
    flagged (a probable near copy the split left apart); a pair of two classes, or one between
    training and validation, is counted only (different radiographs can hash alike)."""
    from cxr_transfer.audit.probes import near_duplicate_report

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, (4, 256)).astype(bool)

    def flip(bits, n):
        out = bits.copy()
        out[:n] = ~out[:n]
        return out

    def hexes(rows):
        return [np.packbits(r).tobytes().hex() for r in rows]

    far = [flip(b, 0) for b in base]
    train = pd.DataFrame({"path": ["a", "b"], "class": ["Covid", "Normal"], "phash": hexes([far[0], far[1]])})
    test = pd.DataFrame(
        {
            "path": ["a2", "c"],
            "class": ["Covid", "Covid"],
            "phash": hexes([flip(far[0], 20), flip(far[1], 18)]),
        }
    )
    for f in (train, test):
        f["phash_framed"] = f["phash"]
    summary, pairs = near_duplicate_report({"train": train, "test": test}, 24, None)
    assert summary["cross_split_pairs"] == 2 and summary["test_pairs_same_class"] == 1 and summary["flagged"]
    assert set(zip(pairs["path_a"], pairs["path_b"], strict=True)) == {("a", "a2"), ("b", "c")}
    summary, _ = near_duplicate_report({"train": train, "test": test.iloc[1:]}, 24, None)
    assert summary["cross_split_pairs"] == 1 and not summary["flagged"]  # two classes: counted only
    summary, _ = near_duplicate_report({"train": train, "val": test.iloc[:1]}, 24, None)
    assert summary["cross_split_pairs"] == 1 and not summary["flagged"]  # no test image in it
