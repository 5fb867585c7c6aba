import numpy as np
import pytest
import torch

from cxr_transfer.engine import Precision
from cxr_transfer.models import build_model, get_spec
from cxr_transfer.modes import image_batches, setup_run
from cxr_transfer.params import ModeConfig
from cxr_transfer.train import Checkpoints, TrainingError, fit, make_optimizer

CPU = torch.device("cpu")
PREC = Precision.for_device(CPU)
ADAM = ModeConfig(pretrained=False, trainable="head", optimizer="adam", lr=1e-3, weight_decay=1e-5)
SGD_ALL = ModeConfig(pretrained=False, trainable="all", optimizer="sgd", lr=1e-2, momentum=0.9)


def tiny_data(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 200, (n, size, size), dtype=np.uint8)
    x[y == 1, 8:24, 8:24] += 50  # a learnable signal
    return {"train": (x, y), "val": (x[:8], y[:8])}


def run(arch, mode, data, folder, epochs=2, augment=False, on_epoch=lambda log: None, batch=8):
    torch.manual_seed(0)
    model = build_model(arch, False, "none", 2, seed=0)
    rs = setup_run(model, get_spec(arch), mode.trainable, data, batch, 0, augment, CPU, PREC)
    opt = make_optimizer(rs.loop.trained.parameters(), mode)
    state = fit(rs.loop, rs.train, rs.val, opt, epochs, 8, Checkpoints(folder, "fp"), PREC, CPU, on_epoch)
    return model, rs, opt, state


@pytest.mark.parametrize("augment", [False, True])
def test_frozen_means_frozen(tmp_path, augment):
    before = build_model("resnet18", False, "none", 2, seed=0).state_dict()
    model, rs, opt, _ = run("resnet18", ADAM, tiny_data(), tmp_path, augment=augment)
    assert rs.cached_features is not augment
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # every frozen weight and BatchNorm buffer bit-identical
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(model.fc.weight), id(model.fc.bias)}


def test_head_on_cached_features_equals_the_full_model(tmp_path):
    data = tiny_data()
    model, rs, _, _ = run("resnet18", ADAM, data, tmp_path, epochs=1)
    model.eval()
    xb = image_batches(*data["val"], 8, CPU)
    from cxr_transfer.batches import Normalizer

    spec = get_spec("resnet18")
    with torch.no_grad():
        full = model(Normalizer(spec.mean, spec.std)(next(iter(xb))[0]))
        head = model.fc(rs.val.x[:8])
    assert torch.allclose(full, head, atol=1e-5)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    data = tiny_data()
    ref, _, _, ref_state = run("resnet18", SGD_ALL, data, tmp_path / "a", epochs=4)

    def kill_after_2(log):
        if log.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("resnet18", SGD_ALL, data, tmp_path / "b", epochs=4, on_epoch=kill_after_2)
    seen = []
    resumed, _, _, state = run("resnet18", SGD_ALL, data, tmp_path / "b", epochs=4, on_epoch=seen.append)
    assert [h.epoch for h in state.history] == [1, 2, 3, 4]
    assert [log.epoch for log in seen] == [1, 2, 3, 4]  # replayed 1-2 for the logger, trained 3-4
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert [h.val_loss for h in state.history] == [h.val_loss for h in ref_state.history]


def test_a_different_fingerprint_starts_afresh(tmp_path):
    data = tiny_data()
    run("resnet18", ADAM, data, tmp_path, epochs=1)
    model = build_model("resnet18", False, "none", 2, seed=0)
    rs = setup_run(model, get_spec("resnet18"), "head", data, 8, 0, False, CPU, PREC)
    opt = make_optimizer(rs.loop.trained.parameters(), ADAM)
    assert Checkpoints(tmp_path, "other").load(rs.loop.trained, opt) is None


def test_early_stopping_and_best_epoch(tmp_path):
    mode = ModeConfig(pretrained=False, trainable="head", optimizer="sgd", lr=5.0, momentum=0.9)
    _, _, _, state = run("resnet18", mode, tiny_data(), tmp_path, epochs=30)
    losses = [h.val_loss for h in state.history]
    assert state.best_epoch == int(np.argmin(losses)) + 1
    if state.stopped_early:
        assert len(losses) - state.best_epoch == 8


def test_nan_loss_stops_naming_epoch_and_lr(tmp_path):
    mode = ModeConfig(pretrained=False, trainable="head", optimizer="sgd", lr=float("inf"), momentum=0.9)
    with pytest.raises(
        TrainingError, match=r"training loss is nan at epoch 1 with lr=inf; lower the mode's lr"
    ):
        run("resnet18", mode, tiny_data(), tmp_path, epochs=5)


def test_batch_larger_than_split_and_empty_split(tmp_path):
    _, _, _, state = run("resnet18", ADAM, tiny_data(n=6), tmp_path, epochs=1, batch=64)
    assert state.history[0].train_acc >= 0
    data = tiny_data()
    data["val"] = (data["val"][0][:0], data["val"][1][:0])
    with pytest.raises(ValueError, match="the val split is empty"):
        run("resnet18", ADAM, data, tmp_path / "x")


def test_unknown_optimizer_lists_choices():
    bad = ModeConfig(pretrained=False, trainable="all", optimizer="lbfgs", lr=0.1)
    with pytest.raises(ValueError, match=r"choose one of \['adam', 'adamw', 'sgd'\]"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], bad)


def test_classifier_block_trains_on_cached_features_and_matches_the_full_model(tmp_path):
    """VGG's fc6-fc8 block (ft_classifier): its input is computed once, logits are unchanged."""
    data = tiny_data(n=8, size=32)
    torch.manual_seed(0)
    model = build_model("vgg16", False, "none", 2, seed=0)
    spec = get_spec("vgg16")
    rs = setup_run(model, spec, "classifier", data, 4, 0, False, CPU, PREC)
    assert rs.cached_features and rs.train.x.shape == (8, 512 * 7 * 7)
    model.eval()
    from cxr_transfer.batches import Normalizer

    with torch.no_grad():
        full = model(Normalizer(spec.mean, spec.std)(torch.as_tensor(data["val"][0])[:, None]))
        tail = model.classifier(rs.val.x)
    assert torch.allclose(full, tail, atol=1e-4)
