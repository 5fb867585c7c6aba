"""Grad-CAM: where in the image the model's evidence for a class lies (Selvaraju et al., 2017)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_transfer.core.errors import CxrError


def gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target, each: bool = True) -> np.ndarray:
    """(B, H, W) maps for class `target` (one class for all, or one per image): the layer's
    activations weighted by the spatial mean of their gradients, rectified and upsampled to the
    input's size. `each`: every map stretched to [0, 1] on its own (one image's picture); else the
    raw values, for a scale shared by several maps (`shared_scale`).

    The forward runs without autograd up to `layer`; the graph starts at its output, so the
    backward runs through the layers after it only (the head), not the whole network."""
    acts = []

    def start_graph(module, inputs, out):
        acts.append(out.detach().requires_grad_(True))
        torch.set_grad_enabled(True)
        return acts[-1].clone()  # not the leaf itself: a later in-place op (DenseNet's ReLU) is fine

    h = layer.register_forward_hook(start_graph)
    model.eval()
    try:
        with torch.no_grad():
            logits = model(x.detach())  # grad mode is back on from `layer` onward (the hook)
            if not acts:
                raise CxrError(f"Grad-CAM: the layer {type(layer).__name__} never ran in the model's forward")
            t = torch.as_tensor(target, device=logits.device).long().expand(len(x))
            (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), acts[0])
    finally:
        h.remove()
    a = acts[0].detach()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    if not each:
        return cam.cpu().numpy()
    lo = cam.flatten(1).min(1).values.view(-1, 1, 1)
    hi = cam.flatten(1).max(1).values.view(-1, 1, 1)
    return ((cam - lo) / (hi - lo).clamp_min(1e-12)).cpu().numpy()


def pick_examples(
    y: np.ndarray, pred: np.ndarray, per_cell: int, seed: int, labels=(1, 0)
) -> list[tuple[str, list[int]]]:
    """Seeded sample of test indices per (true class, right/wrong) cell, for a fixed grid."""
    rng = np.random.default_rng(seed)
    cells = []
    for label in labels:
        for right in (True, False):
            idx = np.flatnonzero((y == label) & ((pred == y) == right))
            take = rng.choice(idx, size=min(per_cell, len(idx)), replace=False) if len(idx) else []
            cells.append(((label, right), sorted(int(i) for i in take)))
    return cells


def overlay(img: np.ndarray, cam: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """An (S, S, 3) uint8 picture: the grayscale image under the map in the jet colours, as the
    report's grids draw it."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    gray = np.repeat(np.asarray(img, dtype=float)[..., None] / 255.0, 3, axis=2)
    return (((1 - alpha) * gray + alpha * heat) * 255).round().astype(np.uint8)


def shared_scale(cams: np.ndarray) -> np.ndarray:
    """Raw maps on one scale, 0 to the largest value among them: a weak map stays faint beside a
    strong one (stretched on its own, a map of an image scored p = 0.00 shows a "hot" blob)."""
    top = float(np.max(cams)) if np.size(cams) else 0.0
    return np.clip(np.asarray(cams) / top, 0, 1) if top > 0 else np.zeros_like(cams)


def lung_box(size: int, box: float) -> slice:
    """The central box of an image `size` pixels wide, a fraction `box` of each side: the crude
    lung fields the outside-lungs probe blacks out and the Grad-CAM share measures."""
    a = int(round(size * (1 - box) / 2))
    return slice(a, size - a)


def mass_inside(cams: np.ndarray, box: float) -> np.ndarray:
    """Per raw map (N, S, S): the share of its mass inside the central box (a fraction `box` of
    each side, the probes' crude lung fields); NaN for an all-zero map. A map spread evenly would
    score box**2."""
    cams = np.clip(np.asarray(cams, dtype=float), 0, None)
    c = lung_box(cams.shape[-1], box)
    total = cams.sum(axis=(1, 2))
    inside = cams[:, c, c].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)
