"""Shared fixtures: tiny images written into tmp_path; and one thread per test worker."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist runs a worker per core: each worker, and every stage or process a test starts, gets
# one OpenMP thread, so two workers do not oversubscribe two cores (two processes spinning two
# threads each run many times slower, not twice). Set before any test module imports torch.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def write_image(path: Path, size=(24, 24), value: int | None = None, mode="L", fmt=None, seed=0) -> Path:
    """A small image file; distinct pixels per seed unless `value` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 256, (h, w), dtype=np.uint8) if value is None else np.full((h, w), value, np.uint8)
    im = Image.fromarray(arr, "L")
    if mode == "I;16":
        im = Image.fromarray(arr.astype(np.uint16) * 257)
    elif mode != "L":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


@pytest.fixture
def make_image():
    return write_image


@pytest.fixture
def seed_layout(tmp_path):
    """The seed tutorial's layout: NORMAL/ and COVID/ with 6 distinct PNGs each."""
    root = tmp_path / "raw"
    for k, folder in enumerate(("NORMAL", "COVID")):
        for i in range(6):
            write_image(root / folder / f"{folder.lower()}-{i}.png", seed=100 * k + i)
    return root
