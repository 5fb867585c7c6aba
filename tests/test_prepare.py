import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms

from cxr_transfer.core.params import DataConfig, PrepareConfig
from cxr_transfer.core.registry import IMAGENET_MEAN, IMAGENET_STD
from cxr_transfer.data import prepare as prepare_module
from cxr_transfer.data.prepare import decode_split, load_folds, load_meta, load_store, prepare_splits
from cxr_transfer.data.split import fold_roles
from cxr_transfer.runtime.batches import ArrayBatches, Normalizer, augment_batch, warp
from cxr_transfer.train.phases import image_batches


def data_at(root) -> DataConfig:
    """The demo's two classes at `root`."""
    return DataConfig(str(root), {"Normal": ("NORMAL",), "Covid": ("COVID",)})


def test_store_equals_the_seeds_transform_exactly(tmp_path, make_image):
    """Our uint8 store + batch-time normalisation == Grayscale(3)+Resize+ToTensor+Normalize."""
    paths = [
        make_image(tmp_path / f"{i}.png", size=(70, 50), mode=m, seed=i) for i, m in enumerate(["L", "RGB"])
    ]
    x = decode_split([str(p) for p in paths], 32, workers=1)
    ours = Normalizer(IMAGENET_MEAN, IMAGENET_STD)(torch.as_tensor(x)[:, None])
    seed = transforms.Compose(
        [
            transforms.Grayscale(3),
            transforms.Resize((32, 32)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ref = torch.stack([seed(Image.open(p)) for p in paths])
    assert ours.shape == ref.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_prepare_splits_writes_memory_mappable_stores(tmp_path, seed_layout):
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    files = sorted(seed_layout.rglob("*.png"))
    rows = [{"path": str(f.relative_to(seed_layout)), "label": int("COVID" in str(f))} for f in files]
    for s, sl in (("train", slice(0, 8)), ("val", slice(8, 10)), ("test", slice(10, 12))):
        pd.DataFrame(rows[sl]).to_csv(split_dir / f"{s}.csv", index=False)
    metas = prepare_splits(split_dir, tmp_path / "prep", data_at(seed_layout), PrepareConfig(16, workers=2))
    assert {s: m["n"] for s, m in metas.items()} == {"train": 8, "val": 2, "test": 2}
    x, y = load_store(tmp_path / "prep", "train")
    assert isinstance(x, np.memmap) and x.dtype == np.uint8 and x.shape == (8, 16, 16)
    assert y.tolist() == [r["label"] for r in rows[:8]]
    # one folder per split, so DVC can give training the train and val stores and not the test one;
    # folds/ says there are no folds
    assert sorted(p.name for p in (tmp_path / "prep").iterdir()) == ["folds", "test", "train", "val"]
    assert load_folds(tmp_path / "prep") is None
    meta = load_meta(tmp_path / "prep", "test")
    assert meta == json.loads((tmp_path / "prep" / "test" / "meta.json").read_text())
    assert meta["image_size"] == 16 and meta["n"] == 2 and meta["classes"] == ["Normal", "Covid"]
    with pytest.raises(FileNotFoundError, match="run `dvc repro prepare`"):
        load_store(tmp_path / "nothing", "train")


def test_k_folds_decode_each_image_once_and_index_the_folds(tmp_path, seed_layout, monkeypatch):
    """folds/ holds every image once (decoded once) with each fold's parts as index lists; the
    train/val/test stores are fold 0's parts, copied from it, identical to decoding them."""
    files = sorted(seed_layout.rglob("*.png"))
    df = pd.DataFrame(
        {
            "path": [str(f.relative_to(seed_layout)) for f in files],
            "label": [int("COVID" in str(f)) for f in files],
            "class": ["Covid" if "COVID" in str(f) else "Normal" for f in files],
            "group": [f.name for f in files],
        }
    )
    roles = fold_roles(df, 3, 0.5, seed=0)
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    pd.concat([df, roles], axis=1).to_csv(split_dir / "folds.csv", index=False)
    for s in ("train", "val", "test"):
        df[roles["f0"] == s].to_csv(split_dir / f"{s}.csv", index=False)
    decoded = []
    real = prepare_module.load_resized
    monkeypatch.setattr(prepare_module, "load_resized", lambda p, *a: decoded.append(p) or real(p, *a))
    prepare_splits(split_dir, tmp_path / "prep", data_at(seed_layout), PrepareConfig(16, workers=1))
    assert sorted(decoded) == sorted(str(seed_layout / p) for p in df["path"])  # each image once
    folds = load_folds(tmp_path / "prep")
    assert folds["k"] == 3 and len(folds["folds"]) == 3
    tested = sorted(i for f in folds["folds"] for i in f["test"])
    assert tested == list(range(len(df)))  # every image in one fold's test part
    x, y = load_store(tmp_path / "prep", "folds")
    assert y.tolist() == df["label"].tolist()
    for s in ("train", "val", "test"):
        xs, ys = load_store(tmp_path / "prep", s)
        idx = folds["folds"][0][s]
        assert idx == np.flatnonzero(roles["f0"] == s).tolist()
        assert np.array_equal(xs, x[idx]) and np.array_equal(ys, y[idx])
        assert np.array_equal(xs, decode_split([str(seed_layout / p) for p in df["path"].iloc[idx]], 16, 1))
    assert load_meta(tmp_path / "prep", "folds")["n"] == len(df)


@pytest.mark.parametrize("n, batch, sizes", [(10, 4, [4, 4, 2]), (3, 32, [3]), (8, 8, [8])])
def test_batches_are_slices_and_a_batch_larger_than_the_split_works(n, batch, sizes):
    x = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2)
    b = image_batches(x, np.arange(n), batch, "cpu")
    got = list(b)
    assert [len(yb) for _, yb in got] == sizes and len(b) == len(sizes)
    assert torch.equal(torch.cat([xb for xb, _ in got])[:, 0], torch.as_tensor(x))


def test_shuffle_depends_only_on_seed_and_epoch():
    x, y = np.zeros((20, 1)), np.arange(20)
    a = ArrayBatches(x, y, 5, shuffle=True, seed=3)
    b = ArrayBatches(x, y, 5, shuffle=True, seed=3)
    a.set_epoch(2)
    list(ArrayBatches(x, y, 5, shuffle=True, seed=3))  # other iterators do not matter
    b.set_epoch(2)
    order_a = torch.cat([yb for _, yb in a])
    assert torch.equal(order_a, torch.cat([yb for _, yb in b]))
    assert sorted(order_a.tolist()) == list(range(20)) and order_a.tolist() != list(range(20))
    b.set_epoch(3)
    assert not torch.equal(order_a, torch.cat([yb for _, yb in b]))


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="empty split"):
        ArrayBatches(np.zeros((0, 1, 4, 4)), np.zeros(0), 4)


def test_normalizer_reusing_its_buffer_gives_the_same_values():
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    fresh = Normalizer(IMAGENET_MEAN, IMAGENET_STD)
    reuse = Normalizer(IMAGENET_MEAN, IMAGENET_STD, reuse=True)
    a, b = reuse(x[:4]), reuse(x[:4])
    assert a.data_ptr() == b.data_ptr()  # one buffer per batch shape
    assert torch.equal(a, fresh(x[:4]))
    assert torch.equal(reuse(x[4:]), fresh(x[4:]))  # a last, smaller batch gets its own buffer


@pytest.mark.parametrize("dx", [-3, -1, 2, 3])
def test_warp_translates_without_wrap_around(dx):
    x = torch.zeros(1, 1, 8, 8)
    x[..., 0] = 255.0  # a bright left edge
    y = warp(x, torch.tensor([[float(dx), 0.0]]), torch.ones(1))[0, 0]
    if dx > 0:  # content moves right; the columns that come in repeat the edge
        assert torch.equal(y[:, : dx + 1], torch.full((8, dx + 1), 255.0))
        assert y[:, dx + 1 :].abs().max() == 0
    else:  # the bright edge leaves on the left and must not reappear on the right
        assert y.abs().max() == 0


def test_augmentation_is_per_image_seeded_and_keeps_the_range():
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = 40 + 120 * xx / 31 + 60 * np.exp(-((xx - 20) ** 2 + (yy - 12) ** 2) / 40)  # like anatomy
    img = torch.as_tensor(smooth.astype(np.uint8))[None, None]
    batch = img.repeat(8, 1, 1, 1)
    a = augment_batch(batch, torch.Generator().manual_seed(1))
    b = augment_batch(batch, torch.Generator().manual_seed(1))
    assert a.dtype == torch.uint8 and a.shape == batch.shape and torch.equal(a, b)
    flat = a.flatten(1).float()
    assert len({tuple(r.tolist()) for r in flat}) == 8  # every image drew its own transform
    # small changes: mean brightness within the jitter, structure kept (correlation with the original)
    orig = img.flatten().float()
    for r in flat:
        assert abs(r.mean() - orig.mean()) < 0.15 * 255
        assert torch.corrcoef(torch.stack([r, orig]))[0, 1] > 0.9


def _anatomy(n: int = 8, size: int = 32) -> torch.Tensor:
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = 40 + 120 * xx / (size - 1) + 60 * np.exp(-((xx - 20) ** 2 + (yy - 12) ** 2) / 40)
    return torch.as_tensor(smooth.astype(np.uint8))[None, None].repeat(n, 1, 1, 1)


def _high_freq(x: torch.Tensor) -> torch.Tensor:
    """Per image: mean absolute difference of neighbouring pixels (what blur and down-sampling remove)."""
    x = x.float()
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))


def test_each_acquisition_change_does_what_its_key_says():
    from cxr_transfer.core.params import AcquisitionConfig
    from cxr_transfer.runtime.batches import acquisition_shift

    grid = _anatomy()
    grid[..., ::4, :] = 255  # fine detail: lines every 4 rows
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(acquisition_shift(grid, gen(), AcquisitionConfig()), grid)  # all off: unchanged
    blur = acquisition_shift(grid, gen(), AcquisitionConfig(blur=2.0))
    low = acquisition_shift(grid, gen(), AcquisitionConfig(resolution=0.7))
    u = torch.rand(8, 6, generator=gen())  # the draws each call made, per image
    sigma, kept = u[:, 1] * 2.0, 1 - u[:, 0] * 0.7
    # a blur of sigma >= 0.5 px, or a resolution drop below 90%, removes detail; sharper ones may
    # round back to the same pixels; and more blur removes more
    assert (sigma >= 0.5).sum() >= 4 and (kept < 0.9).sum() >= 4  # the draws test both
    assert (_high_freq(blur)[sigma >= 0.5] < _high_freq(grid)[0] * 0.8).all()
    assert (_high_freq(low)[kept < 0.9] < _high_freq(grid)[0] * 0.9).all()
    order = sigma.argsort()
    assert (_high_freq(blur)[order].diff() <= 1e-3).all()
    flat = torch.full((8, 1, 32, 32), 128, dtype=torch.uint8)
    noisy = acquisition_shift(flat, gen(), AcquisitionConfig(noise=0.1)).float()
    sd = noisy.flatten(1).std(dim=1)
    u = torch.rand(8, 6, generator=gen())[:, 2]  # the draws it made: sd = u * 0.1 * 255
    assert torch.allclose(sd, u * 25.5, rtol=0.15, atol=1.0)
    bright = acquisition_shift(flat, gen(), AcquisitionConfig(brightness=0.2)).float().mean(dim=(1, 2, 3))
    s = torch.rand(8, 6, generator=gen())[:, 5] * 2 - 1
    assert torch.allclose(bright, (128 / 255 + s * 0.2) * 255, atol=0.6)
    gamma = acquisition_shift(grid, gen(), AcquisitionConfig(gamma=0.5)).float()
    g = torch.exp((torch.rand(8, 6, generator=gen())[:, 3] * 2 - 1) * np.log1p(0.5))
    want = ((grid.float() / 255) ** g.view(8, 1, 1, 1) * 255).round()
    assert torch.equal(gamma, want)


def test_acquisition_draws_for_the_global_batch_so_shares_match_one_process():
    """A process given rows first::step of a global batch gets exactly those rows of what one
    process makes of the whole batch: noise fields included."""
    from cxr_transfer.core.params import FT_ROBUST
    from cxr_transfer.runtime.batches import acquisition_shift

    batch = _anatomy(7)
    batch[:, :, 4:8] = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1) * 30  # distinct images
    whole = acquisition_shift(batch, torch.Generator().manual_seed(2), FT_ROBUST.acquisition)
    for first in (0, 1):
        share = batch[first::2]
        got = acquisition_shift(
            share, torch.Generator().manual_seed(2), FT_ROBUST.acquisition, rows=(7, first, 2)
        )
        assert torch.equal(got, whole[first::2])
    other = acquisition_shift(batch, torch.Generator().manual_seed(3), FT_ROBUST.acquisition)
    assert not torch.equal(other, whole)  # another seed, other changes


def test_the_store_digest_is_the_sha1_of_pixels_then_labels_read_in_slices():
    import hashlib

    from cxr_transfer.data.prepare import store_digest

    x = np.random.default_rng(0).integers(0, 256, (2500, 6, 6), dtype=np.uint8)  # three slices of 1024
    y = np.arange(2500) % 3
    expect = hashlib.sha1(x.tobytes() + y.astype(np.int64).tobytes()).hexdigest()
    assert store_digest(x, y) == expect
