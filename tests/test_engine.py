import numpy as np
import pytest
import torch

from cxr_transfer.core.errors import CxrError
from cxr_transfer.runtime import engine
from cxr_transfer.runtime.engine import Precision, predict_proba
from cxr_transfer.runtime.models import build_model, get_spec

CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    "native, emulated, expect",
    [
        (True, True, Precision(torch.bfloat16, False)),  # A100, H100: bf16, no scaler
        (False, True, Precision(torch.float16, True)),  # T4, V100: bf16 only emulated -> fp16 + scaler
        (False, False, Precision(torch.float16, True)),
    ],
)
def test_bf16_only_where_the_card_has_it_natively(monkeypatch, native, emulated, expect):
    def is_bf16_supported(including_emulation=True):
        return emulated if including_emulation else native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert Precision.for_device(CUDA) == expect
    assert Precision.for_device(CUDA, "fp32") == Precision(None, False)
    assert Precision.for_device(torch.device("cpu")) == Precision(None, False)
    if native:
        assert Precision.for_device(CUDA, "bf16") == Precision(torch.bfloat16, False)
    else:
        with pytest.raises(CxrError, match="train.precision=bf16 but this GPU has no native bf16"):
            Precision.for_device(CUDA, "bf16")


@pytest.mark.parametrize("native", ["amx", "avx512_bf16", None])
def test_cpu_bf16_only_when_asked_and_native(monkeypatch, native):
    """auto stays float32 on every CPU (bf16 measured slower, bench cpu-train); bf16 is the
    user's choice, refused where the CPU would emulate it."""
    monkeypatch.setattr(engine.speed, "cpu_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert Precision.for_device(cpu) == Precision.for_device(cpu, "fp32") == Precision(None, False)
    if native:
        assert Precision.for_device(cpu, "bf16") == Precision(torch.bfloat16, False)
    else:
        with pytest.raises(CxrError, match="no native bf16 .*use auto or fp32"):
            Precision.for_device(cpu, "bf16")
    with pytest.raises(CxrError, match="train.precision='fp16'"):
        Precision.for_device(cpu, "fp16")


def test_evaluation_scores_in_float32_whatever_training_used(monkeypatch):
    """bf16 scores tie (about 3 significant digits), which moves AUROC and the Youden threshold."""
    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (64, 32, 32), dtype=np.uint8)
    ref = predict_proba(model, "resnet18", spec.mean, spec.std, x, torch.device("cpu"), 16)
    # as on a bf16 GPU: if evaluation took the training precision, scores would be bf16-rounded
    bf16 = staticmethod(lambda d, c="auto": Precision(torch.bfloat16, False))
    monkeypatch.setattr(Precision, "for_device", bf16)
    got = predict_proba(model, "resnet18", spec.mean, spec.std, x, torch.device("cpu"), 16)
    assert torch.equal(got, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what bf16 scoring would have given
        low = predict_proba(model, "resnet18", spec.mean, spec.std, x, torch.device("cpu"), 16)
    assert engine.FP32.dtype is None
    assert len(torch.unique(ref[:, 1])) == 64 and not torch.equal(low, ref)


def test_predict_proba_needs_no_grad_mode_from_its_caller():
    """Scoring builds no autograd graph whoever calls it (predict does not switch grad off)."""
    spec = get_spec("resnet18")
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    with torch.enable_grad():
        model = build_model("resnet18", None, 2, 0)
        p = predict_proba(model, "resnet18", spec.mean, spec.std, x, torch.device("cpu"), 2)
    assert not p.requires_grad and p.shape == (3, 2)


def test_scores_do_not_depend_on_memory_format_or_batch(monkeypatch):
    """Evaluation's channels_last and batch come from speed rules; the scores stay the same."""
    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, seed=0)
    x = np.random.default_rng(1).integers(0, 256, (12, 32, 32), dtype=np.uint8)
    ref = predict_proba(model, "resnet18", spec.mean, spec.std, x, torch.device("cpu"))  # rule: 64
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # inference on the CPU
    monkeypatch.setattr(engine.speed, "channels_last", lambda *a, **k: False)
    got = predict_proba(model, "resnet18", spec.mean, spec.std, x, torch.device("cpu"), 5)
    assert model.conv1.weight.is_contiguous() and torch.allclose(got, ref, atol=1e-5)
