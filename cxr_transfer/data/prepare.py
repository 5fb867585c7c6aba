"""Decode once: each split becomes a uint8 (N, S, S) grayscale array plus labels, saved as .npy so
training memory-maps it instead of opening and resizing every image in every epoch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_transfer.core.cli import atomic_path, write_json, write_text
from cxr_transfer.core.parallel import chunked_map
from cxr_transfer.core.params import DataConfig, PrepareConfig
from cxr_transfer.core.profile import phase
from cxr_transfer.data.imageio import read_gray
from cxr_transfer.data.preprocess import PLAIN, Preprocess, preprocessed


def load_resized(path: str, size: int, bits_stored: int | None = None, pre: Preprocess = PLAIN) -> np.ndarray:
    """Grayscale + Resize((size, size)), as the seed's transform did, minus the float copy; by
    index's decoding rule (read_gray), with no pixel limit (index enforced it); cropped and
    standardised as `pre` says (predict applies the same function to new images)."""
    return preprocessed(read_gray(path, None, bits_stored, colour=False)[0], size, pre)


def _chunk(args: tuple[list[str], int, int | None, Preprocess]) -> np.ndarray:
    paths, size, bits, pre = args
    if not paths:
        return np.zeros((0, size, size), np.uint8)
    return np.stack([load_resized(p, size, bits, pre) for p in paths])


def decode_into(
    out: np.ndarray,
    paths: list[str],
    size: int,
    workers: int,
    desc: str,
    bits_stored=None,
    pre: Preprocess = PLAIN,
) -> None:
    """Decode the images at `paths` into rows of `out` (an array or a memory-mapped file), in
    order, a chunk at a time: memory holds one chunk per worker, never the whole split twice."""
    k = 0
    for part in chunked_map(_chunk, paths, (size, bits_stored, pre), workers, desc):
        out[k : k + len(part)] = part
        k += len(part)


def decode_split(
    paths: list[str],
    size: int,
    workers: int = 0,
    desc: str = "prepare",
    bits_stored: int | None = None,
    pre: Preprocess = PLAIN,
) -> np.ndarray:
    """(N, size, size) uint8 array of the images at `paths`, decoded in parallel, in order."""
    out = np.empty((len(paths), size, size), np.uint8)
    decode_into(out, paths, size, workers, desc, bits_stored, pre)
    return out


def preprocess_of(prepare: PrepareConfig) -> Preprocess:
    return Preprocess(prepare.intensity, prepare.crop)


def store_digest(x: np.ndarray, y: np.ndarray) -> str:
    """sha1 of a split's pixels then labels, read in slices (no copy of the whole store)."""
    h = hashlib.sha1()
    for i in range(0, len(x), 1024):
        h.update(np.ascontiguousarray(x[i : i + 1024]).data)
    h.update(np.ascontiguousarray(y, dtype=np.int64).data)
    return h.hexdigest()


def write_store(folder: Path, x_fill, df: pd.DataFrame, size: int, split: str, base: dict) -> dict:
    """One store: x.npy (written in place by `x_fill`, so a split larger than memory still fits),
    y.npy and meta.json with the content hash and what the source images looked like."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.uint8, shape=(len(df), size, size))
    x_fill(x)
    x.flush()
    y = df["label"].to_numpy().astype(np.int64)
    with atomic_path(folder / "y.npy") as tmp, open(tmp, "wb") as f:  # a path would get .npy appended
        np.save(f, y)
    digest = store_digest(x, y)
    del x
    meta = {"split": split, "image_size": size, "classes": base["classes"], "n": len(df), "sha1": digest}
    meta |= {k: v for k, v in base.items() if k != "classes"} | {"source_images": source_stats(df)}
    write_json(folder / "meta.json", meta)
    return meta


def prepare_splits(
    split_dir: Path, out_dir: Path, data: DataConfig, prepare: PrepareConfig
) -> dict[str, dict]:
    """Decode every split csv under split_dir into out_dir/<split>/ (x.npy, y.npy, meta.json): the
    images under data.root, 8-bit by data.bits_stored's rule, at prepare.image_size, decoded by
    prepare.workers processes, cropped and standardised by prepare.crop and prepare.intensity.

    One folder per split, so DVC can give each stage only the splits it reads: training never
    depends on the test store. With k folds (split_dir/folds.csv), every image is decoded once
    into out_dir/folds/ with each fold's train/val/test as index lists (folds.json), and the
    train/val/test stores are fold 0's parts copied from it (what fold-unaware readers use);
    otherwise out_dir/folds/ holds only a meta.json saying there are no folds."""
    root, size, workers, bits_stored = Path(data.root), prepare.image_size, prepare.workers, data.bits_stored
    pre = preprocess_of(prepare)
    # predict applies the same 8-bit rule and preprocessing (the model card carries both)
    base = {"classes": list(data.classes), "bits_stored": bits_stored, "preprocess": pre.to_json()}
    pool, metas = None, {}
    (out_dir / "folds").mkdir(parents=True, exist_ok=True)
    folds_csv = split_dir / "folds.csv"
    if folds_csv.exists():
        df = pd.read_csv(folds_csv)
        paths = [str(root / p) for p in df["path"]]
        fill = lambda x: decode_into(x, paths, size, workers, "prepare (all folds)", bits_stored, pre)  # noqa: E731
        cols = sorted((c for c in df.columns if c[:1] == "f" and c[1:].isdigit()), key=lambda c: int(c[1:]))
        metas["folds"] = write_store(out_dir / "folds", fill, df, size, "folds", {**base, "k": len(cols)})
        folds = [{s: np.flatnonzero(df[c] == s).tolist() for s in ("train", "val", "test")} for c in cols]
        write_text(out_dir / "folds" / "folds.json", json.dumps({"k": len(cols), "folds": folds}) + "\n")
        pool = (np.load(out_dir / "folds" / "x.npy", mmap_mode="r"), {p: i for i, p in enumerate(df["path"])})
    else:
        write_json(out_dir / "folds" / "meta.json", {"split": "folds", "k": None})
    for split in ("train", "val", "test"):
        df = pd.read_csv(split_dir / f"{split}.csv")
        paths = [str(root / p) for p in df["path"]]
        if pool is None:
            fill = lambda x, paths=paths, split=split: decode_into(  # noqa: E731
                x, paths, size, workers, f"prepare {split}", bits_stored, pre
            )
        else:  # fold 0's part: copied rows of the decoded pool, not decoded again
            rows = np.array([pool[1][p] for p in df["path"]], dtype=np.int64)
            fill = lambda x, rows=rows: x.__setitem__(slice(None), pool[0][rows])  # noqa: E731
        metas[split] = write_store(out_dir / split, fill, df, size, split, base)
    return metas


def load_folds(prepared: Path) -> dict | None:
    """k-fold index lists over the folds store ({"k", "folds": [{"train", "val", "test"}]}), or
    None when the data has one train/val/test split."""
    folder = Path(prepared) / "folds"
    if not (folder / "meta.json").exists():
        raise FileNotFoundError(f"{folder / 'meta.json'} is missing; run `dvc repro prepare` first")
    if json.loads((folder / "meta.json").read_text()).get("k") is None:
        return None
    return json.loads((folder / "folds.json").read_text())


def source_stats(df: pd.DataFrame) -> dict | None:
    """What the split's original images looked like (before resizing), from index's columns:
    predict warns about new images far outside it (much smaller, another shape)."""
    if df.empty or not {"width", "height"} <= set(df.columns):
        return None
    w, h = df["width"].to_numpy(float), df["height"].to_numpy(float)
    aspect, short = w / h, np.minimum(w, h)
    return {
        "n": len(df),
        "short_side_p05": float(np.percentile(short, 5)),
        "short_side_median": float(np.median(short)),
        "aspect_p01": round(float(np.percentile(aspect, 1)), 4),
        "aspect_p99": round(float(np.percentile(aspect, 99)), 4),
    }


def _split_dir(prepared: Path, split: str) -> Path:
    folder = Path(prepared) / split
    if not (folder / "x.npy").exists():
        raise FileNotFoundError(f"{folder / 'x.npy'} is missing; run `dvc repro prepare` first")
    return folder


def load_store(prepared: Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images (memory-mapped) and int64 labels of one split."""
    folder = _split_dir(prepared, split)
    with phase("load"):
        return np.load(folder / "x.npy", mmap_mode="r" if mmap else None), np.load(folder / "y.npy")


def load_meta(prepared: Path, split: str) -> dict:
    """What prepare recorded for one split: image size, class names, count and content hash."""
    return json.loads((_split_dir(prepared, split) / "meta.json").read_text())
