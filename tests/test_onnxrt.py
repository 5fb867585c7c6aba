"""The ONNX Runtime path of the no-gradient passes (cxr_transfer.runtime.onnxrt): the same numbers as
PyTorch within the export's parity tolerances, on the model's current weights, and the rule that
picks it."""

import numpy as np
import pytest
import torch
from torch import nn

from cxr_transfer.runtime import onnxrt, speed
from cxr_transfer.runtime.batches import ArrayBatches
from cxr_transfer.runtime.engine import FP32, Pass, for_inference, predict_proba, tail_inputs
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.serve.export import LOGIT_ATOL, LOGIT_RTOL

CPU = torch.device("cpu")


def images(n=12, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8))


def torch_logits(model, spec, x, upto=None):
    fwd = for_inference(model.eval(), spec.name, spec.mean, spec.std, CPU, upto=upto)  # images=0: PyTorch
    with torch.no_grad():
        return fwd(x)


def close(a, b):
    """Within the export stage's parity tolerance on logits (and far tighter in practice)."""
    return torch.allclose(a, b, rtol=LOGIT_RTOL, atol=LOGIT_ATOL) and float((a - b).abs().max()) < 1e-4


@pytest.mark.parametrize(
    "arch", ["resnet18", "efficientnet_lite0", pytest.param("densenet121", marks=pytest.mark.slow)]
)
def test_logits_and_features_equal_pytorch(arch):
    spec, x = get_spec(arch), images()
    model = build_model(arch, None, 2, seed=0).eval()
    fwd = onnxrt.OnnxForward(model, spec.mean, spec.std, 32)
    assert fwd(x).shape == (12, 2) and close(fwd(x), torch_logits(model, spec, x))
    last = model.get_submodule(spec.last_layer)
    feats = onnxrt.OnnxForward(model, spec.mean, spec.std, 32, upto=last)(x)
    ref = torch_logits(model, spec, x, upto=last)
    assert feats.shape == ref.shape == (12, last.in_features) and close(feats, ref)
    assert model.get_submodule(spec.last_layer) is last  # the cut is undone after the export


def test_a_training_step_reaches_the_next_pass_with_one_new_session():
    spec, x = get_spec("resnet18"), images()
    model = build_model("resnet18", None, 2, seed=0)
    fwd = onnxrt.OnnxForward(model, spec.mean, spec.std, 32)
    before = fwd(x)
    fwd(x)
    assert fwd.sessions == 1  # same weights: the session is kept
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(3):  # weights and BatchNorm statistics move in place
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.rand(8, 3, 32, 32)), torch.arange(8) % 2).backward()
        opt.step()
    after = fwd(x)
    assert fwd.sessions == 2 and not close(after, before)
    assert close(after, torch_logits(model, spec, x))
    model.load_state_dict(build_model("resnet18", None, 2, seed=1).state_dict())  # a checkpoint loaded
    assert close(fwd(x), torch_logits(model, spec, x)) and fwd.sessions == 3


def test_batchnorm_statistics_moved_without_a_step_reach_the_next_pass():
    """Statistics re-estimated at a new site (train-mode forwards, no optimizer step): no parameter
    moves and the buffers' version counters stay as they were, so a session keyed on parameters
    alone would score the old statistics."""
    spec, x = get_spec("resnet18"), images()
    model = build_model("resnet18", None, 2, seed=0).eval()
    fwd = onnxrt.OnnxForward(model, spec.mean, spec.std, 32)
    before = fwd(x)
    version = model.bn1.running_mean._version
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32) * 4)
    model.eval()
    assert model.bn1.running_mean._version == version  # what the old key read: unchanged
    after = fwd(x)
    assert fwd.sessions == 2 and not close(after, before) and close(after, torch_logits(model, spec, x))


def test_equal_weights_stored_once_by_the_exporter_are_replaced_one_by_one():
    # a fresh model's BatchNorm layers all hold ones and zeros: the exporter keeps one copy of each
    spec, x = get_spec("efficientnet_lite0"), images()
    model = build_model("efficientnet_lite0", None, 2, seed=0).eval()
    fwd = onnxrt.OnnxForward(model, spec.mean, spec.std, 32)
    with torch.no_grad():
        model.blocks[1][0].bn1.weight.mul_(3.0)  # one of the equal tensors changes, the others not
    assert close(fwd(x), torch_logits(model, spec, x))


class Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(torch.linalg.eigh(x.mean((2, 3))[:, :, None] * torch.ones(3))[0])


def test_a_model_the_exporter_cannot_take_stays_in_pytorch_with_one_line(monkeypatch, capfd):
    monkeypatch.setattr(speed, "onnx_pays", lambda *a, **k: True)
    model = Unexportable().eval()
    fwd = for_inference(model, "resnet18", (0.5,) * 3, (0.5,) * 3, CPU, plan=Pass(100, 8))
    assert not isinstance(fwd, onnxrt.OnnxForward)
    with torch.no_grad():
        assert fwd(images(4, 8)).shape == (4, 2)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in-memory ONNX export failed" in err[0] and "stays in PyTorch" in err[0]
    assert onnxrt.exported(model, (0.5,) * 3, (0.5,) * 3, 8) is None  # not tried again
    for_inference(model, "resnet18", (0.5,) * 3, (0.5,) * 3, CPU, plan=Pass(100, 8))
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("onnx", [True, False])
def test_predict_proba_and_the_feature_pass_take_the_rule_s_runtime_and_agree(monkeypatch, onnx):
    calls = []
    monkeypatch.setattr(speed, "onnx_pays", lambda *a, **k: calls.append((a, k)) or onnx)
    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, seed=3)
    x = images(20).numpy()[:, 0]
    p = predict_proba(model, "resnet18", spec.mean, spec.std, x, CPU, batch_size=8)
    assert calls[0][0] == ("resnet18", 32, 20)  # the pass's arch, size and images
    assert (onnxrt.exported(model, spec.mean, spec.std, 32) is True) is onnx
    monkeypatch.setattr(speed, "onnx_pays", lambda *a, **k: False)
    ref = predict_proba(build_model("resnet18", None, 2, seed=3), "resnet18", spec.mean, spec.std, x, CPU, 8)
    assert torch.allclose(p, ref, atol=1e-5)
    monkeypatch.setattr(speed, "onnx_pays", lambda *a, **k: onnx)
    last = model.fc
    fwd = for_inference(model, "resnet18", spec.mean, spec.std, CPU, upto=last, plan=Pass(20, 32))
    batches = ArrayBatches(x[:, None], np.zeros(20), 8, device=CPU)
    feats = tail_inputs(model, fwd, batches, FP32, CPU)
    assert feats.shape == (20, 512) and close(
        feats, torch_logits(model, spec, torch.from_numpy(x[:, None]), last)
    )


def test_onnx_runs_on_the_cpu_in_float32_only(monkeypatch):
    monkeypatch.setattr(speed, "onnx_pays", lambda *a, **k: True)
    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, seed=0).eval()
    args = (model, "resnet18", spec.mean, spec.std)
    assert isinstance(for_inference(*args, CPU, plan=Pass(10, 32)), onnxrt.OnnxForward)
    assert not isinstance(for_inference(*args, CPU, plan=Pass(10, 32, exact=False)), onnxrt.OnnxForward)
    assert not isinstance(for_inference(*args, CPU), onnxrt.OnnxForward)  # images unknown


ROW = {
    "pytorch_images_per_s": 100.0,
    "onnxruntime_images_per_s": 200.0,
    "export_seconds": 1.0,
    "session_seconds": 0.1,
}


def test_the_rule_weighs_the_export_and_each_session_against_the_saved_time(monkeypatch):
    monkeypatch.setattr(speed, "CPU_ONNX", {"resnet": {96: ROW}})
    monkeypatch.setattr(speed, "CPU_ONNX_START", 0.5)
    # 100 images: PyTorch 1.0 s; ONNX Runtime 0.5 s + 0.1 s session + 1.0 s export
    assert not speed.onnx_pays("resnet18", 96, 100, first=False)
    assert speed.onnx_pays("resnet18", 96, 100, exported=True)  # 0.6 s < 1.0 s
    assert speed.onnx_pays("resnet18", 96, 300, first=False)  # 1.5 + 0.1 + 1.0 < 3.0
    assert not speed.onnx_pays("resnet18", 96, 300)  # ... + 0.5 s: the process's first export
    assert speed.onnx_pays("resnet18", 96, 400)  # 2.0 + 0.1 + 1.5 < 4.0
    assert not speed.onnx_pays("resnet18", 96, 300, sessions=20, first=False)  # 1.5 + 2 + 1 > 3
    # scaled by pixels from the nearest measured size: at 192 px each image costs 4x, so 100 pay
    assert speed.onnx_pays("resnet50", 192, 100)  # 4 s against 2 + 0.1 + 1 + 0.5
    assert not speed.onnx_pays("vgg16", 96, 10**6)  # no row for the family: PyTorch
    assert speed.break_even(ROW) == 220  # 1.1 s / (0.01 - 0.005) s per image
    assert speed.break_even({**ROW, "onnxruntime_images_per_s": 90.0}) is None


def test_the_committed_rule_is_what_the_bench_rows_imply():
    import json
    from pathlib import Path

    runs = json.loads(Path("bench/results/cpu-full-2026-12-02-cpu-infer.json").read_text())["cpu-infer"][
        "runs"
    ]
    assert speed.derive_onnx_rule(runs) == {
        f: {int(k): v for k, v in r.items()} for f, r in speed.CPU_ONNX.items()
    }
    assert all(r["max_abs_logit_diff"] < 1e-4 for r in runs if "export_error" not in r)
    assert any("export_error" in r for r in runs if r["arch"] == "vgg19_bn" and r["size"] == 96)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ft", "fe"])
def test_validation_through_onnx_runtime_gives_pytorch_s_figures_every_epoch(tmp_path, monkeypatch, mode):
    from cxr_transfer.core.params import SEED_MODES, TrainConfig
    from cxr_transfer.train.checkpoints import Checkpoints
    from cxr_transfer.train.loop import Steps, Stopping, fit
    from cxr_transfer.train.optim import make_optimizer
    from cxr_transfer.train.phases import RunContext, setup_run

    rng = np.random.default_rng(0)
    y = np.arange(32) % 2
    x = rng.integers(0, 200, (32, 32, 32), dtype=np.uint8)
    x[y == 1, 8:24, 8:24] += 50
    data = {"train": (x[:24], y[:24]), "val": (x[24:], y[24:])}
    cfg, runs = SEED_MODES[mode], {}
    for onnx in (False, True):
        monkeypatch.setattr(speed, "onnx_pays", lambda *a, onnx=onnx, **k: onnx)
        torch.manual_seed(0)
        model = build_model("resnet18", None, 2, seed=0)
        rs = setup_run(
            model, get_spec("resnet18"), data, cfg, TrainConfig(epochs=3, batch_size=8), RunContext(CPU, FP32)
        )
        assert isinstance(rs.loop.infer, onnxrt.OnnxForward) is (onnx and mode == "ft")  # fe: a linear head
        steps = Steps(make_optimizer(rs.groups, cfg), FP32, CPU)
        state = fit(rs.phases, steps, Stopping(3, 8), Checkpoints(tmp_path / str(onnx), "f"))
        runs[onnx] = state.history
        if onnx and mode == "ft":
            assert rs.loop.infer.sessions == 3  # one per epoch: each validates that epoch's weights
    for a, b in zip(runs[False], runs[True], strict=True):
        assert (a.val_acc, a.val_auroc) == (b.val_acc, b.val_auroc) and a.val_loss == pytest.approx(
            b.val_loss, abs=1e-5
        )
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)  # training never touches the export


def test_the_kept_export_does_not_keep_its_model_alive():
    import gc
    import weakref

    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, seed=0).eval()
    fwd = onnxrt.onnx_forward(model, spec.mean, spec.std, 32)
    assert onnxrt.onnx_forward(model, spec.mean, spec.std, 32) is fwd  # exported once per model
    assert onnxrt.exported(model, spec.mean, spec.std, 32) is True and onnxrt.started()
    alive = weakref.ref(model)
    del model, fwd
    gc.collect()
    assert alive() is None  # the cache entry went with the model


def test_a_stage_picks_one_runtime_for_all_its_models(monkeypatch, tmp_path):
    """The rule weighs the stage's whole work (every fold model's export and session): one model of
    a few images stays in PyTorch; and a Scorer decides once, at its first model, so fold 0 and
    folds 1-4 never run on different runtimes."""
    import cxr_transfer.evaluate.runs as runs
    from cxr_transfer.runtime.card import ModelInfo

    assert speed.runtime_for("efficientnet_lite0", 96, 10, 1) == "pytorch"
    assert speed.runtime_for("no_such_arch", 96, 10**6, 5) == "pytorch"  # no measured rates: PyTorch
    calls = []

    def counted(*a):
        calls.append(a)
        return "pytorch"

    monkeypatch.setattr(runs, "runtime_for", counted)
    score, spec = runs.Scorer("cpu", "auto", 3), get_spec("resnet18")
    for fold in range(3):
        d = tmp_path / f"fold{fold}"
        d.mkdir()
        torch.save(build_model("resnet18", None, 2, fold).state_dict(), d / "best.pt")
        ModelInfo("resnet18", "fe", ["a", "b"], 32, list(spec.mean), list(spec.std), summary={}).write(d)
        score(d, {"test": images(4).numpy()[:, 0]})
    assert calls == [("resnet18", 32, 4, 3)] and score.runtime == "pytorch"  # once, for 3 models
