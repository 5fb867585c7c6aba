"""Which metadata tables the index reads, and which of their columns.

Given tables (data.metadata.file) are read strictly: a missing table or column stops the stage
naming it. Without them, the per-class sheets the COVID-19 Radiography Database ships beside its
class folders (`COVID.metadata.xlsx`, `Normal.metadata.xlsx`, ...: FILE NAME, FORMAT, SIZE, URL)
are found and read with no setting: their URL column gives each image's source, a patient column
is used only where every sheet has one, and a sheet that cannot be read is noted, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SHEET_SUFFIXES = (".metadata.xlsx", ".metadata.xls", ".metadata.csv")
AUTO_SOURCE = "URL"


@dataclass
class MetadataPlan:
    tables: list[Path] = field(default_factory=list)
    patient_column: str | None = None
    source_column: str | None = None
    found: str = "none"  # none | given | auto
    notes: list[str] = field(default_factory=list)


def class_sheets(root: Path, classes: dict[str, tuple[str, ...]]) -> list[Path]:
    """`<class or alias>.metadata.xlsx|.xls|.csv` files directly in data.root, for configured
    classes only (a sheet of a class left out, e.g. Viral Pneumonia, is not read)."""
    names = {a.lower() for c, al in classes.items() for a in (c, *al)}
    out = []
    for p in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        low = p.name.lower()
        suffix = next((s for s in SHEET_SUFFIXES if low.endswith(s)), None)
        if p.is_file() and suffix and low[: -len(suffix)] in names:
            out.append(p)
    return out


def _header(path: Path) -> list[str] | None:
    """A table's column names, or None when it cannot be read as a table."""
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            return [str(c) for c in pd.read_excel(path, nrows=0).columns]
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception:  # noqa: BLE001 - any unreadable sheet is skipped with a note, in auto mode only
        return None


def plan(root: Path, classes, given: list[Path], filename_col: str, patient_col, source_col) -> MetadataPlan:
    """The tables and columns to read: the given ones as they are, else the class sheets found."""
    if given:
        return MetadataPlan(given, patient_col, source_col, "given")
    sheets, notes = [], []
    for p in class_sheets(root, classes):
        cols = _header(p)
        if cols is None:
            notes.append(f"{p.name}: not readable as a table, ignored")
        elif filename_col not in cols:
            notes.append(f"{p.name}: no {filename_col!r} column (data.metadata.filename_column), ignored")
        else:
            sheets.append((p, set(cols)))
    if not sheets:
        return MetadataPlan(notes=notes)

    def in_all(col):
        return col if col and all(col in cols for _, cols in sheets) else None

    source = in_all(source_col) or in_all(AUTO_SOURCE)
    return MetadataPlan([p for p, _ in sheets], in_all(patient_col), source, "auto", notes)
