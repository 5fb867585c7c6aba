"""torchrun's arithmetic without torchrun: 2 gloo processes (torch.multiprocessing) train what one
process trains, to 1e-6, where the global batches split unevenly (17 images), with balanced class
weights, with augmentation, and with fewer feature rows than processes; each process resumes with
its own random state."""

import dataclasses
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxr_transfer.core.params import FT_ROBUST, ModeConfig, TrainConfig
from cxr_transfer.runtime.batches import IGNORE
from cxr_transfer.runtime.engine import Precision
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train.checkpoints import Checkpoints
from cxr_transfer.train.distributed import World, block, gather_rows
from cxr_transfer.train.loop import Objective, Steps, Stopping, balanced_class_weights, fit
from cxr_transfer.train.optim import make_optimizer
from cxr_transfer.train.phases import RunContext, setup_run

CPU = torch.device("cpu")
PREC = Precision.for_device(CPU)
ADAM = ModeConfig(pretrained=False, trainable="head", optimizer="adam", lr=1e-2, weight_decay=1e-5)


def data(n: int, size: int = 32):
    rng = np.random.default_rng(7)
    y = (np.arange(n) % 3 == 0).astype(np.int64)  # unbalanced: a third positive
    x = rng.integers(0, 200, (n, size, size), dtype=np.uint8)
    x[y == 1, 8:24, 8:24] += 50
    return {"train": (x, y), "val": (x[:8], y[:8])}


def train(folder, rank: int = 0, size: int = 1, n: int = 17, weights: bool = False, augment: bool = False):
    """fit() on a frozen resnet18 with a trained head (features cached, or recomputed every step
    from augmented images: train.augment and ft_robust's acquisition changes): per-image
    gradients, so one process and several can agree exactly."""
    torch.manual_seed(0)
    world = World(rank, size, rank)
    d = data(n)
    model = build_model("resnet18", None, 2, seed=0)
    tc = TrainConfig(batch_size=8, augment=augment)
    mode = dataclasses.replace(ADAM, acquisition=FT_ROBUST.acquisition) if augment else ADAM
    rs = setup_run(model, get_spec("resnet18"), d, mode, tc, RunContext(CPU, PREC, world=world))
    assert rs.cached_features is not augment
    opt = make_optimizer(rs.loop.trained.parameters(), mode)
    obj = Objective(balanced_class_weights(d["train"][1], 2) if weights else None)
    ck = Checkpoints(folder / f"rank{rank}", "fp")
    state = fit(rs.phases, Steps(opt, PREC, CPU, obj), Stopping(3, 8), ck, world=world)
    seen = sum(int((yb != IGNORE).sum()) for _, yb in rs.train)  # this process's images per epoch
    return {k: v.clone() for k, v in rs.loop.trained.state_dict().items()}, state, seen


def _worker(rank: int, size: int, port: int, folder, job: str, kw: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        if job == "train":
            weights, state, seen = train(folder, rank, size, **kw)
            out = {"weights": weights, "losses": [h.val_loss for h in state.history], "seen": seen}
            torch.save(out, folder / f"out{rank}.pt")
        elif job == "gather":
            n, w = kw["n"], World(rank, size, rank)
            rows = block(w, n)
            part = torch.arange(n, dtype=torch.float32)[rows].view(-1, 1).repeat(1, 3)
            torch.save(gather_rows(part, w, n), folder / f"out{rank}.pt")
        elif job == "rng":  # each process draws differently, saves, scrambles, resumes
            from cxr_transfer.train.checkpoints import FitState

            torch.manual_seed(100 + rank)
            torch.rand(5 + 3 * rank)  # unequal draws: the states differ by rank
            mine = torch.get_rng_state()
            every = [None] * size
            dist.all_gather_object(every, {"cpu": mine})
            m = torch.nn.Linear(2, 2)
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            ck = Checkpoints(folder / "ck", "fp")
            if rank == 0:
                ck.save(m, opt, FitState(), True, rng=every)
            dist.barrier()
            torch.manual_seed(999)
            ck.load(m, opt, rank=rank)
            torch.save(torch.equal(torch.get_rng_state(), mine), folder / f"out{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn(tmp_path, job: str, size: int = 2, **kw) -> list:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(size, port, tmp_path, job, kw), nprocs=size, join=True)
    return [torch.load(tmp_path / f"out{r}.pt", weights_only=True) for r in range(size)]


@pytest.mark.parametrize(
    "kw",
    [{"n": 17}, {"n": 17, "weights": True}, {"n": 17, "augment": True}],
    ids=["odd-images", "balanced-weights", "augmented"],
)
@pytest.mark.slow  # two processes per case
def test_two_processes_train_what_one_process_trains(tmp_path, kw):
    """17 images in global batches of 8: shares 4+4, 4+4, 1+stand-in. Each step's loss is divided
    by the global batch's normaliser (summed over the processes), so uneven shares and class
    weights leave the objective that of one process; augmentation draws for the global batch."""
    one, one_state, one_seen = train(tmp_path / "one", **kw)
    ranks = spawn(tmp_path, "train", **kw)
    assert [r["seen"] for r in ranks] == [9, 8] and one_seen == 17  # sharded: 4+4+1 and 4+4, not 17 each
    two = ranks[0]
    assert one.keys() == two["weights"].keys()
    for k in one:
        assert torch.allclose(one[k], two["weights"][k], rtol=0, atol=1e-6), (
            k,
            (one[k] - two["weights"][k]).abs().max(),
        )
    assert two["losses"] == pytest.approx([h.val_loss for h in one_state.history], abs=1e-6)


@pytest.mark.parametrize("n, size", [(4, 3), (2, 3), (9, 4), (1, 2), (5, 2), (100, 7)])
def test_feature_blocks_differ_by_at_most_one_row(n, size):
    """No process is left an empty block while another has two (ceil-sized blocks did, from
    n <= (processes - 1)^2 on); the blocks tile the rows in order."""
    blocks = [range(n)[block(World(r, size, r), n)] for r in range(size)]
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and [i for b in blocks for i in b] == list(range(n))


@pytest.mark.parametrize("n, size", [(4, 3), (1, 2)])
@pytest.mark.slow
def test_feature_rows_gather_whatever_the_count(tmp_path, n, size):
    """The processes' blocks gather into every row in order, an empty block (fewer rows than
    processes) included."""
    for out in spawn(tmp_path, "gather", size=size, n=n):
        assert torch.equal(out[:, 0], torch.arange(n, dtype=torch.float32))


@pytest.mark.slow
def test_each_process_resumes_with_its_own_random_state(tmp_path):
    assert spawn(tmp_path, "rng") == [True, True]
