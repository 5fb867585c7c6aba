import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from cxr_transfer.audit.gradcam import gradcam, pick_examples
from cxr_transfer.core.errors import CxrError
from cxr_transfer.runtime.models import build_model, get_spec


def test_gradcam_on_a_real_model_has_the_input_size_and_is_not_constant():
    import timm

    from cxr_transfer.runtime.weights import load_imagenet

    spec = get_spec("efficientnet_lite0")
    model = timm.create_model(spec.builder, pretrained=False).eval()
    load_imagenet(model, spec, "weights")
    img = np.asarray(Image.fromarray(data.chelsea()).resize((128, 128)), np.float32) / 255
    x = (torch.tensor(img).permute(2, 0, 1)[None] - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.std
    ).view(1, 3, 1, 1)
    cam = gradcam(model, model.get_submodule(spec.cam_layer), x, target=285)
    assert cam.shape == (1, 128, 128) and np.isfinite(cam).all()
    other = gradcam(model, model.get_submodule(spec.cam_layer), x, target=407)  # "ambulance"
    assert np.abs(cam - other).mean() > 0.05  # the map depends on the class asked about


class QuadrantNet(torch.nn.Module):
    """A known answer: class 1's evidence is bright pixels, class 0's is dark ones."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
            self.conv.bias[:] = torch.tensor([1.0, 0.0])
        self.fc = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight[:] = torch.eye(2)
            self.fc.bias.zero_()

    def forward(self, x):
        a = torch.relu(self.conv(x))
        return self.fc(a.mean(dim=(2, 3)))


@pytest.mark.parametrize("quadrant", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gradcam_points_at_the_quadrant_that_holds_the_class_signal(quadrant):
    x = torch.zeros(1, 1, 16, 16)
    r, c = quadrant
    x[..., 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 1.0
    net = QuadrantNet()
    cam = gradcam(net, net.conv, x, target=1)[0]
    inside = cam[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
    outside = np.ones_like(cam, bool)
    outside[8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = False
    assert inside[1:-1, 1:-1].min() > 0.99 and cam[outside].max() < 0.5
    dark = gradcam(net, net.conv, x, target=0)[0]  # evidence for the other class lies elsewhere
    assert (
        dark[outside].mean() > 0.9
        and inside[1:-1, 1:-1].max() > dark[8 * r + 1 : 8 * r + 7, 8 * c + 1 : 8 * c + 7].max()
    )


def test_gradcam_works_on_frozen_models():
    model = build_model("resnet18", None, 2, seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    cam = gradcam(model, model.layer4, torch.randn(2, 3, 64, 64), target=1)
    assert cam.shape == (2, 64, 64) and np.isfinite(cam).all()


def _reference_gradcam(model, layer, x, target):
    """Grad-CAM by the definition, with the whole network's backward (down to the input, every
    weight's gradient too): the layer's output kept in the graph, its gradient retained."""
    acts = []

    def keep(module, inputs, out):
        out.retain_grad()
        acts.append(out)
        return out * 1.0  # DenseNet's in-place ReLU comes next: it must not modify the kept output

    h = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.clone().requires_grad_(True))
            logits[:, target].sum().backward()
    finally:
        h.remove()
    a, g = acts[0].detach(), acts[0].grad
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    return torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear")[:, 0].numpy()


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "efficientnet_lite0"])
def test_gradcam_equals_the_whole_network_backward(arch):
    """The head-only backward gives the maps of a backward through every layer, bit for bit
    (DenseNet: its ReLU after the CAM layer runs in place, which a module backward hook refused)."""
    torch.manual_seed(0)
    model = build_model(arch, None, 2, seed=0).eval()
    layer = model.get_submodule(get_spec(arch).cam_layer)
    x = torch.randn(3, 3, 64, 64)
    cams = [gradcam(model, layer, x, target=t, each=False) for t in (0, 1)]
    assert not any(p.grad is not None for p in model.parameters())  # no gradient left on the weights
    for t, cam in enumerate(cams):
        assert cam.shape == (3, 64, 64)
        np.testing.assert_array_equal(cam, _reference_gradcam(model, layer, x, t))
    assert max(c.max() for c in cams) > 0  # a map that is not all zero was compared


@pytest.mark.parametrize("grad", [True, False])
def test_gradcam_leaves_the_grad_mode_as_it_found_it(grad):
    net = QuadrantNet()
    with torch.set_grad_enabled(grad):
        gradcam(net, net.conv, torch.rand(1, 1, 8, 8), target=1)
        assert torch.is_grad_enabled() is grad
        with pytest.raises(RuntimeError, match="out of bounds"):  # a class the head does not have
            gradcam(net, net.conv, torch.rand(1, 1, 8, 8), target=5)
        assert torch.is_grad_enabled() is grad
        with pytest.raises(CxrError, match="never ran"):  # a layer outside the model
            gradcam(net, torch.nn.Conv2d(1, 2, 1), torch.rand(1, 1, 8, 8), target=1)
        assert torch.is_grad_enabled() is grad


def test_pick_examples_is_seeded_and_covers_each_cell():
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    pred = np.array([1, 0, 1, 0, 1, 0, 1, 1])
    cells = pick_examples(y, pred, 2, seed=0)
    assert cells == pick_examples(y, pred, 2, seed=0)
    assert [c for c, _ in cells] == [(1, True), (1, False), (0, True), (0, False)]
    assert [len(ids) for _, ids in cells] == [2, 1, 2, 2]
    for (label, right), ids in cells:
        assert all(y[i] == label and (pred[i] == y[i]) == right for i in ids)


def test_gradcam_takes_one_target_per_image():
    """Toward each image's own class: the same maps as one call per image and class."""
    x = torch.zeros(2, 1, 16, 16)
    x[0, :, :8, :8], x[1, :, 8:, 8:] = 1.0, 1.0
    net = QuadrantNet()
    both = gradcam(net, net.conv, x, target=[1, 0])
    assert np.allclose(both[0], gradcam(net, net.conv, x[:1], target=1)[0], atol=1e-6)
    assert np.allclose(both[1], gradcam(net, net.conv, x[1:], target=0)[0], atol=1e-6)
    assert not np.allclose(both[1], gradcam(net, net.conv, x[1:], target=1)[0], atol=1e-3)


def test_pick_examples_covers_every_class_of_k():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0, 2])
    cells = pick_examples(y, pred, 5, seed=0, labels=range(3))
    assert cells == [
        ((0, True), [0]),
        ((0, False), [1]),
        ((1, True), [2, 3]),
        ((1, False), []),
        ((2, True), [4, 6]),
        ((2, False), [5]),
    ]


def test_a_shared_scale_keeps_a_weak_map_faint_beside_a_strong_one():
    """Stretched on its own, a map with a tenth of the evidence looks as hot as the strong one; on
    the grid's shared scale it stays at a tenth."""
    from cxr_transfer.audit.gradcam import shared_scale

    x = torch.zeros(2, 1, 16, 16)
    x[0, :, :8, :8], x[1, :, :8, :8] = 1.0, 0.1
    net = QuadrantNet()
    each = gradcam(net, net.conv, x, target=1)
    assert each[0].max() == pytest.approx(1) and each[1].max() == pytest.approx(1)
    shared = shared_scale(gradcam(net, net.conv, x, target=1, each=False))
    assert shared[0].max() == pytest.approx(1) and shared[1].max() == pytest.approx(0.1, abs=0.02)
    assert shared_scale(np.zeros((2, 4, 4))).max() == 0


def test_lung_share_of_a_map_counts_the_mass_inside_the_central_box():
    from cxr_transfer.audit.gradcam import lung_box, mass_inside

    assert lung_box(10, 0.6) == slice(2, 8)
    maps = np.zeros((4, 10, 10))
    maps[0, 4:6, 4:6] = 1.0  # all in the box
    maps[1, 0, :] = 2.0  # all on the top border
    maps[2] = 1.0  # spread evenly: the box's area, 36 of 100 pixels
    maps[3, 0, 0], maps[3, 5, 5] = 3.0, 1.0  # a quarter inside
    share = mass_inside(np.concatenate([maps, np.zeros((1, 10, 10))]), 0.6)
    assert share[:4] == pytest.approx([1.0, 0.0, 0.36, 0.25]) and np.isnan(share[4])  # empty map: no share
