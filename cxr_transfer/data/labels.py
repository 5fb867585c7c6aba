"""Labels from a table instead of class folders (NIH ChestX-ray14's Data_Entry CSV, RSNA's labels,
a hospital export): each row names an image (a path relative to data.root, or a bare file name)
and its label; a label maps to a class through data.classes's aliases, as a folder name does.

Nothing is guessed: a row whose file is missing, ambiguous (a bare name matching several files) or
whose label maps to no class is skipped with its reason; a row listing a file twice with two labels
skips that file; an image in the folder that no row names is counted, not labelled."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pandas as pd

from cxr_transfer.core.errors import CxrError
from cxr_transfer.data.dicom import is_dicom
from cxr_transfer.data.imageio import IMAGE_EXTS, OS_FILES, file_problem
from cxr_transfer.data.metadata import MetadataPlan


def read_table(path: Path, columns: tuple[str, str], key: str) -> pd.DataFrame:
    """The labels table (CSV or Excel) with its file-name and label columns as text; one line
    naming the key and the columns it has when it or a column is missing."""
    if not path.is_file():
        raise CxrError(f"{key}.file: {path} does not exist (the path is relative to data.root); fix it")
    try:
        df = (
            pd.read_excel(path, dtype=str)
            if path.suffix.lower() in (".xlsx", ".xls")
            else pd.read_csv(path, dtype=str)
        )
    except Exception as e:  # noqa: BLE001 - any unreadable table is one line
        raise CxrError(f"{key}.file: {path} is not readable as a table ({type(e).__name__})") from None
    for col, name in zip(columns, ("filename_column", "label_column"), strict=True):
        if col not in df.columns:
            raise CxrError(f"{path}: no column {col!r} ({key}.{name}); columns are {list(df.columns)}")
    return df


def image_files(root: Path, table: Path) -> dict[str, list[str]]:
    """Every candidate image under `root` (not hidden, an image extension or DICOM, not the table),
    by relative path and by bare file name, lower-case -> relative paths."""
    by: dict[str, list[str]] = defaultdict(list)
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(files):
            full = Path(dirpath) / f
            if f.startswith(".") or f.lower() in OS_FILES or full == table:
                continue
            if Path(f).suffix.lower() in IMAGE_EXTS or is_dicom(full) or file_problem(full, f):
                rel = str(full.relative_to(root))
                by[rel.lower()].append(rel)
                if f.lower() != rel.lower():
                    by[f.lower()].append(rel)
    return by


def labelled(
    root: Path, table: Path, columns: tuple[str, str], aliases: dict[str, str], key: str = "data.labels"
) -> tuple[list[tuple[str, str]], list[dict]]:
    """(relative path, class) of every row that names one file and a configured class, and what
    was skipped, each with its reason: rows (missing, ambiguous, unknown label, two labels) and the
    images in the folder that no row names."""
    df = read_table(table, columns, key)
    files = image_files(root, table)
    rows: dict[str, set[str]] = defaultdict(set)
    skipped = []
    for name, label in zip(df[columns[0]], df[columns[1]], strict=True):
        name, label = str(name).strip(), str(label).strip()
        hits = files.get(name.lower().replace("\\", "/"), [])
        cls = aliases.get(label.lower())
        if not hits:
            skipped.append({"path": name, "reason": "listed in the labels table, no such file"})
        elif len(set(hits)) > 1:
            skipped.append({"path": name, "reason": "a file name several files have: give the relative path"})
        elif cls is None:
            skipped.append({"path": hits[0], "reason": f"label {label!r} maps to no class of data.classes"})
        else:
            rows[hits[0]].add(cls)
    found = []
    for rel, classes in sorted(rows.items()):
        if len(classes) > 1:
            skipped.append({"path": rel, "reason": "two labels in the labels table"})
        else:
            found.append((rel, next(iter(classes))))
    named = set(rows) | {s["path"] for s in skipped}
    every = {p for paths in files.values() for p in paths}
    skipped += [{"path": p, "reason": "not in the labels table"} for p in sorted(every - named)]
    return found, skipped


def table_columns(table: Path, metadata) -> MetadataPlan:
    """The labels table as the metadata table too: data.metadata's patient and source columns,
    each where the table has it (a labels table need not have either)."""
    cols = set(
        pd.read_excel(table, nrows=0).columns
        if table.suffix.lower() in (".xlsx", ".xls")
        else pd.read_csv(table, nrows=0).columns
    )
    pick = lambda c: c if c and c in cols else None  # noqa: E731
    return MetadataPlan([table], pick(metadata.patient_column), pick(metadata.source_column), "labels")
