import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from cxr_transfer.core.registry import ARCHS
from cxr_transfer.runtime import weights
from cxr_transfer.runtime.models import build_model, freeze_except, get_spec, trainable_path
from cxr_transfer.runtime.weights import WeightsError, load_imagenet


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_registry_entry_builds_with_its_named_layers(arch):
    spec = get_spec(arch)
    model = build_model(arch, None, num_classes=2, seed=0).eval()
    last = model.get_submodule(spec.last_layer)
    assert isinstance(last, torch.nn.Linear) and last.out_features == 2
    assert spec.last_layer.startswith(spec.classifier) or spec.last_layer == spec.classifier
    model.get_submodule(spec.cam_layer)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_each_architecture_normalises_as_its_pretrained_weights_were_trained(arch):
    """The mean and std are the weights' own configuration: torchvision's IMAGENET1K_V1
    transforms, timm's pretrained_cfg (EfficientNet-Lite0's TF-Lite weights: (x - 127) / 128,
    mean = std = 0.5, not ImageNet's)."""
    spec = get_spec(arch)
    if spec.source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.builder)
        mean, std = cfg.mean, cfg.std
    else:
        from torchvision.models import get_model_weights

        t = get_model_weights(spec.builder)["IMAGENET1K_V1"].transforms()
        mean, std = t.mean, t.std
    assert tuple(spec.mean) == pytest.approx(tuple(mean)) and tuple(spec.std) == pytest.approx(tuple(std))


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match=r"unknown arch 'alexnet'; choose one of \['densenet121'"):
        get_spec("alexnet")


def test_build_is_seeded_without_touching_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model("resnet18", None, 2, seed=7)
    b = build_model("resnet18", None, 2, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_lite0_package_weights_are_real_imagenet_weights():
    """scikit-image's chelsea photo must come out as a cat (ImageNet 281-285)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_imagenet(model, ARCHS["efficientnet_lite0"], "weights")
    img = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.BILINEAR), np.float32) / 255
    spec = ARCHS["efficientnet_lite0"]
    x = (torch.tensor(img).permute(2, 0, 1)[None] - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(
        spec.std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        top = int(model(x).argmax())
    assert 281 <= top <= 285


@pytest.fixture
def resnet18_folder(tmp_path):
    """A local weights folder laid out like torch's cache, as an air-gapped site would have it."""
    fname, _ = weights.torchvision_filename(ARCHS["resnet18"])
    ref = build_model("resnet18", None, 1000, seed=1)
    ref.fc = torch.nn.Linear(512, 1000)
    folder = tmp_path / "weights" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(ref.state_dict(), folder / fname)
    return tmp_path / "weights", ref, fname


def test_local_folder_weights_load(resnet18_folder):
    folder, ref, _ = resnet18_folder
    model = build_model("resnet18", str(folder), 2, seed=0)
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert model.fc.out_features == 2


def _offline(monkeypatch, torch_home):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))

    def offline(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(weights, "_download", offline)


def test_weights_problems_are_one_line_naming_the_file(resnet18_folder, tmp_path, monkeypatch):
    folder, _, fname = resnet18_folder
    _offline(monkeypatch, tmp_path / "torch")
    with pytest.raises(WeightsError, match=f"{fname} is neither in weights.dir"):
        build_model("resnet18", str(tmp_path / "empty"), 2, seed=0)
    (folder / "hub" / "checkpoints" / fname).write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        build_model("resnet18", str(folder), 2, seed=0)
    other = build_model("resnet50", None, 1000, seed=0)
    torch.save(other.state_dict(), folder / "hub" / "checkpoints" / fname)
    with pytest.raises(WeightsError, match="needs"):
        build_model("resnet18", str(folder), 2, seed=0)


def test_offline_imagenet_without_file_says_where_to_put_it(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path / "torch")
    with pytest.raises(WeightsError) as e:
        build_model("resnet18", str(tmp_path / "site-weights"), 2, seed=0)
    msg = str(e.value)
    assert f"place resnet18-f37072fd.pth in {tmp_path / 'site-weights'}" in msg
    assert "\n" not in msg


def test_the_torch_cache_is_used_when_weights_dir_lacks_the_file(resnet18_folder, tmp_path, monkeypatch):
    folder, ref, _ = resnet18_folder
    _offline(monkeypatch, folder)  # TORCH_HOME=<folder>: the file sits in its hub/checkpoints/
    model = build_model("resnet18", str(tmp_path / "empty"), 2, seed=0)
    assert torch.equal(model.conv1.weight, ref.conv1.weight)


@pytest.mark.parametrize(
    "arch, trainable, n_trainable",
    [("resnet18", "head", 512 * 2 + 2), ("vgg16", "classifier", None), ("resnet18", "all", None)],
)
def test_freeze_except_leaves_only_the_mode_trainable(arch, trainable, n_trainable):
    model = build_model(arch, None, 2, seed=0)
    spec = get_spec(arch)
    trained = freeze_except(model, trainable_path(spec, trainable))
    got = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert got == sum(p.numel() for p in trained.parameters())
    if n_trainable is not None:
        assert got == n_trainable
    if trainable == "classifier":
        assert got == sum(p.numel() for p in model.classifier.parameters()) and got < sum(
            p.numel() for p in model.parameters()
        )


@pytest.mark.parametrize(
    "arch, expect",
    [("efficientnet_lite0", {"ft_classifier": "fe"}), ("vgg16", {}), ("resnet18", {"ft_classifier": "fe"})],
)
def test_modes_that_train_the_same_thing_are_named(arch, expect):
    """Where the classifier block is the last layer, ft_classifier is fe under another name."""
    from cxr_transfer.core.params import SEED_MODES
    from cxr_transfer.runtime.models import equivalent_modes

    assert equivalent_modes(get_spec(arch), SEED_MODES) == expect


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18", "densenet121", "vgg16_bn"])
def test_channels_last_computes_the_same_logits_and_gradients_as_nchw(arch):
    """One network per family (EfficientNet, ResNet, DenseNet, VGG): the memory format changes
    the kernels' order of summation, not the function (float32 tolerance)."""
    torch.manual_seed(0)
    net = build_model(arch, None, 2, 0).eval()
    x = torch.randn(2, 3, 64, 64)
    a = net(x)
    a.sum().backward()
    grad_a = net.get_submodule(get_spec(arch).last_layer).weight.grad.clone()
    net.zero_grad()
    net = net.to(memory_format=torch.channels_last)
    b = net(x.contiguous(memory_format=torch.channels_last))
    b.sum().backward()
    grad_b = net.get_submodule(get_spec(arch).last_layer).weight.grad
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4) and a.abs().max() > 1e-3  # not all zero
    assert torch.allclose(grad_a, grad_b, atol=1e-4, rtol=1e-3)


def test_relu6_runs_out_of_place_with_the_in_place_models_every_bit():
    """build_model makes EfficientNet-Lite0's ReLU6 layers out of place (PyTorch's in-place hardtanh
    is a clamp and a copy back): three Adam steps in channels_last on the same batches leave every
    weight, every BatchNorm statistic and the logits equal to the in-place model's, bit for bit."""
    ours = build_model("efficientnet_lite0", None, num_classes=2, seed=0)
    relus = [m for m in ours.modules() if isinstance(m, torch.nn.ReLU6)]
    assert len(relus) == 33 and not any(m.inplace for m in relus)
    theirs = build_model("efficientnet_lite0", None, num_classes=2, seed=0)
    for m in theirs.modules():
        if isinstance(m, torch.nn.ReLU6):
            m.inplace = True
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 3, 64, 64, generator=g)
    y = torch.randint(0, 2, (3, 8), generator=g)
    states = []
    for model in (ours, theirs):
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for xb, yb in zip(x, y, strict=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(
                model(xb.contiguous(memory_format=torch.channels_last)), yb
            ).backward()
            opt.step()
        with torch.no_grad():
            logits = model.eval()(x[0])
        states.append((model.state_dict(), logits))
    (a, la), (b, lb) = states
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(la, lb)
    assert not torch.equal(
        a["conv_stem.weight"], build_model("efficientnet_lite0", None, 2, 0).state_dict()["conv_stem.weight"]
    )
