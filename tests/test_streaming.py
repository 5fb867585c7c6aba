"""Data larger than memory: prepare's peak memory does not grow with the store, and a store over
the memory budget is streamed from its memory map with exactly the batches of the in-memory path."""

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_transfer.runtime.batches import ArrayBatches
from cxr_transfer.runtime.engine import FP32, predict_proba, store_budget
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train.phases import image_batches

ROOT = Path(__file__).resolve().parents[1]


def _store(tmp_path, n=37, size=6) -> np.memmap:
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    x[:] = np.random.default_rng(0).integers(0, 256, x.shape, dtype=np.uint8)
    x.flush()
    return np.load(tmp_path / "x.npy", mmap_mode="r")


@pytest.mark.parametrize("shuffle, balanced", [(False, False), (True, False), (True, True)])
def test_streamed_batches_equal_the_in_memory_ones(tmp_path, shuffle, balanced):
    x = _store(tmp_path)
    y = (np.arange(len(x)) % 3 == 0).astype(int)  # unbalanced, for the balanced sampler
    for epoch in (0, 4):
        mem = image_batches(x, y, 8, "cpu", shuffle, 5, balanced)
        disk = image_batches(x, y, 8, "cpu", shuffle, 5, balanced, budget=x.nbytes - 1)
        assert not mem.streaming and disk.streaming and np.shares_memory(disk.x, x)  # never loaded whole
        mem.set_epoch(epoch)
        disk.set_epoch(epoch)
        a, b = list(mem), list(disk)
        assert len(a) == len(b) == len(mem) == 5
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and xb.shape[1:] == (1, 6, 6)
    assert not image_batches(x, y, 8, "cpu", budget=x.nbytes).streaming  # fits exactly: in memory


def test_streaming_prefetch_keeps_the_order_whatever_its_depth(tmp_path):
    x = _store(tmp_path, n=20)
    ref = [xb for xb, _ in ArrayBatches(x[:, None], np.zeros(20), 3, True, 1)]
    for depth in (1, 2, 7, 50):
        batches = ArrayBatches(x[:, None], np.zeros(20), 3, True, 1, budget=0)
        batches.prefetch = depth
        got = [xb for xb, _ in batches]
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


def test_evaluation_scores_the_same_streamed(tmp_path):
    x = _store(tmp_path, n=12, size=32)
    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, seed=0)
    cpu = torch.device("cpu")
    a = predict_proba(model, "resnet18", spec.mean, spec.std, x, cpu, 5)
    b = predict_proba(model, "resnet18", spec.mean, spec.std, x, cpu, 5, budget=0)
    assert torch.equal(a, b) and FP32.dtype is None


def test_training_on_a_streamed_store_gives_the_same_weights(tmp_path):
    """setup_run + fit with the stores on the device and streamed: the same weights, bit for bit
    (the same batches in the same order, the same arithmetic)."""
    from tests.test_train import SGD_ALL, run

    rng = np.random.default_rng(0)
    y = np.arange(24) % 2
    x = rng.integers(0, 200, (24, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    data = {"train": (xm, y), "val": (xm[:8], y[:8])}
    weights = []
    for budget in (None, 0):
        model, rs, _, _ = run("resnet18", SGD_ALL, data, tmp_path / f"ck{budget}", epochs=2, budget=budget)
        assert rs.streamed is (budget == 0)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_budget_is_the_param_or_half_the_free_memory(monkeypatch):
    import os

    cpu = torch.device("cpu")
    assert store_budget(cpu, 2) == 2 * 2**30 and store_budget(cpu, 0) == 0
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", pages.__getitem__)
    assert store_budget(cpu, "auto") == 1000 * 4096 / 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's 4 processes on this machine: a share each
    assert store_budget(cpu, "auto") == 1000 * 4096 / 2 / 4


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc")
def test_prepare_peak_memory_does_not_grow_with_the_store(tmp_path):
    """A 1,200-image train store at 256 px is 75 MiB; prepare writes it through a memory map in
    chunks, so its anonymous memory (what cannot be paged back to the file) grows far less, and
    a store 4x larger does not make it grow more (the bench's `stream` case, at a tiny size)."""
    from bench.data_cases import prepare_peak

    small, large = prepare_peak(tmp_path / "a", 1200, 256), prepare_peak(tmp_path / "b", 4800, 256)
    assert small["store_mib"] == pytest.approx(1200 * 256 * 256 / 2**20, abs=0.2) and large["store_mib"] > 290
    assert small["peak_anon_growth_mib"] < small["store_mib"] / 4, small
    assert large["peak_anon_growth_mib"] < small["peak_anon_growth_mib"] + 16, (small, large)


@pytest.mark.parametrize(
    "n, procs, sizes, stand_ins",
    [
        (20, 2, [8, 8, 4], 0),
        (17, 2, [8, 9], 0),  # a last batch of one image joins the one before (shuffled batches)
        (19, 3, [8, 11], 0),
        (5, 2, [5], 0),
        (1, 2, [1], 1),  # fewer images than processes: a stand-in row for rank 1
        (2, 3, [2], 1),
    ],
)
def test_shards_deal_out_every_global_batch(n, procs, sizes, stand_ins):
    """Under torchrun each process takes items rank, rank + procs, ... of every global batch (8) of
    the seeded order: together the same batches as one process, no image dropped. A global batch
    smaller than the processes (only a split smaller than them: a short last batch joins the one
    before) gives the processes without a share one stand-in row labelled IGNORE, so every
    process steps together."""
    from cxr_transfer.runtime.batches import IGNORE

    x, y = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), np.arange(n)
    one = list(ArrayBatches(x, y, 8, True, 3))
    shards = [list(ArrayBatches(x, y, 8, True, 3, shard=(r, procs))) for r in range(procs)]
    assert [len(s) for s in shards] == [len(sizes)] * procs
    assert len(ArrayBatches(x, y, 8, True, 3, shard=(0, procs))) == len(sizes)
    seen = []
    for k in range(len(sizes)):
        parts = [s[k] for s in shards]
        real = [int(v) for _, yb in parts for v in yb if v != IGNORE]
        seen += real
        assert len(real) == sizes[k]
        for r, (xb, yb) in enumerate(parts):
            if yb[0] == IGNORE:
                assert len(yb) == 1 and len(real) <= r
            else:
                assert torch.equal(xb.flatten().long(), yb)
    assert sorted(seen) == list(range(n))  # every image, once
    assert sum(int(yb[0] == IGNORE) for s in shards for _, yb in s) == stand_ins
    if procs == 2 and n == 17:  # one process alone: the same merged batches, in the same order
        assert [len(yb) for _, yb in one] == sizes


def test_sync_batchnorm_is_refused_on_the_cpu_and_keeps_the_parameters_on_conversion():
    from cxr_transfer.core.errors import CxrError
    from cxr_transfer.train.distributed import wrap

    with pytest.raises(CxrError, match="train.sync_batchnorm needs CUDA"):
        wrap(torch.nn.BatchNorm2d(3), torch.device("cpu"), sync_batchnorm=True)
    model = build_model("resnet18", None, 2, 0)  # what wrap converts on CUDA: the optimizer's
    before = [id(p) for p in model.parameters()]  # parameters must stay the same objects
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and [id(p) for p in model.parameters()] == before
    assert isinstance(model.bn1, torch.nn.SyncBatchNorm)


@pytest.mark.parametrize(
    "n, procs, sizes",
    [(17, 1, [8, 9]), (16, 1, [8, 8]), (18, 1, [8, 8, 2]), (19, 2, [8, 11]), (20, 2, [8, 8, 4]), (1, 1, [1])],
)
def test_a_last_training_batch_too_small_for_batchnorm_joins_the_one_before(n, procs, sizes):
    """Shuffled (training) batches: a last global batch that would leave a process fewer than two
    images joins the batch before (17 = 8 + 9; under 2 processes 19 = 8 + 11, as 3 images would
    give one process a lone image); every image is still seen once, in the seeded order, and
    unshuffled (evaluation) batches are cut as before."""
    x, y = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), np.arange(n)
    shards = [list(ArrayBatches(x, y, 8, True, 3, shard=(r, procs))) for r in range(procs)]
    assert len(ArrayBatches(x, y, 8, True, 3, shard=(0, procs))) == len(sizes)
    got = [sum(len(s[k][1]) for s in shards) for k in range(len(sizes))]
    assert got == sizes and all(len(s) == len(sizes) for s in shards)
    merged = torch.cat([torch.cat([s[k][1] for s in shards]) for k in range(len(sizes))])
    assert sorted(merged.tolist()) == list(range(n))
    g = torch.Generator().manual_seed(3 * 100_003)  # the epoch's seeded order (seed 3, epoch 0)
    if procs == 1:
        assert torch.equal(merged, torch.randperm(n, generator=g))
    plain = [len(yb) for _, yb in ArrayBatches(x, y, 8)]
    assert plain == [min(8, n - i) for i in range(0, n, 8)]
