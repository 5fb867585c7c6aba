"""Batches as slices of the prepared uint8 store; normalisation and the 3-channel copy at batch time.

A batch costs one fancy-index of a contiguous array and one fused normalise on the device, instead
of `batch_size` PIL decodes, resizes and ToTensor calls in Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from cxr_transfer.core.errors import CxrError

IGNORE = -100  # the label of a stand-in row: cross-entropy, accuracy and counts leave it out


class ArrayBatches:
    """Iterate (uint8 images (B,1,S,S), int64 labels (B,)) over arrays already in memory or on a device.

    Shuffling uses a generator seeded from (seed, epoch), so an epoch's order does not depend on
    what ran before it: a resumed run sees the same batches as an uninterrupted one. `balanced`
    (with shuffle) samples with replacement, each class drawn equally often in expectation.

    With `shard` (rank, processes), each process gets its share of every global batch of the
    epoch's seeded order (items rank, rank + processes, ...): together they see the batches one
    process would, and the global batch size stays `batch_size`. A process whose share of a
    (last, small) global batch is empty gets one stand-in row labelled IGNORE, so every process
    steps together and no image is dropped. `current` is (global batch size, this process's first
    row in it, the step between its rows) of the batch last yielded: augmentation draws for the
    whole global batch and takes these rows, as one process would.

    Shuffled (training) batches never end with a global batch that would leave a process fewer
    than two images: it joins the batch before it. BatchNorm in training mode needs more than one
    value per channel, and a lone image whose last feature map is 1x1 (32 px and smaller) has one.
    Nothing changes where the batch size divides the images or the remainder is larger.

    A numpy store larger than `budget` bytes (None: no limit) is not copied: it stays memory-mapped
    on disk and each batch is read from it when needed, by a background thread that keeps
    `prefetch` batches ready (in pinned memory, copied without blocking, on CUDA). Both ways yield
    the same batches in the same order.
    """

    def __init__(
        self,
        x,
        y,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        device="cpu",
        balanced=False,
        budget: float | None = None,
        shard: tuple[int, int] | None = None,
    ):
        if len(x) == 0:
            raise CxrError("empty split: no images to batch")
        self.device = torch.device(device)
        self.streaming = isinstance(x, np.ndarray) and budget is not None and x.nbytes > budget
        if self.streaming:
            self.x = x  # read batch by batch (a memory-mapped .npy is never loaded whole)
        else:
            self.x = torch.as_tensor(np.array(x) if isinstance(x, np.ndarray) else x).to(device)
        self.y_host = torch.as_tensor(np.asarray(y), dtype=torch.long)
        self.y = self.y_host.to(device)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0
        self.prefetch = 2  # streamed batches read ahead (a test varies it)
        self.shard = shard  # (rank, processes): each batch's items rank, rank + processes, ...
        # balanced: each epoch draws n images with replacement, every class equally likely
        self.weights = (1.0 / torch.bincount(self.y.cpu()).double())[self.y.cpu()] if balanced else None

    def __len__(self) -> int:
        return len(self._spans())

    def _spans(self) -> list[tuple[int, int]]:
        """(start, end) of each global batch in the epoch's order."""
        n, b = len(self.y), self.batch_size
        starts = list(range(0, n, b))
        processes = self.shard[1] if self.shard else 1
        if self.shuffle and len(starts) > 1 and n - starts[-1] < 2 * processes:
            starts.pop()  # a short last batch joins the one before
        return list(zip(starts, [*starts[1:], n], strict=True))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        n = len(self.y)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            return torch.randperm(n, generator=g)
        return torch.multinomial(self.weights, n, replacement=True, generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, order = len(self.y), self._order()
        here = torch.device("cpu") if self.streaming else self.y.device  # where the indices live
        if order is not None:
            order = order.to(here)  # once per epoch, not once per batch
        spans = self._spans()
        picks = [order[i:j] if order is not None else slice(i, j) for i, j in spans]
        sizes = [j - i for i, j in spans]
        rank, size = self.shard or (0, 1)
        stand_in = [False] * len(picks)
        if self.shard is not None:  # the global batch, dealt out: this process's share of each
            picks = [(p if isinstance(p, torch.Tensor) else torch.arange(n, device=here)[p]) for p in picks]
            stand_in = [len(p) <= rank for p in picks]
            picks = [p[:1] if empty else p[rank::size] for p, empty in zip(picks, stand_in, strict=True)]
        batches = self._stream(picks) if self.streaming else ((self.x[i], self.y[i]) for i in picks)
        for k, (xb, yb) in enumerate(batches):
            self.current = (sizes[k], rank, size)
            yield xb, (torch.full_like(yb, IGNORE) if stand_in[k] else yb)

    def _read(self, idx) -> torch.Tensor:
        rows = idx.numpy() if isinstance(idx, torch.Tensor) else idx
        b = self.x[rows]  # a fancy index copies; a slice is a view of the (read-only) map: copy it
        xb = torch.from_numpy(b if b.flags.writeable and b.flags.c_contiguous else np.array(b))
        return xb.pin_memory() if self.device.type == "cuda" else xb

    def _stream(self, picks: list) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="batches") as pool:
            ahead = [pool.submit(self._read, idx) for idx in picks[: self.prefetch]]
            for k, idx in enumerate(picks):
                xb = ahead.pop(0).result()
                if k + self.prefetch < len(picks):
                    ahead.append(pool.submit(self._read, picks[k + self.prefetch]))
                yb = self.y_host[idx]  # the labels go up with their batch: no index upload, no wait
                yield xb.to(self.device, non_blocking=True), to_device(yb, self.device)


class Normalizer(torch.nn.Module):
    """uint8 (B,1,S,S) -> float (B,3,S,S): x/255, then per-channel (x - mean) / std.

    Equivalent to the seed's Grayscale(3) + ToTensor + Normalize, computed on the batch's device in
    one fused pass. With `reuse=True` the output is written into a buffer kept per batch shape and
    valid until the next call: on the CPU, allocating a fresh (B,3,S,S) float tensor per batch (and
    the kernel zeroing its pages) costs more than the arithmetic. The training loop finishes each
    step's backward before the next batch, so reuse is safe there.
    """

    def __init__(self, mean, std, reuse: bool = False):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", -(torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))
        self.reuse = reuse
        self._out: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reuse:
            return torch.addcmul(self.shift, x.float(), self.scale)
        shape = (x.shape[0], 3, *x.shape[2:])
        out = self._out.get(shape)
        if out is None or out.device != x.device:
            out = self._out[shape] = torch.empty(shape, device=x.device)
        return torch.addcmul(self.shift, x, self.scale, out=out)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`: on CUDA from pinned memory without blocking the host (a pageable
    copy waits for the device at every step), elsewhere as it is."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


def warp(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-image translation by `shift` (B, 2) pixels (dx, dy; positive = right, down) and zoom by
    `scale` (B,) about the centre, of a float batch (B, C, H, W). Pixels that come in from outside
    repeat the edge (no wrap-around: the left edge never reappears on the right)."""
    b, _, h, w = x.shape
    inv = 1.0 / scale
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = inv, inv
    theta[:, 0, 2] = -2.0 * shift[:, 0] / w * inv  # affine_grid maps output to input coordinates
    theta[:, 1, 2] = -2.0 * shift[:, 1] / h * inv
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    max_shift: float = 0.06,
    max_scale: float = 0.08,
    max_gamma: float = 0.25,
    max_contrast: float = 0.1,
    max_brightness: float = 0.05,
    rows: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Per-image random translation (a fraction of the size) and zoom, then gamma, contrast and
    brightness jitter, of a uint8 batch (B, 1, H, W), on its device. No flips: anatomy is sided.

    The draws come from the CPU generator `gen`, so a run is reproducible on any device. `rows`
    (global batch size, first row, step): `x` is these rows of a larger batch (one process's
    share under torchrun), and gets the draws that batch's rows get in one process."""
    b, _, h, w = x.shape
    total, first, step = rows or (b, 0, 1)
    r = torch.rand(total, 6, generator=gen)[first::step][:b]
    r = torch.cat([r, torch.full((b - len(r), 6), 0.5)]) if len(r) < b else r  # a stand-in: no change
    r = r * 2 - 1  # uniform in [-1, 1)
    shift = to_device(r[:, :2] * max_shift * torch.tensor([w, h]), x.device)
    r = to_device(r, x.device)
    y = warp(x.float(), shift, 1.0 + r[:, 2] * max_scale) / 255.0
    gamma = torch.exp(r[:, 3] * math.log1p(max_gamma)).view(b, 1, 1, 1)
    y = y.clamp(0, 1) ** gamma
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (1.0 + r[:, 4] * max_contrast).view(b, 1, 1, 1)
    y = (y - mean) * contrast + mean + (r[:, 5] * max_brightness).view(b, 1, 1, 1)
    return (y * 255.0).clamp_(0, 255).round_().to(torch.uint8)


def _resampled(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each image down-sampled to `factor` (B,) of its size (antialiased) and back up, bilinear:
    a detector or a converter with fewer pixels."""
    h, w = y.shape[-2:]
    out = []
    for img, f in zip(y, factor.tolist(), strict=True):
        small = (max(1, round(h * f)), max(1, round(w * f)))
        if small == (h, w):
            out.append(img)
            continue
        d = F.interpolate(img[None], size=small, mode="bilinear", antialias=True, align_corners=False)
        out.append(F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[0])
    return torch.stack(out)


def _blurred(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by a Gaussian of its own `sigma` (B,) pixels (torchvision's kernel,
    3 sigma each side, edges reflected); sigma below 0.1 px leaves it as is."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for img, s in zip(y, sigma.tolist(), strict=True):
        if s < 0.1:
            out.append(img)
            continue
        k = 2 * math.ceil(3 * s) + 1
        k = min(k, 2 * (min(img.shape[-2:]) // 2) - 1)  # an odd kernel no wider than the image
        out.append(TF.gaussian_blur(img, [k, k], [s, s]))
    return torch.stack(out)


def acquisition_shift(x: torch.Tensor, gen: torch.Generator, acq, rows: tuple[int, int, int] | None = None):
    """A uint8 batch (B, 1, H, W) as other scanners and exposures might have made it, on its
    device: per image, a resolution drop, a blur, additive noise, then gamma, contrast and
    brightness, each by `acq`'s range (an AcquisitionConfig; a key at 0 is skipped).

    Draws come from the CPU generator `gen`: six per image, then (with noise) one field per
    image, each for the global batch of `rows` (size, first row, step) and sliced to this
    process's rows, as augment_batch does, so one process and several, and a resumed run and an
    uninterrupted one, draw the same changes for the same images."""
    b, _, h, w = x.shape
    total, first, step = rows or (b, 0, 1)
    u = torch.rand(total, 6, generator=gen)[first::step][:b]
    u = torch.cat([u, torch.zeros(b - len(u), 6)]) if len(u) < b else u  # a stand-in row: no change
    field = None
    if acq.noise:
        field = torch.randn(total, 1, h, w, generator=gen)[first::step][:b]
        field = torch.cat([field, torch.zeros(b - len(field), 1, h, w)]) if len(field) < b else field
    factor, sigma = 1.0 - u[:, 0] * acq.resolution, u[:, 1] * acq.blur  # read on the host: no sync
    u = to_device(u, x.device)
    s = u * 2 - 1
    y = x.float() / 255.0
    if acq.resolution:
        y = _resampled(y, factor)
    if acq.blur:
        y = _blurred(y, sigma)
    if field is not None:
        y = y + to_device(field, x.device) * (u[:, 2] * acq.noise).view(b, 1, 1, 1)
    if acq.gamma:
        y = y.clamp(0, 1) ** torch.exp(s[:, 3] * math.log1p(acq.gamma)).view(b, 1, 1, 1)
    if acq.contrast:
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * (1.0 + s[:, 4] * acq.contrast).view(b, 1, 1, 1) + mean
    if acq.brightness:
        y = y + (s[:, 5] * acq.brightness).view(b, 1, 1, 1)
    return (y * 255.0).clamp_(0, 255).round_().to(torch.uint8)
