"""model.json's one schema: what training writes is what every reader reads."""

import json

import pytest

from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.models import load_trained

INFERENCE = {"arch": "resnet18", "mode": "fe", "classes": ["Normal", "Covid"], "image_size": 32}
NORM = {"mean": [0.5] * 3, "std": [0.25] * 3}


def test_a_run_round_trips_in_the_order_it_was_always_written(tmp_path):
    info = ModelInfo(
        **INFERENCE,
        **NORM,
        seed=1,
        device="cpu",
        fold=2,
        folds=5,
        summary={"best_epoch": 3, "train_seconds": 1.5},
    )
    info.write(tmp_path)
    d = json.loads((tmp_path / "model.json").read_text())
    assert list(d)[:4] == ["arch", "mode", "seed", "classes"]
    assert list(d)[-2:] == ["best_epoch", "train_seconds"]  # the summary after the fields
    assert d["fold"] == 2 and d["folds"] == 5 and d["bits_stored"] is None
    assert ModelInfo.read(tmp_path) == info


def test_fold_keys_only_for_a_fold_model_and_unknown_keys_are_ignored():
    d = ModelInfo(**INFERENCE, **NORM).to_json()
    assert "fold" not in d and "folds" not in d and d["train"] is None
    assert ModelInfo.from_json({**d, "from_a_newer_version": 1}) == ModelInfo(**INFERENCE, **NORM)


@pytest.mark.parametrize("drop", ["arch", "classes", "image_size", "mean"])
def test_a_sidecar_without_an_inference_field_is_one_line_naming_it(tmp_path, drop):
    d = {**INFERENCE, **NORM}
    del d[drop]
    (tmp_path / "model.json").write_text(json.dumps(d))
    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(
        Exception, match=rf"model.json: unusable \(KeyError: '{drop}'\); re-run the train stage"
    ):
        load_trained(tmp_path)
