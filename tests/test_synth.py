import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from cxr_transfer.data.synth import render_cxr, synthesize
from cxr_transfer.runtime.batches import Normalizer
from cxr_transfer.runtime.models import build_model, get_spec


def test_the_generator_draws_the_same_pixels_as_the_committed_demo():
    """The demo's committed results rest on these exact images: a change to the generator's
    arithmetic (a reordered sum, another exp) can move pixels, and with them every demo metric.
    The digest is that of the generator the committed dvc.lock's data/raw came from (both sites,
    the three classes, a shortcut)."""
    import hashlib

    h = hashlib.sha256()
    for site, size in (("a", 128), ("b", 192)):
        for cls in range(3):
            for i in range(2):
                rng = np.random.default_rng([0, cls, i] if site == "a" else [0, cls, i, 2])
                h.update(render_cxr(rng, size, cls == 1, "border" if i else "none", cls == 2, site).tobytes())
    assert h.hexdigest() == "9617086b624db1b52f38c9feb6ba2c14f80b6cf7b9ed01e9300c8ff3bcec95d4"


def test_deterministic_files(tmp_path):
    a = synthesize(tmp_path / "a", 3, 64, seed=5)
    synthesize(tmp_path / "b", 3, 64, seed=5)
    assert a == {"Normal": 3, "Covid": 3}
    for f in sorted((tmp_path / "a").rglob("*.png")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes()
    im = Image.open(tmp_path / "a" / "COVID" / "Covid-0001.png")
    assert im.mode == "L" and im.size == (64, 64)


@pytest.fixture(scope="module")
def generated():
    imgs, y = [], []
    for label in (0, 1):
        for i in range(200):
            imgs.append(render_cxr(np.random.default_rng([3, label, i]), 128, covid=bool(label)))
            y.append(label)
    return np.stack(imgs), np.array(y)


def _cv(x, y):
    return cross_val_score(LogisticRegression(C=1.0, max_iter=5000), x, y, cv=5).mean()


def _cnn(imgs, y) -> float:
    """What a CNN reaches: ImageNet EfficientNet-Lite0 features at 96x96, then a logistic regression
    (5-fold cross-validated accuracy)."""
    model = build_model("efficientnet_lite0", "weights", 2, seed=0).eval()
    model.classifier = torch.nn.Identity()
    x96 = np.stack([np.asarray(Image.fromarray(a).resize((96, 96), Image.BILINEAR)) for a in imgs])
    with torch.no_grad():
        spec = get_spec("efficientnet_lite0")
        feats = model(Normalizer(spec.mean, spec.std)(torch.as_tensor(x96)[:, None])).numpy()
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    return cross_val_score(LogisticRegression(C=0.1, max_iter=5000), feats, y, cv=5).mean()


def test_no_brightness_or_marker_shortcut_but_a_real_signal(generated):
    imgs, y = generated
    small = np.stack([np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR)) for a in imgs])
    lr16 = _cv(small.reshape(len(y), -1) / 255.0, y)
    brightness = _cv(imgs.reshape(len(y), -1).mean(1, keepdims=True) / 255.0, y)
    corners = np.concatenate([imgs[:, :12, :12], imgs[:, :12, -12:]], axis=2).reshape(len(y), -1) / 255.0
    marker = _cv(corners, y)
    cnn = _cnn(imgs, y)
    assert 0.55 < lr16 < 0.72, lr16  # above chance: the signal is real
    assert brightness < 0.62, brightness  # no exposure shortcut
    assert marker < 0.62, marker  # no L/R-marker shortcut
    assert cnn > lr16 + 0.1, (cnn, lr16)  # clearly below what a CNN reaches


def test_a_third_class_adds_files_and_changes_none_of_the_others(tmp_path):
    two = synthesize(tmp_path / "two", 3, 64, seed=5)
    three = synthesize(tmp_path / "three", 3, 64, seed=5, classes=("Normal", "Covid", "Pneumonia"))
    assert two == {"Normal": 3, "Covid": 3} and three == {**two, "Pneumonia": 3}
    for f in sorted((tmp_path / "two").rglob("*.png")):
        assert f.read_bytes() == (tmp_path / "three" / f.relative_to(tmp_path / "two")).read_bytes()
    assert len(list((tmp_path / "three" / "PNEUMONIA").glob("Pneumonia-*.png"))) == 3


def test_three_classes_separable_by_a_cnn_not_by_brightness():
    """Normal, Covid and Pneumonia (lobar consolidation): thumbnails see some of it, a CNN's
    features clearly more; mean brightness tells none of the three apart (chance is 1/3)."""
    imgs, y = [], []
    for label in (0, 1, 2):
        for i in range(100):
            rng = np.random.default_rng([3, label, i])
            imgs.append(render_cxr(rng, 128, covid=label == 1, pneumonia=label == 2))
            y.append(label)
    imgs, y = np.stack(imgs), np.array(y)
    small = np.stack([np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR)) for a in imgs])
    lr16 = _cv(small.reshape(len(y), -1) / 255.0, y)
    brightness = _cv(imgs.reshape(len(y), -1).mean(1, keepdims=True) / 255.0, y)
    cnn = _cnn(imgs, y)
    assert 0.45 < lr16 < 0.75, lr16  # 0.59 on 120 per class
    assert brightness < 0.45, brightness  # 0.36
    assert cnn > lr16 + 0.1, (cnn, lr16)  # 0.78
