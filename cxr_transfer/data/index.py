"""Index a folder of chest X-rays into one table, skipping (and counting) everything unusable.

Classes are found by folder name (aliases, case-insensitive, at any depth), so the seed's layout
(NORMAL/, COVID/) and the COVID-19 Radiography Database's (COVID/images/, masks/, *.xlsx) both work.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.parallel import chunked_map
from cxr_transfer.data.acquisition import STATS, pixel_facts
from cxr_transfer.data.dicom import is_dicom
from cxr_transfer.data.groups import group_names
from cxr_transfer.data.imageio import IMAGE_EXTS, OS_FILES, Unreadable, file_problem, read_gray, shown
from cxr_transfer.data.labels import labelled, table_columns
from cxr_transfer.data.metadata import plan
from cxr_transfer.data.neardup import framed_phash, phash

SKIP_DIRS = {"__macosx", "masks", "mask"}
COLUMNS = [
    "path",
    "image_name",
    "label",
    "class",
    "group",
    "source",
    "hash",
    "phash",
    "phash_framed",
    "width",
    "height",
    "mode",
    "format",
    "bytes",
    *STATS,
]


class IndexError_(CxrError):
    """The folder cannot be indexed at all; the message says why and what would fix it."""


def class_of(rel_parts: tuple[str, ...], aliases: dict[str, str]) -> str | None:
    """Class named by the outermost folder of a relative path that matches an alias."""
    for part in rel_parts:
        cls = aliases.get(part.lower())
        if cls is not None:
            return cls
    return None


def _why_skip_dir(name: str) -> str | None:
    low = name.lower()
    if low in SKIP_DIRS:
        return "mask folder" if low.startswith("mask") else "OS folder"
    if name.startswith("."):
        return "hidden folder"
    return None


def walk(root: Path, aliases: dict[str, str]) -> tuple[list[tuple[str, str]], list[dict]]:
    """Candidate (relative path, class) pairs and the files skipped before decoding."""
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        for d in sorted(dirnames):
            reason = _why_skip_dir(d)
            if reason:
                for sub, _, files in os.walk(Path(dirpath) / d):
                    skipped += [
                        {"path": str((Path(sub) / f).relative_to(root)), "reason": reason} for f in files
                    ]
        dirnames[:] = sorted(d for d in dirnames if not _why_skip_dir(d))
        for f in sorted(filenames):
            rel = rel_dir / f
            reason = None
            if f.startswith(".") or f.lower() in OS_FILES:
                reason = "hidden or OS file"
            elif problem := file_problem(Path(dirpath) / f, str(rel)):
                reason = problem
            elif Path(f).suffix.lower() not in IMAGE_EXTS and not is_dicom(Path(dirpath) / f):
                reason = f"not an image ({Path(f).suffix or 'no extension'})"
            cls = class_of(rel.parts[:-1], aliases)
            if reason is None and cls is None:
                reason = "folder of no configured class"
            if reason:
                skipped.append({"path": str(rel), "reason": reason})
            else:
                found.append((str(rel), cls))
    return found, skipped


def inspect_image(path: str, max_pixels: int, bits_stored: int | None = None) -> dict:
    """Decode one file fully: size, mode, format and the hash of its 8-bit grayscale pixels,
    or {'reason': ...} when it cannot be used."""
    try:
        gray, facts = read_gray(path, max_pixels, bits_stored)
    except Unreadable as e:
        return {"reason": e.reason} if e.detail is None else {"reason": e.reason, "detail": e.detail}
    w, h = facts["width"], facts["height"]
    digest = hashlib.sha1(gray.tobytes() + f"{w}x{h}".encode()).hexdigest()
    facts = {k: v for k, v in facts.items() if k != "colour"} | {"bytes": os.path.getsize(path)}
    return {"hash": digest, **_hashes(gray), **facts, **pixel_facts(gray)}


def _hashes(gray) -> dict:
    return {"phash": phash(gray), "phash_framed": framed_phash(gray)}


def _inspect_chunk(args: tuple[list[str], int, int | None]) -> list[dict]:
    paths, max_pixels, bits_stored = args
    return [inspect_image(p, max_pixels, bits_stored) for p in paths]


def decode_all(paths: list[str], max_pixels: int, workers: int, bits_stored: int | None = None) -> list[dict]:
    """inspect_image over many files, in parallel processes, with a progress bar."""
    extra = (max_pixels, bits_stored)
    return [r for res in chunked_map(_inspect_chunk, paths, extra, workers, "index") for r in res]


def read_column(meta_file: Path, filename_col: str, col: str, key: str) -> dict[str, str]:
    """Map image file name (with and without extension, lower-case) -> the value in column `col`
    of the metadata table (`key` names the param that chose it, for the error message)."""
    if not meta_file.exists():
        raise IndexError_(
            f"data.metadata.file: {meta_file} does not exist (the path is relative to data.root); "
            "fix it or set it to null"
        )
    reader = pd.read_excel if meta_file.suffix.lower() in (".xlsx", ".xls") else pd.read_csv
    df = reader(meta_file)
    for c, k in ((filename_col, "filename_column"), (col, key)):
        if c not in df.columns:
            raise IndexError_(
                f"{meta_file}: no column {c!r} (data.metadata.{k}); columns are {list(df.columns)}"
            )
    out = {}
    for name, value in zip(df[filename_col].astype(str), df[col].astype(str), strict=True):
        out[name.lower()] = value
        out[Path(name).stem.lower()] = value
    return out


def read_columns(meta_files: list[Path], filename_col: str, col: str, key: str) -> dict[str, str]:
    """read_column over several tables (one per class, as the COVID-19 Radiography Database
    ships them), merged; a file name in two tables with two values is an error naming both."""
    out: dict[str, str] = {}
    seen: dict[str, Path] = {}
    for f in meta_files:
        for name, value in read_column(f, filename_col, col, key).items():
            if name in out and out[name] != value:
                raise IndexError_(
                    f"{name!r} has {col} {out[name]!r} in {seen[name]} and {value!r} in {f}; "
                    "fix one table or list only one in data.metadata.file"
                )
            out[name], seen[name] = value, f
    return out


def build_index(
    root: Path,
    classes: dict[str, tuple[str, ...]],
    max_pixels: int,
    workers: int = 0,
    groups: dict[str, str] | None = None,
    bits_stored: int | None = None,
    sources: dict[str, str] | None = None,
    key: str = "data.root",
    all_classes: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Walk the class folders, decode and tabulate; returns (data frame, report dict). `groups`
    and `sources` map file names to patient ids and to image sources (hospital, archive), from the
    metadata table; `key` names the params key the folder came from in messages (an external set's
    root). Every class must have images unless `all_classes` is False (an external site may hold
    only some)."""
    root = _checked_root(root, key)
    aliases = {a.lower(): c for c, al in classes.items() for a in (c, *al)}
    found, skipped = walk(root, aliases)
    if not found:
        raise IndexError_(
            f"no images found under {root} in folders named {sorted(aliases)}; "
            f"check {key} and data.classes ({len(skipped)} files skipped)"
        )
    decode = (max_pixels, workers, bits_stored)
    return tabulate(root, classes, (found, skipped), decode, (groups, sources), all_classes)


def _checked_root(root, key: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise IndexError_(f"{key} {root} does not exist or is not a folder; set {key} in params.yaml")
    return root


def tabulate(root: Path, classes, candidates: tuple, decode: tuple, lookups: tuple, all_classes: bool = True):
    """Decode the candidate (relative path, class) pairs and tabulate them: `candidates` is
    (found, skipped so far), `decode` (max_pixels, workers, bits_stored), `lookups` (patient ids,
    sources) by file name. Returns (data frame, report)."""
    (found, skipped), (groups, sources) = candidates, lookups
    max_pixels, workers, bits_stored = decode
    infos = decode_all([str(root / p) for p, _ in found], max_pixels, workers, bits_stored)
    labels = {c: i for i, c in enumerate(classes)}
    rows = []
    for (rel, cls), info in zip(found, infos, strict=True):
        if "reason" in info:
            skipped.append({"path": rel, **info})
            continue
        rows.append({"path": rel, "image_name": Path(rel).name, "label": labels[cls], "class": cls, **info})
    df = pd.DataFrame(rows, columns=[*(c for c in COLUMNS if c not in ("group", "source")), "patient"])
    df, conflicts = _drop_label_conflicts(df)
    skipped += [{"path": p, "reason": "label conflict (same pixels in two classes)"} for p in conflicts]
    df, no_meta = _assign_groups(df, groups)
    df["source"] = _lookup(df, sources).fillna("") if sources else ""
    empty = [c for c in classes if not (df["class"] == c).any()]
    if df.empty or (empty and all_classes):
        empty = empty or list(classes)
        raise IndexError_(f"class {empty[0]} has no usable images under {root}; check its folder aliases")
    report = _report(df, skipped, no_meta)
    if sources:
        report["images_without_source"] = int((df["source"] == "").sum())
    return df[COLUMNS].sort_values("path").reset_index(drop=True), report


def source_folders(found: list, skipped: list, folders: dict[str, str]) -> tuple[list, dict[str, str]]:
    """The candidates under one of data.sources' folders (source name -> folder relative to
    data.root) and each one's source; a candidate under none is a skip with its reason."""
    prefixes = {name: Path(folder).parts for name, folder in folders.items()}
    keep, where = [], {}
    for rel, cls in found:
        parts = Path(rel).parts
        name = next((n for n, pre in prefixes.items() if parts[: len(pre)] == pre), None)
        if name is None:
            skipped.append({"path": rel, "reason": "outside every data.sources folder"})
        else:
            keep.append((rel, cls))
            where[rel] = name
    return keep, where


def index_folder(
    root: Path,
    classes,
    metadata,
    cfg,
    bits_stored=None,
    key="data.root",
    all_classes=True,
    labels=None,
    sources=None,
):
    """Index one folder with its metadata tables (patients, sources): the index stage's whole job,
    shared by the external test sets. Classes come from the class folders, or with `labels`
    (data.labels, a file set) from a table naming each image and its label, whose patient and
    source columns then work as the metadata table's. `sources` (data.sources: source name ->
    folder under root) gives each image the source of the folder it lies in. `cfg`: params' index
    section. Returns (data frame, report)."""
    root = _checked_root(root, key)
    metadata_paths = [root / f for f in metadata.file or ()]
    table = root / labels.file if labels is not None and labels.file else None
    aliases = {a.lower(): c for c, al in classes.items() for a in (c, *al)}
    if table is not None:  # the labels table first: its own columns are checked before anything else
        candidates = labelled(root, table, (labels.filename_column, labels.label_column), aliases)
    else:
        candidates = walk(root, aliases)
    mp = plan(
        root,
        classes,
        metadata_paths,
        metadata.filename_column,
        metadata.patient_column,
        metadata.source_column,
    )
    filename_col = metadata.filename_column
    if (
        table is not None and not metadata_paths
    ):  # the table's own patient and source columns, where it has them
        mp, filename_col = table_columns(table, metadata), labels.filename_column
    groups = by_name = None
    if mp.tables and mp.patient_column:
        groups = read_columns(mp.tables, filename_col, mp.patient_column, "patient_column")
    if mp.tables and mp.source_column:
        by_name = read_columns(mp.tables, filename_col, mp.source_column, "source_column")
    found, skipped = candidates
    if sources:
        found, where = source_folders(found, skipped, sources)
    if not found:
        raise IndexError_(
            f"no images found under {root} in folders named {sorted(aliases)}; check {key} and "
            f"data.classes ({len(skipped)} files skipped)"
            if table is None
            else f"{table}: no row names an image of a configured class ({len(skipped)} skipped)"
        )
    decode = (cfg.max_pixels, cfg.workers, bits_stored)
    df, report = tabulate(root, classes, (found, skipped), decode, (groups, by_name), all_classes)
    if table is not None:
        report["labels"] = {"table": table.name, "rows_used": len(found)}
    if sources:
        df["source"] = df["path"].map(where)
        report["source_folders"] = {n: int((df["source"] == n).sum()) for n in sources}
    report["metadata"] = {
        "tables": [t.name for t in mp.tables],
        "found": mp.found,
        "patient_column": mp.patient_column,
        "source_column": mp.source_column,
        "notes": mp.notes,
    }
    return df, report


def _drop_label_conflicts(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    n_cls = df.groupby("hash")["class"].nunique()
    bad = set(n_cls[n_cls > 1].index)
    mask = df["hash"].isin(bad)
    return df[~mask].copy(), sorted(df.loc[mask, "path"])


def _assign_groups(df: pd.DataFrame, groups: dict[str, str] | None) -> tuple[pd.DataFrame, int]:
    """Split groups: connected components of "same patient OR same pixels", so two copies of one
    image stay together even under two patient ids, or with one id and one without."""
    pid = _lookup(df, groups) if groups else pd.Series([None] * len(df), index=df.index, dtype=object)
    missing = int(pid.isna().sum()) if groups else 0
    pid = pid.where(
        pid.notna(), df["patient"]
    )  # a DICOM header's PatientID (hashed) where the table has none
    keys = {"patient": list(pid), "img": list(df["hash"].str[:16])}
    df["group"] = group_names(keys)
    return df, missing


def _lookup(df: pd.DataFrame, mapping: dict[str, str]) -> pd.Series:
    """A metadata value per row, by file name with or without extension; NaN where absent."""
    names = df["image_name"].str.lower()
    return names.map(mapping).fillna(names.map(lambda n: Path(n).stem).map(mapping))


def _report(df: pd.DataFrame, skipped: list[dict], no_meta: int) -> dict:
    dup = defaultdict(list)
    for h, p, c in zip(df["hash"], df["path"], df["class"], strict=True):
        dup[(c, h)].append(p)
    dups = [sorted(ps) for ps in dup.values() if len(ps) > 1]
    return {
        "images": len(df),
        "per_class": {str(k): int(v) for k, v in Counter(df["class"]).items()},
        "skipped": len(skipped),
        "skipped_by_reason": dict(Counter(s["reason"] for s in skipped).most_common()),
        "skipped_files": sorted(({**s, "path": shown(s["path"])} for s in skipped), key=lambda s: s["path"]),
        "duplicate_sets": len(dups),
        "duplicate_images": sum(len(d) - 1 for d in dups),
        "duplicates": dups,
        "groups": int(df["group"].nunique()),
        "images_without_metadata": no_meta,
    }
