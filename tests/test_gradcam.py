import numpy as np
import torch
from PIL import Image
from skimage import data

from cxr_transfer.gradcam import gradcam, pick_examples
from cxr_transfer.models import build_model, get_spec
from cxr_transfer.registry import IMAGENET_MEAN, IMAGENET_STD


def test_gradcam_on_a_real_model_has_the_input_size_and_is_not_constant():
    import timm

    from cxr_transfer.weights import load_imagenet

    spec = get_spec("efficientnet_lite0")
    model = timm.create_model(spec.builder, pretrained=False).eval()
    load_imagenet(model, spec, "imagenet")
    img = np.asarray(Image.fromarray(data.chelsea()).resize((128, 128)), np.float32) / 255
    x = (
        torch.tensor(img).permute(2, 0, 1)[None] - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    cam = gradcam(model, model.get_submodule(spec.cam_layer), x, target=285)
    assert cam.shape == (1, 128, 128)
    assert cam.min() == 0.0 and cam.max() > 0.99 and cam.std() > 0.05


def test_gradcam_works_on_frozen_models():
    model = build_model("resnet18", False, "none", 2, seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    cam = gradcam(model, model.layer4, torch.randn(2, 3, 64, 64), target=1)
    assert cam.shape == (2, 64, 64) and np.isfinite(cam).all()


def test_pick_examples_is_seeded_and_covers_each_cell():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    pred = np.array([1, 0, 1, 0, 1, 0, 1, 1])
    cells = pick_examples(y, pred, 2, seed=0)
    assert cells == pick_examples(y, pred, 2, seed=0)
    assert [c for c, _ in cells] == [(1, True), (1, False), (0, True), (0, False)]
    assert [len(ids) for _, ids in cells] == [2, 1, 2, 2]
    for (label, right), ids in cells:
        assert all(y[i] == label and (pred[i] == y[i]) == right for i in ids)
