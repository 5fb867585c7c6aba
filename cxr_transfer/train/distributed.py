"""Several processes, one per device (torchrun): who this process is, and the few collective steps.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one process (rank 0 of 1) and
nothing here communicates. The backend is nccl on CUDA, gloo on the CPU."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cxr_transfer.core.errors import CxrError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, DVCLive and the model."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank, self.size) if self.size > 1 else None


def start(device_pref: str) -> tuple[World, torch.device | None]:
    """Join the process group torchrun set up (a no-op for one process). Returns this process's
    place and, with several processes, its device (cuda:LOCAL_RANK, or the CPU); None = pick as usual."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "mps":
        raise CxrError("train.device=mps cannot run under torchrun; use one process (train.launcher=python)")
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, size, local), torch.device("cuda", local) if cuda else torch.device("cpu")


def wrap(module: nn.Module, device: torch.device, sync_batchnorm: bool = False) -> nn.Module:
    """DistributedDataParallel over what trains now (parameters frozen at this point are left out,
    so each phase wraps anew): gradients are averaged over the processes in backward. With
    `sync_batchnorm`, BatchNorm layers normalise by the statistics of the whole global batch
    (PyTorch's SyncBatchNorm, CUDA only; the layers keep their parameters and buffers)."""
    if sync_batchnorm:
        if device.type != "cuda":
            raise CxrError(
                "train.sync_batchnorm needs CUDA (PyTorch's SyncBatchNorm runs on GPUs); "
                "set it false on the CPU"
            )
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def gather_rows(part: torch.Tensor, world: World, n: int) -> torch.Tensor:
    """The (n, ...) tensor whose rows the processes computed in contiguous blocks (`block`); a
    process with no rows (n < processes) passes a (0, ...) `part` of the rows' shape."""
    if world.size == 1:
        return part
    size = -(-n // world.size)
    padded = torch.zeros((size, *part.shape[1:]), dtype=part.dtype, device=part.device)
    padded[: len(part)] = part
    out = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(out, padded)
    return torch.cat([o[: len(range(n)[block(world, n, r)])] for r, o in enumerate(out)])


def block(world: World, n: int, rank: int | None = None) -> slice:
    """The contiguous block of n rows that `rank` (default: this process) computes: sizes differ
    by at most one, so a block is empty only when there are fewer rows than processes (ceil-sized
    blocks left the last processes nothing from n <= (processes - 1)^2 on)."""
    r = world.rank if rank is None else rank
    return slice(r * n // world.size, (r + 1) * n // world.size)


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


_WORKER = {"left": False}  # this process left a group as a rank other than 0


def stop(world: World) -> None:
    """Leave the process group together: every rank waits at a barrier before it is destroyed, so
    no rank exits while another still talks to it."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _WORKER["left"] = _WORKER["left"] or not world.main


def exit_if_worker() -> None:
    """A rank other than 0 ends here once its training is done, skipping the interpreter's
    shutdown: gloo's threads could still abort it there under load after the group was destroyed
    ("terminate called without an active exception", exit -6, the run failed). It writes nothing
    but its log, flushed first."""
    if _WORKER["left"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
