"""Reading the pipeline's tables (data.csv, the split csvs) with their column types kept."""

from __future__ import annotations

import pandas as pd

TEXT_COLUMNS = (
    "path",
    "image_name",
    "class",
    "group",
    "source",
    "hash",
    "phash",
    "phash_framed",
    "mode",
    "format",
)


def read_table(path) -> pd.DataFrame:
    """data.csv or a split csv, with its text columns kept as text (a hash of digits only must
    not turn into a number, an empty source must not turn into NaN)."""
    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
