"""model.json, the sidecar a train stage writes beside best.pt: one schema, written by training and
read by evaluate, export, predict, Grad-CAM and the report.

The inference fields (arch, mode, classes, image_size, mean, std) are required; everything else
says how the model was trained and may be absent in a hand-made folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from cxr_transfer.core.cli import write_json

SUMMARY = (  # the training summary (loop.summarize), also DVCLive's metrics.json
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "best_val_loss",
    "best_val_acc",
    "best_val_auroc",
    "train_seconds",
    "feature_seconds",
    "images_per_s",
    "trainable_params",
    "total_params",
)
ORDER = (  # the file's key order, as it has always been written; the summary's figures follow
    "arch",
    "mode",
    "seed",
    "classes",
    "image_size",
    "bits_stored",
    "preprocess",
    "training_images",
    "data_sha1",
    "mean",
    "std",
    "mode_config",
    "train",
    "weights",
    "device",
    "precision",
    "memory_format",
    "processes",
    "store",
    "cached_features",
    "fold",
    "folds",
)
FOLD_ONLY = ("fold", "folds")  # written only for a k-fold run's models


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    mode: str
    classes: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    seed: int | None = None
    bits_stored: int | None = None
    preprocess: dict | None = None  # {intensity, crop} (data/preprocess.py); absent = none/none
    training_images: dict | None = None
    data_sha1: dict | None = None  # the train and val stores' content hashes (k folds: the fold)
    mode_config: dict | None = None
    train: dict | None = None
    weights: dict | None = None
    device: str | None = None
    precision: str | None = None
    memory_format: str | None = None
    processes: int | None = None
    store: str | None = None
    cached_features: bool | None = None
    fold: int | None = None
    folds: int | None = None
    summary: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ORDER}
        d = {k: v for k, v in d.items() if not (k in FOLD_ONLY and v is None)}
        return d | self.summary

    def write(self, model_dir: Path) -> None:
        write_json(Path(model_dir) / "model.json", self.to_json())

    @classmethod
    def from_json(cls, d: dict) -> ModelInfo:
        """Raises KeyError naming a missing inference field, TypeError for a non-object."""
        if not isinstance(d, dict):
            raise TypeError(f"a JSON object, not {type(d).__name__}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        required = [k for k in required if k != "summary"]
        kept = {k: d[k] for k in required} | {k: d[k] for k in ORDER if k in d and k not in required}
        return cls(**kept, summary={k: d[k] for k in SUMMARY if k in d})

    @classmethod
    def read(cls, model_dir: Path) -> ModelInfo:
        return cls.from_json(json.loads((Path(model_dir) / "model.json").read_text()))
