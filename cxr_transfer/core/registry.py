"""The architecture registry: a plain dict of specs, importable without torch.

Each spec names (as dotted module paths) the layer that the modes replace or train, the
architecture's whole classifier block, and the block Grad-CAM looks at.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    source: str  # "torchvision" or "timm"
    builder: str  # model name in that library
    last_layer: str  # the Linear the modes replace with a 2-class one
    classifier: str  # the whole classifier block (VGG fc6-fc8); a tail module of the network
    cam_layer: str  # last convolutional block, for Grad-CAM
    # the normalisation the pretrained weights were trained with (their library's own
    # configuration; tests/test_models.py checks every entry against it)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _tv(name: str, last: str, classifier: str, cam: str) -> ArchSpec:
    return ArchSpec(name, "torchvision", name, last, classifier, cam)


ARCHS: dict[str, ArchSpec] = {
    "vgg19_bn": _tv("vgg19_bn", "classifier.6", "classifier", "features"),
    "vgg16": _tv("vgg16", "classifier.6", "classifier", "features"),
    "vgg16_bn": _tv("vgg16_bn", "classifier.6", "classifier", "features"),
    "resnet18": _tv("resnet18", "fc", "fc", "layer4"),
    "resnet50": _tv("resnet50", "fc", "fc", "layer4"),
    "densenet121": _tv("densenet121", "classifier", "classifier", "features"),
    "efficientnet_b0": _tv("efficientnet_b0", "classifier.1", "classifier", "features"),
    # timm's EfficientNet head is conv_head + bn2 + pool + classifier; only `classifier` is a
    # tail module, so the classifier block and the last layer coincide here. Its weights are ports
    # of the TF-Lite model, trained on (x - 127) / 128: mean = std = 0.5 (timm's pretrained_cfg).
    "efficientnet_lite0": ArchSpec(
        "efficientnet_lite0",
        "timm",
        "tf_efficientnet_lite0",
        "classifier",
        "classifier",
        "bn2",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
}
