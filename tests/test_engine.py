import numpy as np
import pytest
import torch

from cxr_transfer import engine
from cxr_transfer.engine import Precision, predict_proba
from cxr_transfer.models import build_model, get_spec

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
    assert Precision.for_device(torch.device("cpu")) == Precision(None, False)


def test_evaluation_scores_in_float32_whatever_training_used(monkeypatch):
    """bf16 scores tie (about 3 significant digits), which moves AUROC and the Youden threshold."""
    spec = get_spec("resnet18")
    model = build_model("resnet18", None, 2, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (64, 32, 32), dtype=np.uint8)
    ref = predict_proba(model, spec.mean, spec.std, x, 16, torch.device("cpu"))
    # as on a bf16 GPU: if evaluation took the training precision, scores would be bf16-rounded
    monkeypatch.setattr(Precision, "for_device", staticmethod(lambda d: Precision(torch.bfloat16, False)))
    got = predict_proba(model, spec.mean, spec.std, x, 16, torch.device("cpu"))
    assert torch.equal(got, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what bf16 scoring would have given
        low = predict_proba(model, spec.mean, spec.std, x, 16, torch.device("cpu"))
    assert engine.FP32.dtype is None
    assert len(torch.unique(ref[:, 1])) == 64 and not torch.equal(low, ref)


def test_predict_proba_needs_no_grad_mode_from_its_caller():
    """Scoring builds no autograd graph whoever calls it (predict does not switch grad off)."""
    spec = get_spec("resnet18")
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    with torch.enable_grad():
        p = predict_proba(build_model("resnet18", None, 2, 0), spec.mean, spec.std, x, 2, torch.device("cpu"))
    assert not p.requires_grad and p.shape == (3, 2)
