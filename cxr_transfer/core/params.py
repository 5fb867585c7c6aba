"""Typed, validated params.yaml: one frozen dataclass per section.

Every stage calls `load_params` and reads only its own section; an unknown key, a wrong type or
an out-of-range value fails with one line naming the key and what is allowed. The dataclass
defaults are the one source of truth: the committed params.yaml states exactly them (a test
checks), so a key left out of a user's params.yaml means what the README says it means.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.registry import ARCHS


class ParamError(CxrError):
    """A params.yaml value that cannot be used; the message names the key."""


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ParamError(f"params.yaml: {key}: {msg}")


def _choice(value: str, key: str, allowed) -> None:
    _check(value in allowed, key, f"{value!r} is not one of {sorted(allowed)}")


@dataclass(frozen=True)
class MetadataConfig:
    file: tuple[str, ...] | None = None  # one table or several (the Radiography DB ships one per class)
    filename_column: str = "FILE NAME"
    patient_column: str | None = "PATIENT ID"
    source_column: str | None = None


@dataclass(frozen=True)
class LabelsConfig:
    """Labels from a table instead of class folders: each row names an image (a path relative to
    data.root, or a bare file name) and its label (a class name or one of its aliases)."""

    file: str | None = None  # relative to data.root (CSV or Excel); null = class folders
    filename_column: str = "file"
    label_column: str = "label"


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/raw"
    classes: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"Normal": ("NORMAL", "Normal"), "Covid": ("COVID", "COVID-19")}
    )
    positive: str | None = "Covid"  # two classes: required; more: optional (that class vs the rest)
    bits_stored: int | None = None
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    sources: dict[str, str] | None = None  # source name -> its folder under data.root (class folders)

    def __post_init__(self):
        _check(
            len(self.classes) >= 2,
            "data.classes",
            f"{len(self.classes)} class(es) given; name at least two, each with its folder names",
        )
        for name in self.classes:
            bad = name != name.strip() or name == "" or any(c in "/\\|" or not c.isprintable() for c in name)
            _check(
                not bad,
                f"data.classes.{name!r}",
                "a class name names files, columns and table cells: no /, \\, |, control characters "
                "or surrounding spaces",
            )
        if self.bits_stored is not None:
            _check(8 <= self.bits_stored <= 16, "data.bits_stored", "must be null or in [8, 16]")
        for f, k in [
            *((f, "data.metadata.file") for f in self.metadata.file or ()),
            (self.labels.file, "data.labels.file"),
        ]:
            if f is None:
                continue
            inside = not Path(f).is_absolute() and ".." not in Path(f).parts and f.strip() != ""
            _check(
                inside,
                k,
                f"{f!r}: give the table's path relative to data.root (DVC tracks data.root, so a change "
                "to the table reruns the index stage)",
            )
        if self.positive is None:
            _check(
                len(self.classes) > 2,
                "data.positive",
                "two classes need a positive one (recall, specificity and AUROC are about it); "
                f"set it to one of {sorted(self.classes)}",
            )
        else:
            _choice(self.positive, "data.positive", self.classes)
        seen: dict[str, str] = {}
        for name, aliases in self.classes.items():
            _check(len(aliases) > 0, f"data.classes.{name}", "needs at least one folder alias")
            for alias in (name, *aliases):
                other = seen.setdefault(alias.lower(), name)
                _check(other == name, f"data.classes.{name}", f"alias {alias!r} also names {other}")

        if self.sources is not None:
            self._check_sources()

    def _check_sources(self) -> None:
        _check(len(self.sources) >= 1, "data.sources", "name at least one source, or set it to null")
        _check(
            self.metadata.source_column is None,
            "data.sources",
            "data.metadata.source_column also gives each image a source; keep one of the two",
        )
        aliases = {a.lower() for c, al in self.classes.items() for a in (c, *al)}
        seen: dict[tuple, str] = {}
        for name, folder in self.sources.items():
            key = f"data.sources.{name}"
            bad = name != name.strip() or name == "" or any(c in "|" or not c.isprintable() for c in name)
            _check(not bad, key, "a source name is a table cell: no |, control characters or outer spaces")
            parts = Path(folder).parts
            inside = not Path(folder).is_absolute() and ".." not in parts and folder.strip() not in ("", ".")
            _check(inside, key, f"{folder!r}: give the source's folder relative to data.root (DVC hashes it)")
            clash = next((p for p in parts if p.lower() in aliases), None)
            _check(clash is None, key, f"{folder!r}: {clash!r} names a class; a source's folder holds those")
            for other, name2 in seen.items():
                nested = parts[: len(other)] == other or other[: len(parts)] == parts
                _check(not nested, key, f"{folder!r} nests with data.sources.{name2}; give separate folders")
            seen[parts] = name

    def metadata_paths(self) -> list[Path]:
        """The metadata tables, which lie inside data.root (so DVC tracks their contents)."""
        return [Path(self.root) / f for f in self.metadata.file or ()]


SYNTH_CLASSES = ("Normal", "Covid", "Pneumonia")
SYNTH_SITES = ("none", "site-b")


@dataclass(frozen=True)
class SynthesizeConfig:
    n_per_class: int = 200
    image_size: int = 128
    seed: int = 0
    shortcut: str = "none"
    classes: tuple[str, ...] = ("Normal", "Covid")
    external: str = "site-b"  # a second site's images (another acquisition, no shortcut) in data/site-b

    def __post_init__(self):
        _choice(self.external, "synthesize.external", SYNTH_SITES)
        for c in self.classes:
            _choice(c, "synthesize.classes", SYNTH_CLASSES)
        _check(
            len(set(self.classes)) == len(self.classes) >= 2,
            "synthesize.classes",
            f"{list(self.classes)}: name at least two different classes",
        )
        _choice(self.shortcut, "synthesize.shortcut", ("none", "border", "marker", "exposure"))
        _check(self.n_per_class >= 1, "synthesize.n_per_class", "must be >= 1")
        _check(32 <= self.image_size <= 1024, "synthesize.image_size", "must be in [32, 1024]")


@dataclass(frozen=True)
class ExternalConfig:
    """An external test set: another site's images, indexed and prepared by the training data's
    rules and scored by every trained model; never used to train, select or threshold."""

    name: str
    root: str
    classes: dict[str, tuple[str, ...]] | None = None  # folder aliases per class; None = data.classes'
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    with_root: str | None = None  # scored only while data.root is this folder (the demo's site-b: data/raw)


@dataclass(frozen=True)
class IndexConfig:
    max_pixels: int = 50_000_000
    workers: int = 0

    def __post_init__(self):
        _check(self.max_pixels >= 1, "index.max_pixels", "must be >= 1")
        _check(self.workers >= 0, "index.workers", "must be >= 0 (0 = one per CPU core)")


FOLDS_BY = ("group", "source")


@dataclass(frozen=True)
class SplitConfig:
    test_size: float = 0.2
    val_size: float = 0.2
    seed: int = 42
    near_duplicate_bits: int | None = 12  # whole-image pHash: resized and re-encoded copies
    near_duplicate_framed_bits: int | None = 24  # pHash of the body's frame: cropped copies
    folds: int | None = None  # None: one train/val/test split; k >= 3: grouped, stratified k-fold
    folds_by: str = "group"  # source: leave-one-source-out, one fold per source holding both classes

    def __post_init__(self):
        _choice(self.folds_by, "split.folds_by", FOLDS_BY)
        _check(
            self.folds_by == "group" or self.folds is None,
            "split.folds",
            "leave it null with folds_by: source (one fold per source that holds every class)",
        )
        _check(
            self.folds is None or 3 <= self.folds <= 20,
            "split.folds",
            f"is {self.folds}; give null (one split) or a number of folds from 3 to 20",
        )
        for key in ("near_duplicate_bits", "near_duplicate_framed_bits"):
            v = getattr(self, key)
            _check(v is None or 0 <= v <= 64, f"split.{key}", "must be null or in [0, 64]")
        for key in ("test_size", "val_size"):
            v = getattr(self, key)
            _check(0.0 < v < 1.0, f"split.{key}", f"{v} must be in (0, 1)")


INTENSITIES = ("none", "equalize", "clahe", "percentile")
CROPS = ("none", "body")


@dataclass(frozen=True)
class PrepareConfig:
    image_size: int = 96
    workers: int = 0
    intensity: str = "none"  # data/preprocess.py: none | equalize | clahe | percentile
    crop: str = "none"  # none | body

    def __post_init__(self):
        _check(16 <= self.image_size <= 1024, "prepare.image_size", "must be in [16, 1024]")
        _check(self.workers >= 0, "prepare.workers", "must be >= 0 (0 = one per CPU core)")
        _choice(self.intensity, "prepare.intensity", INTENSITIES)
        _choice(self.crop, "prepare.crop", CROPS)


WEIGHT_SOURCES = ("imagenet", "none")


@dataclass(frozen=True)
class WeightsConfig:
    source: str = "imagenet"
    dir: str = "weights"

    def __post_init__(self):
        _choice(self.source, "weights.source", WEIGHT_SOURCES)
        _check(self.dir.strip() != "", "weights.dir", "name a folder (it may be empty)")


TRAINABLE = ("head", "classifier", "all")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "one_cycle")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("shuffle", "balanced")


@dataclass(frozen=True)
class AcquisitionConfig:
    """Simulated changes of scanner and exposure, drawn afresh for every training image on the
    batch's device (runtime/batches.acquisition_shift); each key's 0 turns its change off. u is
    uniform on [0, 1) and s on [-1, 1), one draw per image and key."""

    resolution: float = 0.0  # down-sample to (1 - u * resolution) of the size, then back up
    blur: float = 0.0  # Gaussian blur, sigma = u * blur pixels (at prepare.image_size)
    noise: float = 0.0  # additive Gaussian noise, sd = u * noise of the full range
    gamma: float = 0.0  # x ** exp(s * log(1 + gamma))
    contrast: float = 0.0  # (x - mean) * (1 + s * contrast) + mean
    brightness: float = 0.0  # + s * brightness of the full range

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))

    def validate(self, key: str) -> None:
        limits = {
            "resolution": 0.9,
            "blur": 10.0,
            "noise": 0.5,
            "gamma": 3.0,
            "contrast": 0.9,
            "brightness": 0.5,
        }
        for name, top in limits.items():
            v = getattr(self, name)
            _check(0.0 <= v <= top, f"{key}.{name}", f"{v} must be in [0, {top}] (0 = off)")


@dataclass(frozen=True)
class ModeConfig:
    """One way to train. The keys after weight_decay are the recipe; their defaults are the
    seed's (constant rate, no warmup, one rate for every layer, plain cross-entropy)."""

    pretrained: bool
    trainable: str
    optimizer: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"  # per optimizer step, after the warmup
    warmup_epochs: int = 0  # linear warmup from lr/steps to lr
    step_epochs: int = 5  # schedule step: multiply by gamma every step_epochs
    gamma: float = 0.1
    backbone_lr_mult: float = 1.0  # the pretrained layers' rate is lr x this (the new last layer: lr)
    freeze_epochs: int = 0  # first train the new last layer on the frozen backbone, then unfreeze
    label_smoothing: float = 0.0
    class_weight: str = "none"  # balanced: loss weight n / (K n_k) for class k
    sampler: str = "shuffle"  # balanced: draw training images with replacement, classes equally often
    lr_slice: float = 1.0  # fastai's slice(lr / lr_slice, lr): rates spread geometrically over layer groups
    train_bn: bool = False  # BatchNorm layers train during the frozen epochs (fastai's train_bn)
    betas: tuple[float, ...] = (0.9, 0.999)  # Adam/AdamW's (beta1, beta2); one_cycle cycles beta1 per step
    eps: float = 1e-8  # Adam/AdamW's epsilon
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)  # off: see AcquisitionConfig

    @classmethod
    def from_json(cls, d: dict) -> ModeConfig:
        """From model.json's mode_config (lists for tuples; absent recipe keys: their defaults)."""
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        d["acquisition"] = AcquisitionConfig(**(d.get("acquisition") or {}))
        return cls(**d)

    def validate(self, key: str) -> None:
        _choice(self.trainable, f"{key}.trainable", TRAINABLE)
        _choice(self.optimizer, f"{key}.optimizer", OPTIMIZERS)
        _check(0.0 < self.lr < 10.0, f"{key}.lr", f"{self.lr} must be in (0, 10)")
        _check(0.0 <= self.momentum < 1.0, f"{key}.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0.0, f"{key}.weight_decay", "must be >= 0")
        _choice(self.schedule, f"{key}.schedule", SCHEDULES)
        _check(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be >= 0")
        _check(self.step_epochs >= 1, f"{key}.step_epochs", "must be >= 1")
        _check(0.0 < self.gamma <= 1.0, f"{key}.gamma", "must be in (0, 1]")
        _check(0.0 < self.backbone_lr_mult <= 100.0, f"{key}.backbone_lr_mult", "must be in (0, 100]")
        _check(
            self.pretrained or self.backbone_lr_mult == 1.0,
            f"{key}.backbone_lr_mult",
            "applies to pretrained layers; set pretrained: true or leave it at 1",
        )
        _check(self.freeze_epochs >= 0, f"{key}.freeze_epochs", "must be >= 0")
        _check(
            self.freeze_epochs == 0 or (self.pretrained and self.trainable != "head"),
            f"{key}.freeze_epochs",
            "needs pretrained: true and a trainable part beyond the head (all or classifier)",
        )
        _check(0.0 <= self.label_smoothing < 1.0, f"{key}.label_smoothing", "must be in [0, 1)")
        _choice(self.class_weight, f"{key}.class_weight", CLASS_WEIGHTS)
        _choice(self.sampler, f"{key}.sampler", SAMPLERS)
        _check(1.0 <= self.lr_slice <= 1e4, f"{key}.lr_slice", "must be in [1, 10000] (1: one rate)")
        _check(
            self.lr_slice == 1.0 or self.backbone_lr_mult == 1.0,
            f"{key}.lr_slice",
            "and backbone_lr_mult both set the pretrained layers' rates; keep one of them at 1",
        )
        _check(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"{key}.betas",
            f"{list(self.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
        _check(0.0 < self.eps < 1.0, f"{key}.eps", "must be in (0, 1)")
        self.acquisition.validate(f"{key}.acquisition")
        _check(
            not self.train_bn or self.freeze_epochs > 0,
            f"{key}.train_bn",
            "applies while the backbone is frozen; set freeze_epochs >= 1 or train_bn: false",
        )


_ADAM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5}
SEED_MODES: dict[str, ModeConfig] = {  # the seed tutorial's modes
    "scratch": ModeConfig(False, "all", "sgd", 1e-3, momentum=0.9),
    "fe": ModeConfig(True, "head", **_ADAM),
    "ft": ModeConfig(True, "all", **_ADAM),
    "ft_classifier": ModeConfig(True, "classifier", **_ADAM),
}
# Gradual fine-tuning: one epoch on the frozen backbone, then every layer, the pretrained ones at a
# tenth of the rate, with warmup, a cosine decay, AdamW and label smoothing. In the spirit of fastai's
# fine_tune, not its recipe: FT_ONE_CYCLE below is closer.
FT_GRADUAL = ModeConfig(
    True,
    "all",
    "adamw",
    1e-3,
    weight_decay=0.01,
    schedule="cosine",
    warmup_epochs=1,
    backbone_lr_mult=0.1,
    freeze_epochs=1,
    label_smoothing=0.1,
)
# After fastai's Learner.fine_tune(epochs, base_lr=2e-3, freeze_epochs=1): one-cycle on the frozen body
# with BatchNorm trainable, then half the rate over every layer with one-cycle and
# slice(base_lr / 100, base_lr) over the layer groups; fastai's Adam (decoupled weight decay 0.01).
# Not fastai's recipe in: three layer groups split by parameter count (fastai: its per-architecture
# split; two groups, body and head, for timm models), the frozen body's BatchNorm at the head's rate
# (fastai: base_lr / 10), weight decay on BatchNorm and biases (fastai: none), the checkpoint kept by
# train.select (fastai: the last), train.epochs counting the frozen epoch (fastai: epochs + 1) and
# dropout off in the frozen epoch (fastai trains the whole model in train mode).
FT_ONE_CYCLE = ModeConfig(
    True,
    "all",
    "adamw",
    2e-3,
    weight_decay=0.01,
    schedule="one_cycle",
    freeze_epochs=1,
    lr_slice=100.0,
    train_bn=True,
    betas=(0.95, 0.99),  # fastai's Adam
    eps=1e-5,
)
# ft, trained on images whose acquisition changes from batch to batch: resolution, blur, noise,
# gamma, contrast and brightness each drawn per image (AcquisitionConfig), for a second site's scanner.
FT_ROBUST = dataclasses.replace(
    SEED_MODES["ft"],
    acquisition=AcquisitionConfig(
        resolution=0.5, blur=1.0, noise=0.03, gamma=0.3, contrast=0.2, brightness=0.1
    ),
)
DEFAULT_MODES = {**SEED_MODES, "ft_gradual": FT_GRADUAL, "ft_one_cycle": FT_ONE_CYCLE, "ft_robust": FT_ROBUST}


DEVICES = ("auto", "cpu", "cuda", "mps")
SELECT = ("val_loss", "val_auroc")  # the figure early stopping and the best checkpoint follow
PRECISIONS = ("auto", "fp32", "bf16")  # see engine.Precision


@dataclass(frozen=True)
class TrainConfig:
    modes: tuple[str, ...] = ("scratch", "fe", "ft", "ft_gradual")
    epochs: int = 5
    batch_size: int = 32
    patience: int = 8
    seeds: tuple[int, ...] = (0,)  # one training run per seed per arch x mode
    device: str = "auto"
    precision: str = "auto"
    launcher: str = "python"  # the train stage's command: python, or torchrun and its options
    sync_batchnorm: bool = False  # under torchrun on GPUs: BatchNorm over the global batch
    memory_budget: str | float = "auto"  # GiB of image store loaded whole on the device; beyond, streamed
    compile: str | bool = "auto"  # auto: where speed.compile_pays (its compile time against the run's steps)
    augment: bool = False
    select: str = "val_loss"  # early stopping and the kept checkpoint: lowest val loss, or highest val AUROC
    deterministic: bool = False  # PyTorch's deterministic algorithms (slower; see the README)

    def __post_init__(self):
        _choice(self.select, "train.select", SELECT)
        _check(len(self.modes) > 0, "train.modes", "name at least one mode of the modes table")
        _check(len(set(self.modes)) == len(self.modes), "train.modes", "has a repeated mode")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.patience >= 1, "train.patience", "must be >= 1")
        _check(len(self.seeds) > 0, "train.seeds", "name at least one seed, e.g. [0]")
        _check(len(set(self.seeds)) == len(self.seeds), "train.seeds", "has a repeated seed")
        _check(all(s >= 0 for s in self.seeds), "train.seeds", "seeds must be >= 0")
        _choice(self.device, "train.device", DEVICES)
        _choice(self.precision, "train.precision", PRECISIONS)
        _check_launcher(self.launcher)
        _check(
            self.compile in ("auto", True, False),
            "train.compile",
            f"is {self.compile!r}; give auto, true or false",
        )
        _check(
            self.memory_budget == "auto"
            or (
                isinstance(self.memory_budget, int | float)
                and not isinstance(self.memory_budget, bool)
                and self.memory_budget >= 0
            ),
            "train.memory_budget",
            f"is {self.memory_budget!r}; give auto or a number of GiB >= 0 (0 streams every store)",
        )


LAUNCHER_WORD = re.compile(r"--?[A-Za-z][A-Za-z0-9_-]*(=[A-Za-z0-9_.:/-]+)?|[A-Za-z0-9_.:/-]+")


def _check_launcher(launcher: str) -> None:
    """train.launcher is pasted into the train stage's shell command by DVC, so it must be words
    a shell cannot read as anything else: `python`, or `torchrun` and options of letters, digits
    and . _ : / - (no ; & | $ ` quotes, redirections or spaces inside a word)."""
    words = launcher.split(" ")
    ok = (
        words[0] in ("python", "torchrun")
        and (words[0] == "torchrun" or len(words) == 1)
        and all(LAUNCHER_WORD.fullmatch(w) for w in words if w != "")
    )
    _check(
        ok,
        "train.launcher",
        f"is {launcher!r}; give python, or torchrun and its options (--nproc-per-node 2), "
        "in words of letters, digits and . _ : / - (DVC pastes it into a shell command)",
    )


@dataclass(frozen=True)
class EvaluateConfig:
    bootstrap: int = 1000
    confidence: float = 0.95
    ece_bins: int = 10
    seed: int = 0

    def __post_init__(self):
        _check(self.bootstrap >= 10, "evaluate.bootstrap", "must be >= 10")
        _check(0.5 <= self.confidence < 1.0, "evaluate.confidence", "must be in [0.5, 1)")
        _check(self.ece_bins >= 2, "evaluate.ece_bins", "must be >= 2")


@dataclass(frozen=True)
class ProbeConfig:
    thumbnails: tuple[int, ...] = (8, 16)
    box: float = 0.7
    flag_auroc: float = 0.8
    flag_cramers_v: float = 0.5
    bootstrap: int = 500
    confidence: float = 0.95
    seed: int = 0
    near_duplicate_bits: int = 24  # looser than split's join: near pairs the split left apart
    near_duplicate_framed_bits: int = 36

    def __post_init__(self):
        _check(len(self.thumbnails) > 0, "probe.thumbnails", "name at least one thumbnail size")
        for k in ("near_duplicate_bits", "near_duplicate_framed_bits"):
            _check(0 <= getattr(self, k) <= 128, f"probe.{k}", "must be in [0, 128] bits of a 256-bit pHash")
        for t in self.thumbnails:
            _check(2 <= t <= 64, "probe.thumbnails", f"{t} must be in [2, 64]")
        _check(0.1 <= self.box <= 0.95, "probe.box", "must be in [0.1, 0.95] (a fraction of each side)")
        _check(0.5 < self.flag_auroc <= 1.0, "probe.flag_auroc", "must be in (0.5, 1]")
        _check(0.0 < self.flag_cramers_v <= 1.0, "probe.flag_cramers_v", "must be in (0, 1]")
        _check(self.bootstrap >= 10, "probe.bootstrap", "must be >= 10")
        _check(0.5 <= self.confidence < 1.0, "probe.confidence", "must be in [0.5, 1)")


@dataclass(frozen=True)
class ReportConfig:
    gradcam_per_group: int = 4
    gradcam_share_images: int = 256
    seed: int = 0

    def __post_init__(self):
        _check(0 <= self.gradcam_per_group <= 8, "report.gradcam_per_group", "must be in [0, 8]")
        _check(
            self.gradcam_share_images >= 0,
            "report.gradcam_share_images",
            "must be >= 0 (0 skips the Grad-CAM lung share)",
        )


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    archs: tuple[str, ...] = ("efficientnet_lite0",)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    modes: dict[str, ModeConfig] = field(default_factory=lambda: dict(DEFAULT_MODES))
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    external: tuple[ExternalConfig, ...] = (ExternalConfig("site-b", "data/site-b", with_root="data/raw"),)

    def __post_init__(self):
        names = [e.name for e in self.external]
        for i, e in enumerate(self.external):
            key = f"external[{i}]"
            ok = e.name != "" and all(c.isalnum() or c in "-_" for c in e.name)
            _check(
                ok, f"{key}.name", f"{e.name!r}: use letters, digits, - and _ (it names folders and stages)"
            )
            _check(names.count(e.name) == 1, f"{key}.name", f"{e.name!r} names two external sets")
            _check(e.root.strip() != "", f"{key}.root", "name the folder of the external set's class folders")
            for c in e.classes or {}:
                _choice(c, f"{key}.classes", self.data.classes)
        _check(len(self.archs) > 0, "archs", "name at least one architecture")
        for a in self.archs:
            _choice(a, "archs", ARCHS)
        for name, mode in self.modes.items():
            _check(name.isidentifier(), f"modes.{name}", "a mode name must be a plain identifier")
            mode.validate(f"modes.{name}")
        for k in ("near_duplicate_bits", "near_duplicate_framed_bits"):
            join, probe = getattr(self.split, k), getattr(self.probe, k)
            _check(
                join is None or probe > join,
                f"probe.{k}",
                f"({probe}) must exceed split.{k} ({join}): the probe counts near pairs the split left apart",
            )
        for m in self.train.modes:
            _choice(m, "train.modes", self.modes)
            _check(
                self.modes[m].freeze_epochs < self.train.epochs,
                f"modes.{m}.freeze_epochs",
                f"({self.modes[m].freeze_epochs}) leaves no epoch of train.epochs ({self.train.epochs}) "
                "to train the unfrozen network; lower it or raise train.epochs",
            )


def _convert(value, tp, key: str):
    """Convert a YAML value to the annotated type `tp`, or fail naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        if isinstance(value, str) and str in kinds:  # e.g. `auto` of a str | float key
            return value
        return _convert(value, next((a for a in kinds if a is not str), kinds[0]), key)
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        _check(isinstance(items, list | tuple), key, f"expected a list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        _check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _check(ok, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _check(ok, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp} for {key}")  # a bug in this module, not in params


def _build(cls, mapping: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in mapping:
        if k not in names:
            key = f"{prefix}{'.' if prefix else ''}{k}"
            near = difflib.get_close_matches(str(k), sorted(names), n=1, cutoff=0.6)
            hint = (
                f"did you mean {prefix}{'.' if prefix else ''}{near[0]}?"
                if near
                else f"the settings here are {sorted(names)}"
            )
            raise ParamError(f"params.yaml: {key} is not a setting; {hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{'.' if prefix else ''}{f.name}"
        if f.name in mapping:
            kwargs[f.name] = _convert(mapping[f.name], hints[f.name], key)
        else:
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            _check(not no_default, key, "is required")
    return cls(**kwargs)


def parse_params(mapping: dict) -> Params:
    """Build validated Params from a plain mapping (the parsed YAML)."""
    if not isinstance(mapping, dict):
        what = f"not {mapping!r}"[:80]
        raise ParamError(
            f"params.yaml: the top level must be a mapping of sections (data:, train:, ...), {what}"
        )
    return _build(Params, mapping)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamError with a one-line message on bad input."""
    path = Path(path)
    if not path.exists():
        raise ParamError(f"{path} not found; run from the project root")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    return parse_params(raw)
