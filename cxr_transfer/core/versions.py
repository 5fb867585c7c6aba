"""The software a result was made with: Python's version and each library's, for cards and pages."""

from __future__ import annotations

import platform
from importlib import metadata

VERSIONED = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "numpy", "pillow")


def versions(packages=VERSIONED) -> dict[str, str]:
    """Python's version and each installed package's (None where it is not installed)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out
