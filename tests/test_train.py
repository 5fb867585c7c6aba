import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_transfer.core.params import FT_GRADUAL, FT_ROBUST, ModeConfig, TrainConfig
from cxr_transfer.runtime.batches import ArrayBatches, Normalizer
from cxr_transfer.runtime.engine import Precision
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.train import loop as train_module
from cxr_transfer.train.checkpoints import Checkpoints, FitState, code_digest, fingerprint
from cxr_transfer.train.loop import (
    Loop,
    Objective,
    Phase,
    Steps,
    Stopping,
    TrainingError,
    _run_epoch,
    balanced_class_weights,
    fit,
)
from cxr_transfer.train.optim import make_optimizer, make_scheduler
from cxr_transfer.train.phases import RunContext, image_batches, param_groups, setup_run

CPU = torch.device("cpu")
PREC = Precision.for_device(CPU)
ADAM = ModeConfig(pretrained=False, trainable="head", optimizer="adam", lr=1e-3, weight_decay=1e-5)
SGD_ALL = ModeConfig(pretrained=False, trainable="all", optimizer="sgd", lr=1e-2, momentum=0.9)
# SGD_ALL trained on images whose acquisition changes per image (every key on, as ft_robust)
ROBUST = dataclasses.replace(SGD_ALL, acquisition=FT_ROBUST.acquisition)


def mode_with(trainable: str) -> ModeConfig:
    """ADAM's recipe training `trainable` (head, classifier or all)."""
    return dataclasses.replace(ADAM, trainable=trainable)


def tiny_data(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 200, (n, size, size), dtype=np.uint8)
    x[y == 1, 8:24, 8:24] += 50  # a learnable signal
    return {"train": (x, y), "val": (x[:8], y[:8])}


def run(
    arch,
    mode,
    data,
    folder,
    epochs=2,
    augment=False,
    on_epoch=lambda log: None,
    batch=8,
    scaler=None,
    patience=8,
    holder=None,
    budget=None,
):
    torch.manual_seed(0)
    model = build_model(arch, None, 2, seed=0)
    if holder is not None:  # lets on_epoch look at the model while it trains
        holder["model"] = model
    spec = get_spec(arch)
    train = TrainConfig(epochs=epochs, batch_size=batch, augment=augment)
    rs = setup_run(model, spec, data, mode, train, RunContext(CPU, PREC, budget=budget))
    opt = make_optimizer(rs.groups, mode)
    sched = make_scheduler(opt, mode, epochs, len(rs.train))
    ckpt = Checkpoints(folder, "fp")
    steps = Steps(opt, PREC, CPU, Objective(None, mode.label_smoothing), sched, scaler)
    state = fit(rs.phases, steps, Stopping(epochs, patience), ckpt, on_epoch)
    return model, rs, opt, state


@pytest.mark.parametrize("augment", [False, True])
def test_frozen_means_frozen(tmp_path, augment):
    before = build_model("resnet18", None, 2, seed=0).state_dict()
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
    spec = get_spec("resnet18")
    with torch.no_grad():
        full = model(Normalizer(spec.mean, spec.std)(next(iter(xb))[0]))
        head = model.fc(rs.val.x[:8])
    assert torch.allclose(full, head, atol=1e-5)


def _kill_after(epoch):
    def on_epoch(log):
        if log.epoch == epoch:
            raise KeyboardInterrupt

    return on_epoch


def _scaler():
    """A loss scaler whose scale doubles every step: a resumed run must continue its state."""
    return torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)


GRADUAL = dataclasses.replace(FT_GRADUAL, lr=1e-2)  # the shipped ft_gradual recipe, a rate tiny data moves


@pytest.mark.parametrize(
    "mode, augment, cached",
    [
        (SGD_ALL, False, False),
        (ADAM, False, True),
        pytest.param(SGD_ALL, True, False, marks=pytest.mark.slow),
        pytest.param(GRADUAL, False, True, marks=pytest.mark.slow),
    ],
    ids=["full-model", "cached-features", "augmented", "gradual-cosine"],
)
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, mode, augment, cached, capsys):
    data = tiny_data()
    ref_scaler = _scaler()
    ref, rs, _, ref_state = run(
        "resnet18", mode, data, tmp_path / "a", epochs=4, augment=augment, scaler=ref_scaler
    )
    assert rs.cached_features is cached
    with pytest.raises(KeyboardInterrupt):
        run("resnet18", mode, data, tmp_path / "b", 4, augment, _kill_after(2), scaler=_scaler())
    seen, scaler = [], _scaler()
    capsys.readouterr()
    resumed, _, _, state = run("resnet18", mode, data, tmp_path / "b", 4, augment, seen.append, scaler=scaler)
    said = capsys.readouterr().out
    assert "resuming a killed run from epoch 3 of 4 (2 done; best so far epoch" in said  # one line says so
    assert [h.epoch for h in state.history] == [1, 2, 3, 4]
    assert [log.epoch for log in seen] == [1, 2, 3, 4]  # replayed 1-2 for the logger, trained 3-4
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert [h.val_loss for h in state.history] == [h.val_loss for h in ref_state.history]
    assert [h.lr for h in state.history] == [h.lr for h in ref_state.history]  # the schedule resumed
    steps = 4 * len(rs.train)
    assert scaler.get_scale() == ref_scaler.get_scale() == 2.0 ** (4 + steps)  # the scaler's state resumed


@pytest.mark.slow  # a reference run, a probe run and a killed + resumed run per rename
def test_a_kill_at_any_rename_of_a_checkpoint_save_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    """The saves of epoch 3 are cut before each of their file renames in turn (as a kill would
    cut them); every resumed run must end with the uninterrupted run's weights and history: the
    checkpoint is one commit, never weights of one epoch with the state of another. The mode
    trains on augmented images (train.augment and every acquisition change): the resumed epochs
    draw what the uninterrupted ones drew."""
    import os

    data = tiny_data()
    ref, _, _, ref_state = run("resnet18", ROBUST, data, tmp_path / "ref", epochs=4, augment=True)
    real_replace, renames = os.replace, []
    epoch = {"n": 0}

    def recording(src, dst, **kw):
        if epoch["n"] == 3:
            renames.append(os.path.basename(dst))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", recording)
    real_save = Checkpoints.save

    def save(self, module, optimizer, state, *a, **k):  # which epoch's save is running
        epoch["n"] = len(state.history)
        return real_save(self, module, optimizer, state, *a, **k)

    monkeypatch.setattr(Checkpoints, "save", save)
    run("resnet18", ROBUST, data, tmp_path / "probe", epochs=4, augment=True)
    assert renames and renames[-1] == "last.pt", renames  # the last rename commits the epoch
    for cut in range(len(renames)):
        calls = {"n": 0}

        def cutting(src, dst, cut=cut, calls=calls, **kw):
            if epoch["n"] == 3:
                if calls["n"] == cut:
                    raise KeyboardInterrupt  # the kill, before this rename
                calls["n"] += 1
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "replace", cutting)
        folder = tmp_path / f"cut{cut}"
        with pytest.raises(KeyboardInterrupt):
            run("resnet18", ROBUST, data, folder, epochs=4, augment=True)
        monkeypatch.setattr(os, "replace", real_replace)
        resumed, _, _, state = run("resnet18", ROBUST, data, folder, epochs=4, augment=True)
        assert [h.epoch for h in state.history] == [1, 2, 3, 4]
        assert [h.val_loss for h in state.history] == [h.val_loss for h in ref_state.history], cut
        for (k, v), (k2, v2) in zip(ref.state_dict().items(), resumed.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(v, v2), (cut, k)
        assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]  # no temporary left


def test_cuda_random_state_is_saved_and_restored(tmp_path, monkeypatch):
    """On a GPU, dropout and augmentation draw from the CUDA generators: a resume restores them."""
    saved = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = Checkpoints(tmp_path, "fp")
    ck.save(model, opt, FitState(best_epoch=1), is_best=True)
    assert ck.load(model, opt) is not None
    assert len(restored) == 1 and torch.equal(restored[0][0], saved[0])


def test_the_fingerprint_covers_the_code(tmp_path, monkeypatch):
    """Weights left by a killed run are never continued by changed code."""
    pkg = tmp_path / "cxr_transfer_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import cxr_transfer_probe  # noqa: F401

    prefixes = ("cxr_transfer_probe",)
    before = code_digest(prefixes)
    (pkg / "__init__.py").write_text("X = 2\n")
    after = code_digest(prefixes)
    assert before != after and code_digest(prefixes) == after
    config = {"arch": "resnet18"}
    assert fingerprint(config, before) != fingerprint(config, after)
    assert fingerprint(config, before) == fingerprint(dict(config), before)
    assert len(code_digest()) == 40 and code_digest() != code_digest(prefixes)


def test_the_fingerprint_covers_the_stage_run_as_main(tmp_path):
    """`python -m stages.train` runs the stage as __main__: an edit of the stage after a kill must
    change the fingerprint as an edit of any imported module does."""
    import subprocess

    pkg = tmp_path / "cxr_transfer_stage"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    code = (
        "from cxr_transfer.train.checkpoints import code_digest\n"
        "print(code_digest(('cxr_transfer_stage',)))\n"
    )
    (pkg / "main.py").write_text(code)
    env = {"PYTHONPATH": f"{tmp_path}:{Path(train_module.__file__).parents[1]}", "PATH": ""}

    def digest() -> str:
        r = subprocess.run(
            [sys.executable, "-m", "cxr_transfer_stage.main"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    before = digest()
    (pkg / "main.py").write_text(code + "# an edit after the kill\n")
    assert digest() != before


def test_a_different_fingerprint_starts_afresh(tmp_path):
    data = tiny_data()
    run("resnet18", ADAM, data, tmp_path, epochs=1)
    model = build_model("resnet18", None, 2, seed=0)
    rs = setup_run(
        model, get_spec("resnet18"), data, mode_with("head"), TrainConfig(batch_size=8), RunContext(CPU, PREC)
    )
    opt = make_optimizer(rs.loop.trained.parameters(), ADAM)
    assert Checkpoints(tmp_path, "other").load(rs.loop.trained, opt) is None


def test_early_stopping_keeps_the_best_epoch_in_best_pt(tmp_path):
    """Validation labels are the training labels flipped: the better the fit, the worse the
    validation loss, so epoch 1 is the best and training stops `patience` epochs later."""
    data = tiny_data()
    x, y = data["train"]
    data["val"] = (x, 1 - y)
    snapshots = {}

    def keep(log):
        snapshots[log.epoch] = {k: v.clone() for k, v in rs_holder["rs"].loop.trained.state_dict().items()}

    rs_holder = {}
    torch.manual_seed(0)
    model = build_model("resnet18", None, 2, seed=0)
    rs_holder["rs"] = rs = setup_run(
        model, get_spec("resnet18"), data, mode_with("head"), TrainConfig(batch_size=8), RunContext(CPU, PREC)
    )
    opt = make_optimizer(rs.loop.trained.parameters(), ADAM)
    ckpt = Checkpoints(tmp_path, "fp")
    state = fit(rs.phases, Steps(opt, PREC, CPU), Stopping(30, 3), ckpt, keep)
    losses = [h.val_loss for h in state.history]
    assert state.best_epoch == 1 and state.stopped_early and len(losses) == 1 + 3
    assert losses == sorted(losses)  # rising from epoch 1
    best = ckpt.best()
    assert all(torch.equal(best[k], snapshots[1][k]) for k in best)
    assert not torch.equal(best["weight"], snapshots[4]["weight"])  # best.pt is not the last epoch


def test_a_validation_loss_that_is_never_finite_stops_naming_the_setting(tmp_path):
    data = tiny_data()
    torch.manual_seed(0)
    model = build_model("resnet18", None, 2, seed=0)
    rs = setup_run(
        model, get_spec("resnet18"), data, mode_with("head"), TrainConfig(batch_size=8), RunContext(CPU, PREC)
    )
    head = rs.loop.trained

    def forward(xb):  # finite while training, NaN on validation
        out = head(xb)
        return out if head.training else out * float("nan")

    loop = Loop(head, forward, head.train, head.eval)
    opt = make_optimizer(head.parameters(), ADAM)
    with pytest.raises(
        TrainingError, match=r"not finite in any of 3 epochs \(lr=0.001\).*lower the mode's lr"
    ):
        fit(
            [Phase(loop, rs.train, rs.val)],
            Steps(opt, PREC, CPU),
            Stopping(3, 8),
            Checkpoints(tmp_path, "fp"),
        )


def test_an_epoch_reads_its_totals_from_the_device_once(tmp_path, monkeypatch):
    """No host-device sync per batch: loss and hits are summed on the device."""
    data = tiny_data(n=40)
    torch.manual_seed(0)
    model = build_model("resnet18", None, 2, seed=0)
    rs = setup_run(
        model, get_spec("resnet18"), data, mode_with("head"), TrainConfig(batch_size=4), RunContext(CPU, PREC)
    )
    opt = make_optimizer(rs.loop.trained.parameters(), ADAM)
    reads = []
    for name in ("item", "__int__", "__float__", "__bool__", "tolist"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name):
            if sys._getframe(1).f_code.co_filename == train_module.__file__:  # the loop's own reads
                reads.append(_name)
            return _orig(self, *a)

        monkeypatch.setattr(torch.Tensor, name, counted)
    loss, acc, n, _ = _run_epoch(rs.loop, rs.train, Steps(opt, PREC, CPU), "t", True)
    assert len(rs.train) == 10 and n == 40
    # one read each of the image count, the loss and the hits, not one per batch
    assert sorted(reads) == ["__float__", "__int__", "__int__"]
    assert acc * 40 == round(acc * 40)


def test_nan_loss_stops_naming_epoch_and_lr(tmp_path):
    mode = ModeConfig(pretrained=False, trainable="head", optimizer="sgd", lr=float("inf"), momentum=0.9)
    with pytest.raises(
        TrainingError, match=r"training loss is nan at epoch 1 with lr=inf; lower the mode's lr"
    ):
        run("resnet18", mode, tiny_data(), tmp_path, epochs=5)


def test_batch_larger_than_split_and_empty_split(tmp_path):
    data = tiny_data(n=6)
    model0 = build_model("resnet18", None, 2, seed=0).eval()
    spec = get_spec("resnet18")
    with torch.no_grad():  # the untrained model's loss and accuracy: the one batch is scored before its step
        logits = model0(Normalizer(spec.mean, spec.std)(torch.as_tensor(data["train"][0])[:, None]))
    y = torch.as_tensor(data["train"][1])
    _, _, _, state = run("resnet18", ADAM, data, tmp_path, epochs=1, batch=64)
    h = state.history[0]
    assert h.train_loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), abs=1e-5)
    assert h.train_acc == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    data = tiny_data()
    data["val"] = (data["val"][0][:0], data["val"][1][:0])
    with pytest.raises(ValueError, match="the val split is empty"):
        run("resnet18", ADAM, data, tmp_path / "x")


def test_unknown_optimizer_lists_choices():
    bad = ModeConfig(pretrained=False, trainable="all", optimizer="lbfgs", lr=0.1)
    with pytest.raises(ValueError, match=r"choose one of \['adam', 'adamw', 'sgd'\]"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], bad)


@pytest.mark.parametrize(
    "mode",
    [
        SGD_ALL,
        dataclasses.replace(SGD_ALL, weight_decay=1e-3),
        dataclasses.replace(ADAM, trainable="all"),
        dataclasses.replace(ADAM, trainable="all", optimizer="adamw", weight_decay=0.01, betas=(0.95, 0.99)),
    ],
    ids=["sgd", "sgd-decay", "adam", "adamw"],
)
def test_cpu_optimizer_steps_multi_tensor_with_the_per_tensor_arithmetic(mode):
    """On the CPU make_optimizer takes the multi-tensor (foreach) step: the weights after a few
    steps equal the per-tensor step's bit for bit, over groups at their own rates and a group
    whose parameters have no gradient yet (frozen)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(6, 2))
    start = [p.detach().clone() for p in net.parameters()]
    grads = [[torch.randn_like(p) for p in start] for _ in range(4)]

    def after(foreach: bool) -> list[torch.Tensor]:
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        groups = [{"params": ps[:2], "lr_mult": 0.1}, {"params": ps[2:4]}, {"params": ps[4:]}]
        opt = make_optimizer(groups, mode)
        assert opt.defaults["foreach"] is True
        if not foreach:
            for g in opt.param_groups:
                g["foreach"] = False
        for i, step in enumerate(grads):
            for p, g in zip(ps, step, strict=True):
                p.grad = None if (i < 2 and p is ps[2]) else g.clone()  # frozen for two steps
            opt.step()
        return ps

    multi, single = after(True), after(False)
    assert all(torch.equal(a, b) for a, b in zip(multi, single, strict=True))
    assert not torch.equal(multi[0], start[0])  # the steps moved the weights


def test_classifier_block_trains_on_cached_features_and_matches_the_full_model(tmp_path):
    """VGG's fc6-fc8 block (ft_classifier): its input is computed once, logits are unchanged."""
    data = tiny_data(n=8, size=32)
    torch.manual_seed(0)
    model = build_model("vgg16", None, 2, seed=0)
    spec = get_spec("vgg16")
    rs = setup_run(
        model, spec, data, mode_with("classifier"), TrainConfig(batch_size=4), RunContext(CPU, PREC)
    )
    assert rs.cached_features and rs.train.x.shape == (8, 512 * 7 * 7)
    model.eval()
    with torch.no_grad():
        full = model(Normalizer(spec.mean, spec.std)(torch.as_tensor(data["val"][0])[:, None]))
        tail = model.classifier(rs.val.x)
    assert torch.allclose(full, tail, atol=1e-4)


def _lrs(mode, epochs, steps_per_epoch, groups=1):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_mult": m} for m in (1.0, 0.1)[:groups]]
    opt = make_optimizer(params, mode)
    sched = make_scheduler(opt, mode, epochs, steps_per_epoch)
    out = []
    for _ in range(epochs * steps_per_epoch):
        out.append([round(g["lr"], 6) for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(
    "recipe, expect",
    [
        ({}, [1.0] * 6),
        ({"warmup_epochs": 1}, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
        # cosine over the 4 steps after warmup: (1 + cos(pi t / 4)) / 2 for t = 0..3
        ({"schedule": "cosine", "warmup_epochs": 1}, [0.5, 1.0, 1.0, 0.853553, 0.5, 0.146447]),
        ({"schedule": "cosine"}, [1.0, 0.933013, 0.75, 0.5, 0.25, 0.066987]),
        ({"schedule": "step", "step_epochs": 1, "gamma": 0.5}, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]),
        ({"schedule": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 1}, [0.5, 1, 1, 1, 1, 1]),
    ],
    ids=["constant", "warmup", "cosine-warmup", "cosine", "step", "step-after-warmup"],
)
def test_each_schedule_gives_the_hand_computed_rate_at_every_step(recipe, expect):
    mode = ModeConfig(pretrained=True, trainable="all", optimizer="sgd", lr=1.0, **recipe)
    assert [g[0] for g in _lrs(mode, 3, 2)] == pytest.approx(expect, abs=1e-6)


def test_the_pretrained_layers_learn_at_the_multiplied_rate_through_the_schedule():
    mode = ModeConfig(pretrained=True, trainable="all", optimizer="adam", lr=0.01, schedule="cosine")
    lrs = _lrs(mode, 2, 2, groups=2)
    assert lrs == [[0.01, 0.001], [0.008536, 0.000854], [0.005, 0.0005], [0.001464, 0.000146]]
    model = build_model("resnet18", None, 2, seed=0)
    head, rest = param_groups(model, get_spec("resnet18"), "all", 0.1)
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert len(head["params"]) + len(rest["params"]) == len(list(model.parameters()))
    assert (head["lr_mult"], rest["lr_mult"]) == (1.0, 0.1)
    assert len(param_groups(model, get_spec("resnet18"), "head", 0.1)) == 1  # fe: the head alone


@pytest.mark.parametrize("augment", [False, True])
def test_freeze_epochs_keep_the_backbone_bit_identical_then_train_it(tmp_path, augment):
    before = build_model("resnet18", None, 2, seed=0).state_dict()
    snaps = {}
    holder = {}

    def snap(log):
        snaps[log.epoch] = {k: v.clone() for k, v in holder["model"].state_dict().items()}

    _, rs, _, state = run("resnet18", GRADUAL, tiny_data(), tmp_path, 3, augment, snap, holder=holder)
    assert len(rs.phases) == 2 and rs.cached_features is not augment
    backbone = [k for k in before if not k.startswith("fc.")]
    assert all(torch.equal(before[k], snaps[1][k]) for k in backbone)  # epoch 1: frozen, buffers too
    assert not torch.equal(before["fc.weight"], snaps[1]["fc.weight"])  # ... while the head learned
    moved = [k for k in backbone if not torch.equal(snaps[1][k], snaps[3][k])]
    assert "conv1.weight" in moved and "layer4.1.bn2.running_mean" in moved  # then everything trains
    assert all(p.requires_grad for p in holder["model"].parameters())
    # the rate at each epoch's first step: warmup starts at lr/steps; cosine is half way at epoch 3
    assert len(rs.train) == 3 and [h.lr for h in state.history] == pytest.approx([0.01 / 3, 0.01, 0.005])


def test_balanced_class_weights_are_n_over_k_times_n_k():
    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    w = balanced_class_weights(y, 3)
    assert w.tolist() == pytest.approx([12 / (3 * 6), 12 / (3 * 2), 12 / (3 * 4)])
    assert balanced_class_weights(np.array([0, 0, 1]), 3).tolist() == pytest.approx([0.5, 1.0, 0.0])
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    yt = torch.tensor([0, 1, 2])
    loss, denom = Objective(w, 0.1).terms(logits, yt)
    ref = torch.nn.functional.cross_entropy(logits, yt, weight=w, label_smoothing=0.1)
    assert float(loss / denom) == pytest.approx(float(ref))  # torch's weighted mean


def test_the_balanced_sampler_draws_each_class_equally_often():
    y = np.array([0] * 90 + [1] * 10)
    b = ArrayBatches(np.zeros((100, 2)), y, 25, shuffle=True, seed=3, balanced=True)
    drawn = []
    for epoch in range(1, 21):
        b.set_epoch(epoch)
        drawn += [int(v) for _, yb in b for v in yb]
    assert len(drawn) == 20 * 100
    assert 0.45 < np.mean(drawn) < 0.55  # 10% of the images, half of the draws
    plain = ArrayBatches(np.zeros((100, 2)), y, 25, shuffle=True, seed=3)
    plain.set_epoch(1)
    assert sum(int(v) for _, yb in plain for v in yb) == 10  # without it: a permutation


# validation figures per epoch, scripted: the loss is lowest at epoch 2, the AUROC highest at epoch 4
SCRIPT = {
    1: (0.70, 0.60),
    2: (0.50, 0.70),
    3: (0.60, 0.80),
    4: (0.65, 0.95),
    5: (0.66, 0.90),
    6: (0.67, 0.85),
}


@pytest.mark.parametrize("select, best, stopped_after", [("val_loss", 2, 4), ("val_auroc", 4, 6)])
def test_select_picks_the_epoch_and_stops_on_the_chosen_figure(
    tmp_path, monkeypatch, select, best, stopped_after
):
    """Early stopping (patience 2) and best.pt follow validation loss or validation AUROC, as asked."""
    data = tiny_data()
    torch.manual_seed(0)
    model = build_model("resnet18", None, 2, seed=0)
    rs = setup_run(
        model, get_spec("resnet18"), data, mode_with("head"), TrainConfig(batch_size=8), RunContext(CPU, PREC)
    )
    real, epoch = train_module._run_epoch, {"n": 0}

    def scripted(loop, batches, steps, desc, training, *a, **k):
        tl, ta, n, auc = real(loop, batches, steps, desc, training, *a, **k)
        if training:
            epoch["n"] += 1
            return tl, ta, n, auc
        vl, vauc = SCRIPT[epoch["n"]]
        return vl, ta, n, vauc

    snapshots = {}
    monkeypatch.setattr(train_module, "_run_epoch", scripted)
    opt = make_optimizer(rs.loop.trained.parameters(), ADAM)
    ckpt = Checkpoints(tmp_path, "fp")
    keep = lambda log: snapshots.setdefault(log.epoch, rs.loop.trained.weight.detach().clone())  # noqa: E731
    state = fit(rs.phases, Steps(opt, PREC, CPU), Stopping(6, 2, select), ckpt, keep)
    assert state.best_epoch == best and len(state.history) == stopped_after
    assert state.best_val_loss == SCRIPT[best][0]
    assert torch.equal(ckpt.best()["weight"], snapshots[best])
    assert [h.val_auroc for h in state.history] == [SCRIPT[e][1] for e in range(1, stopped_after + 1)]


def test_val_auroc_is_scikit_learns_and_nan_without_both_classes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.integers(0, 3, 50))
    probs = torch.as_tensor(rng.dirichlet([1, 1, 1], 50), dtype=torch.float32)
    want = roc_auc_score(y.numpy(), probs.numpy(), multi_class="ovr", average="macro")
    assert train_module.val_auroc(y, probs) == pytest.approx(want, abs=1e-6)
    two = torch.stack([1 - probs[:, 0], probs[:, 0]], 1)
    yb = (y == 0).long()
    assert train_module.val_auroc(yb, two) == pytest.approx(
        roc_auc_score(yb.numpy(), probs[:, 0].numpy()), abs=1e-6
    )
    assert np.isnan(train_module.val_auroc(torch.zeros(5, dtype=torch.long), two[:5]))


def test_the_curves_file_holds_every_epoch_logged_so_far(tmp_path):
    """Rewritten after each epoch (what `dvc plots show` reads while later runs train); a resumed
    run replays its epochs first, so each epoch is in the file once."""
    from cxr_transfer.train.checkpoints import EpochLog
    from cxr_transfer.train.job import CURVE_COLUMNS, Curves

    path = tmp_path / "live" / "a-fe-s0.csv"
    curves = Curves(path)
    for e in (1, 2, 3):
        curves(EpochLog(e, 1.0 / e, 0.5 + e / 10, 1.1 / e, 0.4 + e / 10, 1e-3, 1.0, 10.0))
        df = pd.read_csv(path)
        assert list(df.columns) == list(CURVE_COLUMNS) and df["epoch"].tolist() == list(range(1, e + 1))
    assert df["val_loss"].tolist() == pytest.approx([1.1, 0.55, 1.1 / 3])
    Curves(None)(EpochLog(1, 1, 1, 1, 1, 1, 1, 1))  # no path (a fold other than 0): nothing written


def test_one_cycle_is_fastai_s_fine_tune_schedule_step_by_step():
    from cxr_transfer.train.optim import one_cycle

    # frozen epoch of 100 steps: cosine from lr/25 up to lr over 99 steps, then down toward lr/1e5;
    # the momentum the other way, 0.95 -> 0.85 -> 0.95
    assert one_cycle(0, 100, 3, 1) == pytest.approx((1 / 25, 0.95))
    assert one_cycle(99, 100, 3, 1) == pytest.approx((1.0, 0.85))
    f, m = one_cycle(50, 100, 3, 1)  # half way up: the cosine's midpoint
    assert f == pytest.approx(1 / 25 + (1 - 1 / 25) * (1 + np.cos(np.pi * (1 - 50 / 99))) / 2)
    # then base_lr / 2 over 200 steps: from lr/2/5, the peak lr/2 at 30 %, down to lr/2/1e5
    assert one_cycle(100, 100, 3, 1) == pytest.approx((0.5 / 5, 0.95))
    assert one_cycle(160, 100, 3, 1) == pytest.approx((0.5, 0.85))
    assert one_cycle(299, 100, 3, 1)[0] == pytest.approx(0.5 * 1e-5, rel=0.01, abs=2e-4)
    assert one_cycle(25, 100, 1, 0) == pytest.approx((1.0, 0.85))  # no frozen epochs: fit_one_cycle's 25 %


def test_ft_one_cycle_sets_adam_s_momentum_and_the_three_groups_rates_each_step():
    from cxr_transfer.core.params import FT_ONE_CYCLE
    from cxr_transfer.train.optim import one_cycle

    model = build_model("resnet18", None, 2, seed=0)
    groups = param_groups(model, get_spec("resnet18"), "all", 1.0, lr_slice=100.0)
    assert [g["lr_mult"] for g in groups] == pytest.approx([1.0, 0.01, 0.1])  # slice(lr/100, lr), 3 groups
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert (
        groups[1]["params"][0] is model.conv1.weight and groups[2]["params"][-1] is model.layer4[1].bn2.bias
    )
    opt = make_optimizer(groups, FT_ONE_CYCLE)
    sched = make_scheduler(opt, FT_ONE_CYCLE, 3, 10)
    for step in range(30):
        f, mom = one_cycle(step, 10, 3, 1)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.002 * f, 0.00002 * f, 0.0002 * f])
        assert all(g["betas"] == pytest.approx((mom, 0.99)) and g["eps"] == 1e-5 for g in opt.param_groups)
        opt.step()
        sched.step()


def test_ft_one_cycle_trains_batchnorm_while_the_rest_of_the_body_is_frozen(tmp_path):
    from cxr_transfer.core.params import FT_ONE_CYCLE

    before = build_model("resnet18", None, 2, seed=0).state_dict()
    snaps, holder = {}, {}

    def snap(log):
        snaps[log.epoch] = {k: v.clone() for k, v in holder["model"].state_dict().items()}

    _, rs, _, _ = run("resnet18", FT_ONE_CYCLE, tiny_data(), tmp_path, 2, on_epoch=snap, holder=holder)
    assert len(rs.phases) == 2 and not rs.cached_features  # BatchNorm moves: no cached features
    convs = [k for k in before if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    bns = [k for k in before if ".bn" in k and k.endswith(("weight", "bias", "running_mean"))]
    assert all(torch.equal(before[k], snaps[1][k]) for k in convs)  # epoch 1: convolutions frozen
    assert all(not torch.equal(before[k], snaps[1][k]) for k in bns)  # ... BatchNorm trained, stats too
    assert not torch.equal(before["fc.weight"], snaps[1]["fc.weight"])
    assert not torch.equal(snaps[1]["conv1.weight"], snaps[2]["conv1.weight"])  # then everything


def test_a_lone_last_image_at_32_px_trains_instead_of_failing_in_batchnorm(tmp_path):
    """17 training images in batches of 8 at 32 px: EfficientNet-Lite0's last feature map is 1x1,
    so a last batch of one image gave BatchNorm one value per channel (PyTorch raises "Expected
    more than 1 value per channel when training"); the lone image joins the batch before: two
    steps an epoch, every image counted."""
    data = tiny_data(n=17)
    model, rs, opt, state = run("efficientnet_lite0", SGD_ALL, data, tmp_path, epochs=1)
    assert len(rs.train) == 2
    assert [len(yb) for _, yb in rs.train] == [8, 9]
    stem = build_model("efficientnet_lite0", None, 2, seed=0).conv_stem.weight
    assert not torch.equal(model.conv_stem.weight, stem)  # both steps ran: the stem moved
    assert state.history[0].train_acc * 17 == pytest.approx(round(state.history[0].train_acc * 17))
