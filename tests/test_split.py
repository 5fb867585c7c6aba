import numpy as np
import pandas as pd
import pytest

from cxr_transfer.data.split import SPLITS, SplitError, fold_roles, fold_summary, grouped_split, split_summary


def table(n_normal: int, n_covid: int, group_size: int = 1, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for label, (cls, n) in enumerate((("Normal", n_normal), ("Covid", n_covid))):
        for i in range(n):
            rows.append(
                {"path": f"{cls}/{i}.png", "label": label, "class": cls, "group": f"{cls}-{i // group_size}"}
            )
    df = pd.DataFrame(rows)
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


@pytest.mark.parametrize(
    "n_normal, n_covid, group_size, test_size, val_size",
    [
        (100, 100, 1, 0.2, 0.2),  # the seed's proportions
        (500, 120, 1, 0.2, 0.2),  # imbalanced
        (300, 300, 4, 0.2, 0.2),  # patients with 4 images each
        (90, 60, 3, 0.3, 0.1),
        (10, 10, 1, 0.2, 0.2),  # small
    ],
)
def test_grouped_split_has_no_overlap_and_keeps_proportions(
    n_normal, n_covid, group_size, test_size, val_size
):
    df = table(n_normal, n_covid, group_size)
    which = grouped_split(df, test_size, val_size, seed=42)
    parts = {s: df[which == s] for s in SPLITS}
    s = split_summary(parts, 42, test_size, val_size)
    assert s["group_overlap"] == 0
    assert sum(len(p) for p in parts.values()) == len(df)
    for cls, n in (("Normal", n_normal), ("Covid", n_covid)):
        n_test = s["counts"]["test"][cls]
        n_val = s["counts"]["val"][cls]
        assert abs(n_test - n * test_size) <= group_size
        assert abs(n_val - (n - n_test) * val_size) <= group_size
        assert s["counts"]["train"][cls] >= 1


def test_seeded_and_deterministic():
    df = table(50, 50)
    a = grouped_split(df, 0.2, 0.2, seed=1)
    assert a.equals(grouped_split(df, 0.2, 0.2, seed=1))
    assert not a.equals(grouped_split(df, 0.2, 0.2, seed=2))


def test_seed_defaults_give_64_16_20():
    df = table(250, 250)
    which = grouped_split(df, 0.2, 0.2, seed=42)
    assert which.value_counts().to_dict() == {"train": 320, "val": 80, "test": 100}


def test_class_too_small_to_split_names_the_class():
    with pytest.raises(SplitError, match="class Covid has 2 independent image group"):
        grouped_split(table(20, 2), 0.2, 0.2, seed=0)


def test_a_large_patient_and_mixed_class_patients_stay_whole():
    rows = [
        {"path": f"big/{i}.png", "label": 0, "class": "Normal", "group": "patient:big"} for i in range(40)
    ]
    for p in range(30):  # patients with two Normal images and one Covid image
        for k, (label, cls) in enumerate(((0, "Normal"), (0, "Normal"), (1, "Covid"))):
            rows.append({"path": f"mix{p}/{k}.png", "label": label, "class": cls, "group": f"patient:mix{p}"})
    for i in range(150):
        label, cls = (1, "Covid") if i % 2 else (0, "Normal")
        rows.append({"path": f"one/{i}.png", "label": label, "class": cls, "group": f"img:{i}"})
    df = pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)
    for seed in range(10):
        which = grouped_split(df, 0.2, 0.2, seed)
        assert which.notna().all()
        per_group = df.assign(split=which).groupby("group")["split"].nunique()
        assert (per_group == 1).all()  # the 40-image patient and every mixed patient in one split
        parts = {s: df[which == s] for s in SPLITS}
        assert split_summary(parts, seed, 0.2, 0.2)["group_overlap"] == 0
        n = len(df)
        assert abs(len(parts["test"]) - 0.2 * n) <= 40  # off by at most the largest group
        for s in SPLITS:
            assert set(parts[s]["class"]) == {"Normal", "Covid"}, (seed, s)


@pytest.mark.parametrize(
    "n_normal, n_covid, group_size, k",
    [
        (100, 100, 1, 5),
        (300, 90, 3, 5),  # imbalanced, patients with 3 images each
        (40, 40, 2, 3),
        (60, 30, 1, 10),
    ],
)
def test_k_folds_test_every_image_once_and_never_split_a_group(n_normal, n_covid, group_size, k):
    df = table(n_normal, n_covid, group_size)
    roles = fold_roles(df, k, 0.2, seed=42)
    assert list(roles.columns) == [f"f{i}" for i in range(k)]
    assert ((roles == "test").sum(axis=1) == 1).all()  # the union of the test parts is every image, disjoint
    for f in roles.columns:
        groups_in = {s: set(df.loc[roles[f] == s, "group"]) for s in SPLITS}
        assert not groups_in["train"] & groups_in["val"]
        assert not groups_in["train"] & groups_in["test"] and not groups_in["val"] & groups_in["test"]
        # the test fold keeps the class mix (within one group of the exact share per class)
        test = df[roles[f] == "test"]
        for cls, n in (("Normal", n_normal), ("Covid", n_covid)):
            assert abs((test["class"] == cls).sum() - n / k) <= group_size + 1
        # validation: a fifth of the training part (val_size 0.2), by groups
        rest = (roles[f] != "test").sum()
        assert abs((roles[f] == "val").sum() - rest / 5) <= 2 * group_size + 1
    s = fold_summary(df, roles)
    assert s["images_tested_once"] == len(df) and s["k"] == k
    assert all(v["group_overlap"] == 0 for v in s["folds"].values())
    assert sum(v["test"]["images"] for v in s["folds"].values()) == len(df)


def test_k_folds_are_seeded():
    df = table(50, 50, 2)
    assert fold_roles(df, 5, 0.2, 1).equals(fold_roles(df, 5, 0.2, 1))
    assert not fold_roles(df, 5, 0.2, 1).equals(fold_roles(df, 5, 0.2, 2))


def test_too_few_groups_for_the_folds_names_the_class_and_the_fix():
    df = table(30, 4, 1)
    with pytest.raises(
        SplitError, match=r"split.folds=5: class Covid has 4 independent image group\(s\), fewer than"
    ):
        fold_roles(df, 5, 0.2, 0)


def test_a_single_linkage_chain_is_reported_as_the_largest_group_with_a_warning():
    """30 images whose pHashes each differ from the next by 8 bits (<= 12: joined) but from the
    chain's far end by 232: single-linkage makes them one group, 30% of the data, which the split
    must deal whole; split.json names it and warns. Distinct images stay below the warning."""
    from cxr_transfer.data.split import GROUP_WARN_SHARE, join_near_duplicates, largest_group

    df = table(50, 50)
    rng = np.random.default_rng(1)
    far = [int.from_bytes(rng.bytes(32), "big") for _ in range(len(df))]  # unrelated images
    chain = [((1 << (8 * i)) - 1) for i in range(30)]  # i * 8 low bits set: neighbours 8 bits apart
    hashes = [f"{h:064x}" for h in chain + far[30:]]
    df = df.assign(phash=hashes, phash_framed=[f"{h:064x}" for h in far])
    alone = largest_group(df, 0.2)
    assert alone["images"] == 1 and alone["warning"] is None
    joined, pairs = join_near_duplicates(df, 12, None)
    assert pairs >= 29
    big = largest_group(joined, 0.2)
    assert big["images"] == 30 and big["share"] == 0.3 and big["share"] > GROUP_WARN_SHARE
    assert sum(big["classes"].values()) == 30
    assert big["warning"].startswith(
        "one split group holds 30 images (30% of 100); it goes whole into one part"
    )
    assert "split.near_duplicate_bits" in big["warning"]


@pytest.mark.parametrize("folds", [0, 3])
def test_the_split_stage_work_joins_near_copies_then_splits_or_folds(folds):
    """split_data, what the split stage calls: two near-identical images (2 bits apart) become one
    group before the split, the summary counts them, and with k folds the folds table gives every
    image one test fold while train/val/test are fold 0's parts."""
    from types import SimpleNamespace

    from cxr_transfer.data.split import split_data

    df = table(40, 40)
    rng = np.random.default_rng(3)
    hashes = [int.from_bytes(rng.bytes(32), "big") for _ in range(len(df))]
    hashes[1] = hashes[0] ^ 0b11  # a near copy of image 0
    df = df.assign(phash=[f"{h:064x}" for h in hashes], phash_framed=[f"{h:064x}" for h in hashes])
    cfg = SimpleNamespace(
        near_duplicate_bits=12,
        near_duplicate_framed_bits=None,
        folds=folds,
        folds_by="group",
        test_size=0.2,
        val_size=0.2,
        seed=42,
    )
    parts, table_k, summary = split_data(df, cfg)
    near = summary["near_duplicates"]
    assert (near["pairs"], near["groups_before"], near["groups_after"]) == (1, 80, 79)
    assert sum(len(p) for p in parts.values()) == 80 and summary["largest_group"]["images"] == 2
    together = [s for s, p in parts.items() if {df["path"][0], df["path"][1]} <= set(p["path"])]
    assert len(together) == 1  # the joined pair went whole into one part
    if folds:
        assert sorted(table_k[[f"f{i}" for i in range(folds)]].eq("test").sum(axis=1).unique()) == [1]
        assert (table_k["f0"] == "test").sum() == len(parts["test"]) and summary["folds"]["k"] == folds
    else:
        assert table_k is None and summary["folds"] is None


def sourced(held: dict[str, dict[str, int]]) -> pd.DataFrame:
    """A collection whose images carry a source: {source: {class: images}}."""
    rows = []
    for src, counts in held.items():
        for cls, n in counts.items():
            label = ["Normal", "Covid"].index(cls)
            for i in range(n):
                path = f"{src}/{cls}/{i}.png"
                rows.append({"path": path, "label": label, "class": cls, "group": path, "source": src})
    return pd.DataFrame(rows)


def test_leave_one_source_out_folds_are_the_sources_that_hold_both_classes():
    """Sources A and B hold both classes, C only Covid (the Radiography Database's way): two
    folds, each testing exactly one of A and B with a model trained on the rest (C included);
    C is never tested, and split.json counts each source's classes per part."""
    from cxr_transfer.core.params import SplitConfig
    from cxr_transfer.data.split import split_data

    df = sourced({"A": {"Normal": 30, "Covid": 20}, "B": {"Normal": 25, "Covid": 25}, "C": {"Covid": 40}})
    parts, folds, summary = split_data(
        df, SplitConfig(folds_by="source", near_duplicate_bits=None, near_duplicate_framed_bits=None)
    )
    by = summary["folds"]["by_source"]
    assert by["folds"] == {"f0": "A", "f1": "B"} and by["never_tested"] == 40
    assert by["held"] == {"A": ["Covid", "Normal"], "B": ["Covid", "Normal"], "C": ["Covid"]}
    for f, src in by["folds"].items():
        tested = folds[folds[f] == "test"]
        assert set(tested["source"]) == {src} and len(tested) == (df["source"] == src).sum()
        trained = folds[folds[f] != "test"]
        assert src not in set(trained["source"]) and "C" in set(trained["source"])
    assert summary["folds"]["images_tested_once"] == 100  # A and B, once each; C never
    assert summary["sources"]["test"] == {"A": {"Covid": 20, "Normal": 30}}  # fold 0's test part
    assert summary["sources"]["train"]["C"] == {
        "Covid": sum(folds.loc[folds["source"] == "C", "f0"] == "train")
    }


def test_without_two_sources_holding_both_classes_the_split_says_what_the_data_cannot_tell():
    from cxr_transfer.core.params import SplitConfig
    from cxr_transfer.data.split import split_data

    df = sourced({"A": {"Normal": 30}, "B": {"Covid": 30}, "C": {"Covid": 10, "Normal": 10}})
    with pytest.raises(SplitError) as e:
        split_data(
            df, SplitConfig(folds_by="source", near_duplicate_bits=None, near_duplicate_framed_bits=None)
        )
    msg = str(e.value)
    assert msg.startswith(
        "split.folds_by: source: 1 of 3 sources hold every class (A: Normal; B: Covid; C: Covid, Normal), "
        "so the data cannot separate source from label"
    )
    assert "only an external set can" in msg and "\n" not in msg
    with pytest.raises(SplitError, match="no image has a source"):
        split_data(
            df.assign(source=""),
            SplitConfig(folds_by="source", near_duplicate_bits=None, near_duplicate_framed_bits=None),
        )


def test_folds_by_source_takes_no_fold_count():
    from cxr_transfer.core.params import ParamError, SplitConfig

    with pytest.raises(ParamError, match="split.folds: leave it null with folds_by: source"):
        SplitConfig(folds_by="source", folds=5)
    with pytest.raises(ParamError, match="split.folds_by: 'hospital' is not one of"):
        SplitConfig(folds_by="hospital")
