import io

import numpy as np
import pytest
from PIL import Image

from cxr_transfer.index import build_index
from cxr_transfer.neardup import near_pairs, phash, to_bits
from cxr_transfer.split import grouped_split, join_near_duplicates
from cxr_transfer.synth import render_cxr

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
    """A resized copy, a re-encoded JPEG, and a resized, re-encoded JPEG of one radiograph.
    (Crops shift the pHash by 14-32 bits of 256 even at 2 pixels in 128: not found yet.)"""
    im = Image.fromarray(img)
    out = {}
    for name, v, fmt in (
        ("resized", im.resize((100, 100)), "PNG"),
        ("jpeg", im, "JPEG"),
        ("resized-jpeg", im.resize((120, 120)), "JPEG"),
    ):
        buf = io.BytesIO()
        v.save(buf, format=fmt, quality=75)
        out[name] = (buf.getvalue(), fmt.lower())
    return out


def test_resized_and_reencoded_copies_are_found_and_kept_in_one_split(tmp_path):
    root = tmp_path / "raw"
    originals = 0
    for label, folder in enumerate(("NORMAL", "COVID")):
        for i in range(12):
            img = render_cxr(np.random.default_rng([9, label, i]), 128, covid=bool(label))
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / folder / f"{i}.png")
            originals += 1
            if i < 4:  # four images per class come with three near copies each
                for name, (data, ext) in _variants(img).items():
                    (root / folder / f"{i}-{name}.{ext}").write_bytes(data)
    df, _ = build_index(root, CLASSES, 10**6, workers=1)
    assert df["group"].nunique() == len(df)  # the copies' pixels differ: exact groups miss them
    joined, n_pairs = join_near_duplicates(df, 20)
    assert joined["group"].nunique() == originals  # every copy joined its original, nothing else
    assert n_pairs == 2 * 4 * 6  # 4 images in a set: 6 pairs per set, 4 sets per class
    for seed in range(20):
        which = grouped_split(joined, 0.2, 0.2, seed).set_axis(joined["path"])
        for folder in ("NORMAL", "COVID"):
            for i in range(4):
                names = [f"{folder}/{i}.png"] + [p for p in which.index if p.startswith(f"{folder}/{i}-")]
                assert len(names) == 4 and which[names].nunique() == 1, (seed, names)


def test_joining_is_off_with_null_and_phash_is_256_bits():
    img = render_cxr(np.random.default_rng(0), 64, covid=False)
    h = phash(img)
    assert len(h) == 64 and to_bits([h]).shape == (1, 256)
    import pandas as pd

    df = pd.DataFrame({"group": ["a", "b"], "phash": [h, h]})
    assert join_near_duplicates(df, None)[1] == 0
    joined, n = join_near_duplicates(df, 0)
    assert n == 1 and joined["group"].tolist() == ["a", "a"]
