"""Build a registry architecture, load its weights, give it a 2-class last layer, and freeze what
a mode does not train (frozen = requires_grad False, outside the optimizer, BatchNorm in eval)."""

from __future__ import annotations

import torch
from torch import nn

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.profile import phase
from cxr_transfer.core.registry import ARCHS, ArchSpec
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.weights import load_imagenet


def get_spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise CxrError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _create(spec: ArchSpec) -> nn.Module:
    if spec.source == "timm":
        import timm

        return timm.create_model(spec.builder, pretrained=False, num_classes=1000)
    import torchvision

    return torchvision.models.get_model(spec.builder, weights=None, num_classes=1000)


def build_model(arch: str, weights_dir: str | None, num_classes: int, seed: int) -> nn.Module:
    """The architecture with ImageNet weights (looked up in `weights_dir` first; None = random
    weights) and a fresh `num_classes` last layer.

    Initialisation is seeded here, without touching the caller's global RNG state."""
    spec = get_spec(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _create(spec)
        if weights_dir is not None:
            load_imagenet(model, spec, weights_dir)
        last = get_module(model, spec.last_layer)
        if not isinstance(last, nn.Linear):
            raise TypeError(f"{arch}: {spec.last_layer} is {type(last).__name__}, expected Linear")
        set_module(model, spec.last_layer, nn.Linear(last.in_features, num_classes))
    return _out_of_place_clamps(model)


def _out_of_place_clamps(model: nn.Module) -> nn.Module:
    """ReLU6 (EfficientNet-Lite, MobileNet) and other Hardtanh activations computed out of place.

    PyTorch runs an in-place hardtanh as a clamp into a new tensor and a copy back: on 2 CPU cores
    EfficientNet-Lite0's training step at 96 px took 3% longer in place (the copies were 8% of its
    time). The values and gradients are the same bit for bit (the backward's mask is the same for
    the input as for the output); the price is one more activation kept per layer while training."""
    for module in model.modules():
        if isinstance(module, nn.Hardtanh) and module.inplace:
            module.inplace = False
    return model


def trainable_path(spec: ArchSpec, trainable: str) -> str:
    """Module path a mode trains: '' (the whole model), the last layer or the classifier block."""
    return {"all": "", "head": spec.last_layer, "classifier": spec.classifier}[trainable]


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_except(model: nn.Module, path: str, train_bn: bool = False) -> nn.Module:
    """Freeze every parameter outside the module at `path` ('' = train everything), except the
    BatchNorm layers' with `train_bn` (fastai's); returns the module at `path`."""
    target = get_module(model, path) if path else model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in target.parameters():
        p.requires_grad_(True)
    for m in batchnorms(model) if train_bn else []:
        for p in m.parameters():
            p.requires_grad_(True)
    return target


def set_train_mode(model: nn.Module, trained: nn.Module, train_bn: bool = False) -> None:
    """Train mode for the trained module only: frozen BatchNorm keeps its running statistics
    (with `train_bn` every BatchNorm layer trains, its statistics too)."""
    model.eval()
    trained.train()
    for m in batchnorms(model) if train_bn else []:
        m.train()


def load_trained(model_dir) -> tuple[nn.Module, ModelInfo]:
    """A trained model from its folder: the JSON sidecar says what to build, best.pt fills it.

    Weights load with weights_only=True: a checkpoint is tensors, never a pickled object."""
    from pathlib import Path

    from cxr_transfer.core.errors import CxrError, first_line

    model_dir = Path(model_dir)
    sidecar, weights = model_dir / "model.json", model_dir / "best.pt"
    try:
        meta = ModelInfo.read(model_dir)
        model = build_model(meta.arch, None, len(meta.classes), 0)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CxrError(f"{sidecar}: unusable ({type(e).__name__}: {e}); re-run the train stage") from None
    try:
        with phase("load"):
            state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # truncated zip, pickle, a state dict of another network: torch's own classes
        why = first_line(e, 160)
        raise CxrError(
            f"{weights}: cannot be loaded as {meta.arch} weights ({why}); re-run the train stage"
        ) from None
    return model.eval(), meta


def equivalent_modes(spec: ArchSpec, modes: dict) -> dict[str, str]:
    """mode -> an earlier mode that trains exactly the same thing on this architecture.

    On EfficientNet-Lite0 the classifier block is the last layer, so `ft_classifier` trains what
    `fe` trains: their results are identical, and the report says so rather than show two modes."""
    seen: dict[tuple, str] = {}
    same = {}
    for name, m in modes.items():
        rest = (tuple(v) if isinstance(v, list) else v for k, v in vars(m).items() if k != "trainable")
        key = (trainable_path(spec, m.trainable), *rest)  # lists (from model.json) as tuples
        if key in seen:
            same[name] = seen[key]
        else:
            seen[key] = name
    return same
