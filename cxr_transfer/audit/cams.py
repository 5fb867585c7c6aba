"""Grad-CAM on a trained run: its model, CAM layer and normalisation assembled once (predict's
--gradcam and the report use the same), the test images' maps cached, and the share of their mass
on the lungs (the probes' central box) as a check of where the models look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_transfer.audit.gradcam import gradcam, mass_inside
from cxr_transfer.runtime.batches import Normalizer
from cxr_transfer.runtime.models import get_spec, load_trained


class CamModel:
    """A trained run folder ready for Grad-CAM on uint8 (N, S, S) images."""

    def __init__(self, model_dir: Path):
        self.model, self.info = load_trained(model_dir)
        self.layer = self.model.get_submodule(get_spec(self.info.arch).cam_layer)
        self.norm = Normalizer(self.info.mean, self.info.std)

    def maps(self, x, targets, each: bool = True) -> np.ndarray:
        """(N, S, S) maps toward `targets` (one class index for all, or one per image)."""
        return gradcam(
            self.model, self.layer, self.norm(torch.as_tensor(np.asarray(x))[:, None]), targets, each=each
        )


class Cams(CamModel):
    """A run's model with its test predictions (evaluate's predictions.csv): each image's true and
    predicted class; two classes: maps toward the positive class; more: toward the predicted one."""

    def __init__(self, model_dir: Path, preds: pd.DataFrame, classes: list[str], positive: str):
        super().__init__(model_dir)
        self.classes, self.positive, self.preds = classes, positive, preds
        self.y = preds["class"].map(classes.index).to_numpy()
        self.pred = preds["predicted"].map(classes.index).to_numpy()  # the one decision rule's call
        if len(classes) == 2:
            pos = classes.index(positive)
            self.labels, self.conf = (pos, 1 - pos), preds["probability"].to_numpy()
        else:
            self.labels = range(len(classes))
            self.conf = preds[[f"p_{c}" for c in classes]].max(axis=1).to_numpy()
        self._maps: dict[int, np.ndarray] = {}

    def raw(self, x_test, idx) -> np.ndarray:
        """Raw (unscaled) maps of the test images `idx`, in batches; each image's map is computed
        once (the grid reuses the lung share's)."""
        todo = [int(i) for i in idx if int(i) not in self._maps]
        for i in range(0, len(todo), 32):
            part = todo[i : i + 32]
            targets = self.classes.index(self.positive) if len(self.classes) == 2 else self.pred[part]
            self._maps.update(
                zip(part, self.maps(np.asarray(x_test)[part], targets, each=False), strict=True)
            )
        return np.stack([self._maps[int(i)] for i in idx]) if len(idx) else np.zeros((0, 1, 1))


def lung_share(cams: Cams, x_test, n: int, seed: int, box: float) -> dict:
    """The share of Grad-CAM mass on the lung box (the probes' central box), averaged over a
    seeded sample of at most `n` test images, overall and per true class."""
    rng = np.random.default_rng(seed)
    total = len(cams.preds)
    idx = np.sort(rng.choice(total, size=min(n, total), replace=False))
    share = mass_inside(cams.raw(x_test, idx), box)
    cls = cams.preds["class"].to_numpy()[idx]
    mean = lambda v: None if np.isnan(v).all() else round(float(np.nanmean(v)), 4)  # noqa: E731
    return {
        "images": len(idx),
        "all": mean(share),
        "by_class": {c: mean(share[cls == c]) for c in cams.classes if (cls == c).any()},
        "empty_maps": int(np.isnan(share).sum()),
        "uniform_map": round(box**2, 4),
    }
