"""Decode once: each split becomes a uint8 (N, S, S) grayscale array plus labels, saved as .npy so
training memory-maps it instead of opening and resizing every image in every epoch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxr_transfer.imageio import resize_gray8, to_gray8
from cxr_transfer.parallel import chunked_map


def load_resized(path: str, size: int) -> np.ndarray:
    """Grayscale + Resize((size, size)), as the seed's transform did, minus the float copy."""
    Image.MAX_IMAGE_PIXELS = None  # the index stage already enforced its pixel limit
    with Image.open(path) as im:
        return resize_gray8(to_gray8(im), size)


def _chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    return np.stack([load_resized(p, size) for p in paths]) if paths else np.zeros((0, size, size), np.uint8)


def decode_split(paths: list[str], size: int, workers: int = 0, desc: str = "prepare") -> np.ndarray:
    """(N, size, size) uint8 array of the images at `paths`, decoded in parallel, in order."""
    parts = list(chunked_map(_chunk, paths, (size,), workers, desc))
    return np.concatenate(parts) if parts else np.zeros((0, size, size), np.uint8)


def write_store(out_dir: Path, split: str, x: np.ndarray, y: np.ndarray) -> str:
    """Save one split; returns the sha1 of its pixels and labels (recorded in meta.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / f"{split}_x.npy", x)
    np.save(out_dir / f"{split}_y.npy", y.astype(np.int64))
    return hashlib.sha1(x.tobytes() + y.astype(np.int64).tobytes()).hexdigest()


def prepare_splits(
    split_dir: Path, root: Path, out_dir: Path, size: int, classes: list[str], workers: int = 0
) -> dict:
    """Decode every split csv under split_dir; returns the meta dict written beside the arrays."""
    meta = {"image_size": size, "classes": classes, "splits": {}}
    for split in ("train", "val", "test"):
        df = pd.read_csv(split_dir / f"{split}.csv")
        x = decode_split([str(root / p) for p in df["path"]], size, workers, desc=f"prepare {split}")
        digest = write_store(out_dir, split, x, df["label"].to_numpy())
        meta["splits"][split] = {"n": len(df), "sha1": digest}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_store(prepared: Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images (memory-mapped) and int64 labels of one split."""
    prepared = Path(prepared)
    xp, yp = prepared / f"{split}_x.npy", prepared / f"{split}_y.npy"
    if not xp.exists():
        raise FileNotFoundError(f"{xp} is missing; run `dvc repro prepare` first")
    x = np.load(xp, mmap_mode="r" if mmap else None)
    y = np.load(yp)
    return x, y
