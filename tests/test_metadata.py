from pathlib import Path

import pandas as pd

from cxr_transfer.data.index import build_index, read_columns
from cxr_transfer.data.metadata import class_sheets, plan
from tests.conftest import write_image

CLASSES = {"Normal": ("NORMAL", "Normal"), "Covid": ("COVID", "COVID-19")}
URLS = {"COVID": "https://sirm.org/covid-19/", "Normal": "https://www.kaggle.com/c/rsna-pneumonia"}


def radiography_db(root: Path, folders=("COVID", "Normal", "Viral Pneumonia"), n=3) -> Path:
    """The COVID-19 Radiography Database in miniature: <Class>/images, masks, and one sheet per
    class with its columns (FILE NAME without extension, upper-case for Normal; FORMAT; SIZE; URL)."""
    for k, folder in enumerate(folders):
        for i in range(1, n + 1):
            write_image(root / folder / "images" / f"{folder}-{i}.png", seed=100 * k + i)
            write_image(root / folder / "masks" / f"{folder}-{i}.png", seed=900 + i)
        pd.DataFrame(
            {
                "FILE NAME": [
                    f"{folder.upper() if folder == 'Normal' else folder}-{i}" for i in range(1, n + 1)
                ],
                "FORMAT": "PNG",
                "SIZE": "24*24",
                "URL": URLS.get(folder, "https://example.org/other"),
            }
        ).to_excel(root / f"{folder}.metadata.xlsx", index=False)
    return root


def test_the_class_sheets_are_found_and_read_with_no_setting(tmp_path):
    root = radiography_db(tmp_path / "COVID-19_Radiography_Dataset")
    assert [p.name for p in class_sheets(root, CLASSES)] == ["COVID.metadata.xlsx", "Normal.metadata.xlsx"]
    mp = plan(root, CLASSES, [], "FILE NAME", "PATIENT ID", None)
    assert mp.found == "auto" and [p.name for p in mp.tables] == [
        "COVID.metadata.xlsx",
        "Normal.metadata.xlsx",
    ]
    assert mp.patient_column is None  # the sheets have no patient ids: not an error
    assert mp.source_column == "URL" and mp.notes == []
    sources = read_columns(mp.tables, "FILE NAME", mp.source_column, "source_column")
    df, report = build_index(root, CLASSES, 10**6, workers=1, sources=sources)
    by_class = df.groupby("class")["source"].unique().to_dict()
    assert by_class == {"Covid": [URLS["COVID"]], "Normal": [URLS["Normal"]]}  # NORMAL-1 matched Normal-1.png
    assert report["images_without_source"] == 0 and report["per_class"] == {"Normal": 3, "Covid": 3}


def test_a_sheet_that_cannot_be_read_or_lacks_the_file_name_is_noted_not_fatal(tmp_path):
    root = radiography_db(tmp_path / "db", folders=("COVID", "Normal"))
    (root / "COVID.metadata.xlsx").write_bytes(b"PK\x03\x04 not a workbook")
    pd.DataFrame({"NAME": ["Normal-1"], "URL": ["u"]}).to_excel(root / "Normal.metadata.xlsx", index=False)
    mp = plan(root, CLASSES, [], "FILE NAME", "PATIENT ID", None)
    assert mp.tables == [] and mp.found == "none"
    assert mp.notes == [
        "COVID.metadata.xlsx: not readable as a table, ignored",
        "Normal.metadata.xlsx: no 'FILE NAME' column (data.metadata.filename_column), ignored",
    ]


def test_given_tables_are_used_as_they_are(tmp_path):
    root = radiography_db(tmp_path / "db", folders=("COVID", "Normal"))
    given = [root / "COVID.metadata.xlsx"]
    mp = plan(root, CLASSES, given, "FILE NAME", "PATIENT ID", "URL")
    assert (mp.found, mp.tables, mp.patient_column, mp.source_column) == ("given", given, "PATIENT ID", "URL")


def test_a_source_column_present_in_every_sheet_wins_over_url(tmp_path):
    root = tmp_path / "db"
    for folder in ("COVID", "Normal"):
        write_image(root / folder / "a.png")
        pd.DataFrame({"FILE NAME": ["a"], "URL": ["u"], "HOSPITAL": [folder]}).to_csv(
            root / f"{folder}.metadata.csv", index=False
        )
    assert plan(root, CLASSES, [], "FILE NAME", None, "HOSPITAL").source_column == "HOSPITAL"
    assert plan(root, CLASSES, [], "FILE NAME", None, "WARD").source_column == "URL"


FOUR = {  # docs/data.md's 4-class configuration of the COVID-19 Radiography Database
    "Normal": ("Normal",),
    "Covid": ("COVID",),
    "Viral_Pneumonia": ("Viral Pneumonia",),
    "Lung_Opacity": ("Lung_Opacity",),
}


def test_the_database_with_three_and_four_classes_configured(tmp_path):
    root = radiography_db(
        tmp_path / "COVID-19_Radiography_Dataset", ("COVID", "Normal", "Viral Pneumonia", "Lung_Opacity")
    )
    for classes in ({k: FOUR[k] for k in ("Normal", "Covid", "Viral_Pneumonia")}, FOUR):
        mp = plan(root, classes, [], "FILE NAME", "PATIENT ID", None)
        assert len(mp.tables) == len(classes) and mp.source_column == "URL"
        sources = read_columns(mp.tables, "FILE NAME", mp.source_column, "source_column")
        df, report = build_index(root, classes, 10**6, workers=1, sources=sources)
        assert report["per_class"] == {c: 3 for c in classes}
        assert report["skipped_by_reason"]["mask folder"] == 12  # every class's masks/, listed or not
        assert report["images_without_source"] == 0
        assert sorted(df["label"].unique()) == list(range(len(classes)))
        assert (df.loc[df["class"] == "Viral_Pneumonia", "source"] == "https://example.org/other").all()


def test_source_folders_give_each_image_its_folders_source_and_count_the_images_outside(tmp_path):
    """data.sources: {name: folder under data.root}; an image's source is its folder's, whatever
    its file name (both sources hold a 0.png), and an image under no source folder is a counted
    skip. The split then counts each source's classes per part."""
    from cxr_transfer.core.params import IndexConfig, MetadataConfig
    from cxr_transfer.data.index import index_folder
    from cxr_transfer.data.split import source_counts

    root = tmp_path / "merged"
    for i in range(4):
        write_image(root / "hospital-a" / "NORMAL" / f"{i}.png", seed=i)
        write_image(root / "hospital-a" / "COVID" / f"{i}.png", seed=10 + i)
        write_image(root / "archive-b" / "COVID" / f"{i}.png", seed=20 + i)
    write_image(root / "stray" / "NORMAL" / "x.png", seed=30)
    folders = {"hospital-a": "hospital-a", "archive-b": "archive-b"}
    meta = MetadataConfig(patient_column=None)
    df, rep = index_folder(root, CLASSES, meta, IndexConfig(workers=1), sources=folders)
    assert rep["source_folders"] == {"hospital-a": 8, "archive-b": 4}
    assert rep["skipped_by_reason"] == {"outside every data.sources folder": 1}
    src = df.set_index("path")["source"]
    assert src["archive-b/COVID/0.png"] == "archive-b" and src["hospital-a/COVID/0.png"] == "hospital-a"
    assert rep["per_class"] == {"Normal": 4, "Covid": 8}
    assert source_counts({"train": df})["train"] == {
        "archive-b": {"Covid": 4},
        "hospital-a": {"Covid": 4, "Normal": 4},
    }
