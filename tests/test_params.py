import copy

import pytest
import yaml

from cxr_transfer.core.params import SEED_MODES, ParamError, Params, load_params, parse_params
from tests.conftest import ROOT

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repo_params_load_with_the_seed_defaults():
    p = load_params(ROOT / "params.yaml")
    assert p.split.test_size == 0.2 and p.split.val_size == 0.2 and p.split.seed == 42
    assert p.modes["scratch"].optimizer == "sgd" and p.modes["scratch"].momentum == 0.9
    assert p.modes["fe"].trainable == "head" and p.modes["fe"].weight_decay == 1e-5
    assert p.modes["ft"].trainable == "all" and p.modes["ft"].pretrained
    assert p.train.batch_size == 32 and p.train.patience == 8
    assert p.data.classes["Covid"] == ("COVID", "COVID-19")


@pytest.mark.parametrize(
    "path",
    ["train.epochs", "train.seeds", "split.seed", "evaluate.bootstrap", "modes.ft.schedule", "probe.box"],
)
def test_a_key_left_out_of_params_yaml_takes_its_dataclass_default(path):
    """Set, the key is read; left out, it means the dataclass's default (not a crash, not None)."""
    d = copy.deepcopy(BASE)
    *parents, leaf = path.split(".")
    node = d
    for k in parents:
        node = node[k]
    node[leaf] = {"epochs": 99, "seeds": [7], "seed": 1, "bootstrap": 30, "schedule": "cosine", "box": 0.5}[
        leaf
    ]
    changed = parse_params(d)
    del node[leaf]
    assert _get(parse_params(d), path) == _get(Params(), path) != _get(changed, path)


def _get(p, path: str):
    obj = p
    for k in path.split("."):
        obj = obj[k] if isinstance(obj, dict) else getattr(obj, k)
    return obj


def test_the_seed_modes_default_every_recipe_key_to_the_seed_way():
    seed_way = SEED_MODES["ft"]
    assert (seed_way.schedule, seed_way.warmup_epochs, seed_way.backbone_lr_mult, seed_way.freeze_epochs) == (
        "constant",
        0,
        1.0,
        0,
    )
    assert (seed_way.label_smoothing, seed_way.class_weight, seed_way.sampler) == (0.0, "none", "shuffle")


def _with(path: str, value):
    d = copy.deepcopy(BASE)
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return d


@pytest.mark.parametrize(
    "path, value, expect",
    [
        ("train.epochs", "ten", "train.epochs: expected an integer"),
        ("train.epochs", 0, "train.epochs: must be >= 1"),
        ("train.lr", 0.1, "params.yaml: train.lr is not a setting; the settings here are ["),
        ("split.test_size", 1.5, "split.test_size: 1.5 must be in (0, 1)"),
        ("archs", ["vgg19_bn", "alexnet"], "archs: 'alexnet' is not one of"),
        ("train.modes", ["scratch", "transfer"], "train.modes: 'transfer' is not one of"),
        (
            "modes.fe.trainable",
            "backbone",
            "modes.fe.trainable: 'backbone' is not one of ['all', 'classifier', 'head']",
        ),
        (
            "modes.ft.optimizer",
            "rmsprop",
            "modes.ft.optimizer: 'rmsprop' is not one of ['adam', 'adamw', 'sgd']",
        ),
        ("modes.ft.lr", -1, "modes.ft.lr: -1.0 must be in (0, 10)"),
        ("train.device", "tpu", "train.device: 'tpu' is not one of"),
        ("train.precision", "fp16", "train.precision: 'fp16' is not one of ['auto', 'bf16', 'fp32']"),
        ("train.memory_budget", "lots", "train.memory_budget: is 'lots'; give auto or a number of GiB"),
        ("train.memory_budget", -1, "train.memory_budget: is -1.0; give auto or a number of GiB >= 0"),
        ("train.memory_budget", True, "train.memory_budget: expected a number, got True"),
        ("train.seeds", [0, 1, 0], "train.seeds: has a repeated seed"),
        ("train.seeds", [], "train.seeds: name at least one seed"),
        ("train.seed", 3, "params.yaml: train.seed is not a setting; did you mean train.seeds?"),
        ("train.epoch", 3, "params.yaml: train.epoch is not a setting; did you mean train.epochs?"),
        ("modes.ft.learning_rate", 0.1, "modes.ft.learning_rate is not a setting; the settings here are"),
        ("evaluate.boostrap", 10, "evaluate.boostrap is not a setting; did you mean evaluate.bootstrap?"),
        (
            "modes.ft.schedule",
            "onecycle",
            "modes.ft.schedule: 'onecycle' is not one of ['constant', 'cosine', 'one_cycle', 'step']",
        ),
        (
            "modes.scratch.backbone_lr_mult",
            0.1,
            "modes.scratch.backbone_lr_mult: applies to pretrained layers",
        ),
        ("modes.fe.freeze_epochs", 1, "modes.fe.freeze_epochs: needs pretrained: true and a trainable part"),
        ("modes.ft.label_smoothing", 1.0, "modes.ft.label_smoothing: must be in [0, 1)"),
        (
            "modes.ft.class_weight",
            "inverse",
            "modes.ft.class_weight: 'inverse' is not one of ['balanced', 'none']",
        ),
        (
            "modes.ft.sampler",
            "oversample",
            "modes.ft.sampler: 'oversample' is not one of ['balanced', 'shuffle']",
        ),
        ("train.compile", "yes", "train.compile: is 'yes'; give auto, true or false"),
        ("train.compile", 1, "train.compile: expected true or false, got 1"),
        ("modes.ft.lr_slice", 0.5, "modes.ft.lr_slice: must be in [1, 10000]"),
        ("modes.ft_gradual.lr_slice", 100, "modes.ft_gradual.lr_slice: and backbone_lr_mult both set"),
        ("modes.ft.train_bn", True, "modes.ft.train_bn: applies while the backbone is frozen"),
        ("data.positive", "Pneumonia", "data.positive: 'Pneumonia' is not one of"),
        ("data.positive", None, "data.positive: two classes need a positive one"),
        ("data.classes", {"Normal": ["N"]}, "data.classes: 1 class(es) given; name at least two"),
        ("synthesize.classes", ["Normal", "Flu"], "synthesize.classes: 'Flu' is not one of"),
        (
            "synthesize.classes",
            ["Covid", "Covid"],
            "synthesize.classes: ['Covid', 'Covid']: name at least two",
        ),
        (
            "data.classes",
            {"Normal": ["N"], "Covid": ["N"]},
            "data.classes.Covid: alias 'N' also names Normal",
        ),
        ("data.classes", {"Normal": ["N"], "Covid|Flu": ["C"]}, "data.classes.'Covid|Flu': a class name"),
        ("data.classes", {"Normal": ["N"], "Covid/19": ["C"]}, "data.classes.'Covid/19': a class name"),
        ("weights.source", "imagnet", "weights.source: 'imagnet' is not one of ['imagenet', 'none']"),
        ("data.bits_stored", 20, "data.bits_stored: must be null or in [8, 16]"),
        ("data.metadata.file", "/elsewhere/meta.csv", "data.metadata.file: '/elsewhere/meta.csv': give"),
        ("data.metadata.file", "../meta.csv", "relative to data.root"),
        ("data.sources", {"a": "/mnt/a"}, "data.sources.a: '/mnt/a': give the source's folder relative to"),
        ("data.sources", {"a": "x/../y"}, "data.sources.a: 'x/../y': give the source's folder relative to"),
        ("data.sources", {"a": "a", "b": "a/b"}, "data.sources.b: 'a/b' nests with data.sources.a"),
        ("data.sources", {"a": "site/covid"}, "data.sources.a: 'site/covid': 'covid' names a class"),
        ("data.sources", {"a|b": "a"}, "data.sources.a|b: a source name is a table cell"),
        ("data.sources", {}, "data.sources: name at least one source, or set it to null"),
        ("data.sources", ["a", "b"], "data.sources: expected a mapping, got ['a', 'b']"),
        ("split.folds", 2, "split.folds: is 2; give null (one split) or a number of folds from 3 to 20"),
        ("split.folds", "five", "split.folds: expected an integer"),
        ("train.select", "val_acc", "train.select: 'val_acc' is not one of ['val_auroc', 'val_loss']"),
        ("train.deterministic", "yes", "train.deterministic: expected true or false"),
        ("train.launcher", "touch /tmp/X; python", "train.launcher: is 'touch /tmp/X; python'; give python"),
        ("train.launcher", "python && touch /tmp/X", "train.launcher: is 'python && touch /tmp/X'"),
        ("train.launcher", "python; touch /tmp/X", "train.launcher: is 'python; touch /tmp/X'"),
        (
            "train.launcher",
            "torchrun --nproc-per-node $(id)",
            "train.launcher: is 'torchrun --nproc-per-node $(id)'",
        ),
        ("train.launcher", "torchrun\t--standalone", "train.launcher: is"),
        ("train.launcher", "torchrun --rdzv-endpoint=host:29400 `id`", "train.launcher: is"),
        ("train.epochs", 1, "modes.ft_gradual.freeze_epochs: (1) leaves no epoch of train.epochs (1)"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(path, value, expect):
    with pytest.raises(ParamError) as e:
        parse_params(_with(path, value))
    msg = str(e.value)
    assert expect in msg
    assert "\n" not in msg


def test_a_top_level_that_is_not_a_mapping_is_one_line_naming_the_file_once():
    with pytest.raises(ParamError) as e:
        parse_params(["a list"])
    assert str(e.value) == (
        "params.yaml: the top level must be a mapping of sections (data:, train:, ...), not ['a list']"
    )


def test_missing_required_mode_field_is_named():
    d = _with("modes.fe", {"pretrained": True, "trainable": "head", "optimizer": "adam"})
    with pytest.raises(ParamError, match="modes.fe.lr: is required"):
        parse_params(d)


def test_yaml_1_1_exponent_strings_are_numbers():
    p = parse_params(_with("modes.ft.weight_decay", "1e-5"))
    assert p.modes["ft"].weight_decay == pytest.approx(1e-5)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamError, match="not valid YAML"):
        load_params(bad)


def test_defaults_alone_are_the_seeds_modes_and_match_params_yaml():
    p = parse_params({})
    assert p.modes == load_params(ROOT / "params.yaml").modes
    assert p.train.modes == ("scratch", "fe", "ft", "ft_gradual")


def test_the_metadata_file_is_one_table_or_several():
    one = parse_params(_with("data.metadata.file", "COVID.metadata.xlsx"))
    assert [p.as_posix() for p in one.data.metadata_paths()] == ["data/raw/COVID.metadata.xlsx"]
    two = parse_params(_with("data.metadata.file", ["COVID.metadata.xlsx", "Normal.metadata.xlsx"]))
    assert [p.as_posix() for p in two.data.metadata_paths()] == [
        "data/raw/COVID.metadata.xlsx",
        "data/raw/Normal.metadata.xlsx",
    ]
    assert parse_params(BASE).data.metadata_paths() == []


def test_more_than_two_classes_and_an_optional_positive():
    three = {"Normal": ["NORMAL"], "Covid": ["COVID"], "Pneumonia": ["PNEUMONIA", "Viral Pneumonia"]}
    p = parse_params(_with("data.classes", three))
    assert list(p.data.classes) == ["Normal", "Covid", "Pneumonia"] and p.data.positive == "Covid"
    d = _with("data.classes", three)
    d["data"]["positive"] = None
    assert parse_params(d).data.positive is None


def test_the_docs_radiography_database_configurations_load():
    """docs/data.md's 2-, 3- and 4-class params for the COVID-19 Radiography Database parse, and
    name the folders the database ships (tests/test_metadata.py indexes that layout)."""
    from tests.test_metadata import FOUR

    readme = (ROOT / "docs" / "data.md").read_text()
    block = readme.split("## More than two classes", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    docs = list(yaml.safe_load_all(block))
    assert [len(d["data"]["classes"]) for d in docs] == [2, 3, 4]
    for d in docs:
        base = copy.deepcopy(BASE)
        base["data"].update(d["data"])
        p = parse_params(base)
        assert p.data.positive == "Covid"
        assert p.data.classes == {k: FOUR[k] for k in p.data.classes}
