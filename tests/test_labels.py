"""Labels from a table (data.labels): every row that names one image of a configured class is
indexed under that class; every other row, and every image no row names, is skipped and counted
with its reason."""

import pandas as pd
import pytest

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import IndexConfig, LabelsConfig, MetadataConfig, ParamError, parse_params
from cxr_transfer.data.index import index_folder
from tests.conftest import write_image

CLASSES = {"Normal": ("No Finding",), "Covid": ("COVID-19",), "Pneumonia": ()}


def make(tmp_path, rows):
    root = tmp_path / "images"
    for i in range(4):  # three classes' images in one flat folder and a subfolder, no class folders
        write_image(root / f"n{i}.png", seed=10 + i)
        write_image(root / f"c{i}.png", seed=20 + i)
        write_image(root / "batch2" / f"p{i}.png", seed=30 + i)
    write_image(root / "batch2" / "n0.png", seed=99)  # a second n0.png: the bare name is ambiguous
    write_image(root / "extra.png", seed=40)  # no row names it
    pd.DataFrame(rows, columns=["Image Index", "Finding Labels", "Patient ID"]).to_csv(
        root / "labels.csv", index=False
    )
    return root


def index(root, **kw):
    cfg = LabelsConfig("labels.csv", "Image Index", "Finding Labels")
    meta = MetadataConfig(patient_column="Patient ID")
    return index_folder(root, CLASSES, meta, IndexConfig(workers=1), labels=cfg, **kw)


def test_a_labels_table_with_three_classes_indexes_what_it_names_and_counts_every_skip(tmp_path):
    rows = [
        *([f"n{i}.png", "No Finding", f"p{i}"] for i in (1, 2, 3)),  # an alias
        *([f"c{i}.png", "COVID-19", f"p{10 + i}"] for i in range(4)),
        *([f"batch2/p{i}.png", "pneumonia", f"p{20 + i}"] for i in range(4)),  # a relative path, any case
        ["n0.png", "No Finding", "p0"],  # two files have this name: ambiguous
        ["missing.png", "COVID-19", "p9"],  # no such file
        ["c0.png", "Effusion", "p10"],  # a label of no configured class (c0 is also labelled Covid)
        ["n3.png", "COVID-19", "p3"],  # n3 again with another label: two labels
    ]
    df, rep = index(make(tmp_path, rows))
    assert rep["per_class"] == {"Normal": 2, "Covid": 4, "Pneumonia": 4}
    assert rep["skipped_by_reason"] == {
        "not in the labels table": 2,  # extra.png and batch2/n0.png (named only by the ambiguous bare name)
        "listed in the labels table, no such file": 1,
        "a file name several files have: give the relative path": 1,
        "label 'Effusion' maps to no class of data.classes": 1,
        "two labels in the labels table": 1,
    }
    assert rep["labels"] == {"table": "labels.csv", "rows_used": 10}
    row = df.set_index("path")
    assert row.loc["batch2/p2.png", "class"] == "Pneumonia" and row.loc["n1.png", "class"] == "Normal"
    assert row.loc["c2.png", "group"] == "patient:p12"  # the table's patient column groups the split
    assert "n3.png" not in row.index and "extra.png" not in row.index


def test_a_table_without_the_named_column_is_one_line_naming_it(tmp_path):
    root = make(tmp_path, [["n1.png", "No Finding", "p1"]])
    with pytest.raises(CxrError) as e:
        index_folder(
            root, CLASSES, MetadataConfig(), IndexConfig(workers=1), labels=LabelsConfig("labels.csv")
        )
    assert "no column 'file' (data.labels.filename_column)" in str(e.value) and "\n" not in str(e.value)


def test_the_labels_table_lies_inside_data_root():
    with pytest.raises(ParamError, match="data.labels.file"):
        parse_params({"data": {"labels": {"file": "/etc/labels.csv"}}})
