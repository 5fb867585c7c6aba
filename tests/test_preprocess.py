"""prepare.intensity and prepare.crop: what each option does to pixels, and that prepare, the
external sets, predict (PyTorch and ONNX cards) all apply the same function to the same file."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.params import ParamError, PrepareConfig, parse_params
from cxr_transfer.data.index import build_index
from cxr_transfer.data.prepare import decode_split, load_meta, load_store, prepare_splits
from cxr_transfer.data.preprocess import PLAIN, Preprocess, body_box, preprocessed, standardised, steps_of
from cxr_transfer.data.synth import render_cxr, synthesize
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.serve.onnx import load_onnx
from cxr_transfer.serve.predict import load_model, read_one
from tests.test_prepare import data_at

OPTIONS = [Preprocess(i, c) for i in ("none", "equalize", "clahe", "percentile") for c in ("none", "body")]


def padded(rng, covid: bool) -> np.ndarray:
    """A 96 px radiograph inside a 140 x 120 frame: a black band of 30 rows on top and 24 columns
    on the left (as scanners and converters leave them) and a bright 6 px marker in that band."""
    a = np.zeros((140, 120), np.uint8)
    a[30:126, 24:120] = render_cxr(rng, 96, covid)
    a[4:10, 4:10] = 255
    return a


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for k, folder in enumerate(("NORMAL", "COVID")):
        (root / folder).mkdir()
        for i in range(4):
            Image.fromarray(padded(np.random.default_rng([k, i]), bool(k))).save(root / folder / f"{i}.png")
    return root


def test_the_body_box_drops_the_black_band_and_ignores_the_marker():
    a = padded(np.random.default_rng(0), False)
    top, bottom, left, right = body_box(a)
    # the body ellipse lies inside rows 30-126 and columns 24-120; the box is it plus 2% margins
    assert 30 - 3 <= top <= 40 and 118 <= bottom <= 126 + 3
    assert 24 - 2 <= left <= 34 and 110 <= right <= 120
    assert top > 10 and left > 10  # the 6 px marker (rows and columns 4-9) is thinner than 10%
    flat = np.full((50, 60), 80, np.uint8)
    assert body_box(flat) == (0, 50, 0, 60)  # nothing to separate: kept whole
    speck = np.zeros((50, 60), np.uint8)
    speck[20:24, 20:24] = 200  # a box keeping < half of each side is not trusted
    assert body_box(speck) == (0, 50, 0, 60)


def test_each_intensity_option_does_what_it_says():
    rng = np.random.default_rng(1)
    dim = (render_cxr(rng, 64, False) * 0.3 + 40).astype(np.uint8)  # a low-contrast exposure: 40-117
    lo, hi = np.percentile(dim, [0.5, 99.5])
    p = standardised(dim, "percentile")
    assert p.min() == 0 and p.max() == 255
    inside = (dim > lo) & (dim < hi)
    expect = np.round((dim[inside] - lo) * 255 / (hi - lo))
    assert np.abs(p[inside].astype(float) - expect).max() <= 1
    e = standardised(dim, "equalize")  # the cumulative histogram becomes a straight line
    cdf = np.cumsum(np.bincount(e.ravel(), minlength=256)) / e.size
    assert np.abs(cdf[e.ravel()] - e.ravel() / 255).max() < 0.06
    c = standardised(dim, "clahe")
    assert c.dtype == np.uint8 and c.std() > 2 * dim.std()  # contrast spread out
    assert not np.array_equal(c, e)  # adaptive: not the global equalisation
    assert standardised(dim, "none") is dim
    flat = np.full((16, 16), 9, np.uint8)
    assert all(np.array_equal(standardised(flat, k), flat) for k in ("equalize", "clahe", "percentile"))


def test_unknown_options_are_one_line_naming_the_key():
    with pytest.raises(ParamError, match=r"prepare.intensity: 'histeq' is not one of"):
        PrepareConfig(intensity="histeq")
    with pytest.raises(ParamError, match=r"prepare.crop: 'lungs' is not one of \['body', 'none'\]"):
        PrepareConfig(crop="lungs")


def test_the_card_names_every_step_in_order():
    steps = steps_of(Preprocess("clahe", "body"), 64)
    assert [s.split(" ")[0] for s in steps] == ["crop", "resize", "CLAHE"]
    assert steps_of(PLAIN, 64) == [
        "resize to 64x64, PIL bilinear (antialiased when shrinking), aspect not kept"
    ]


def write_splits(root, folder):
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    rows = pd.DataFrame({"path": files, "label": [int("COVID" in f) for f in files]})
    folder.mkdir(parents=True, exist_ok=True)
    for s, part in (("train", rows.iloc[:4]), ("val", rows.iloc[4:6]), ("test", rows.iloc[6:])):
        part.to_csv(folder / f"{s}.csv", index=False)
    return rows


def internal_of(tmp_path) -> pd.DataFrame:
    """An internal data.csv sharing no image with the collection (nothing is dropped as a copy)."""
    other = tmp_path / "other"
    synthesize(other, 2, 64, seed=7)
    return build_index(other, {"Normal": ("NORMAL",), "Covid": ("COVID",)}, 10**8, workers=1)[0]


@pytest.mark.parametrize("pre", OPTIONS, ids=lambda p: f"{p.intensity}-{p.crop}")
def test_prepare_external_and_predict_make_the_same_array_of_a_file(tmp_path, collection, pre, models_for):
    """Each option: the internal store's rows, the external set's store rows and what predict
    reads through a PyTorch model folder and an ONNX card are the same arrays, and differ from
    the plain ones (the option is really applied)."""
    from cxr_transfer.data.external import prepare_external

    rows = write_splits(collection, tmp_path / "split")
    cfg = PrepareConfig(32, workers=1, intensity=pre.intensity, crop=pre.crop)
    prepare_splits(tmp_path / "split", tmp_path / "prep", data_at(collection), cfg)
    assert load_meta(tmp_path / "prep", "train")["preprocess"] == pre.to_json()
    x = np.concatenate([load_store(tmp_path / "prep", s)[0] for s in ("train", "val", "test")])
    files = [str(collection / f) for f in rows["path"]]
    assert np.array_equal(x, decode_split(files, 32, workers=0, pre=pre))
    if not pre.plain:
        assert not np.array_equal(x, decode_split(files, 32, workers=0))
    # the same files as an external site (none is dropped: the internal table here is empty)
    p = parse_params(
        {
            "data": {"root": str(collection)},
            "prepare": {"image_size": 32, "workers": 1, "intensity": pre.intensity, "crop": pre.crop},
            "external": [{"name": "h2", "root": str(collection)}],
        }
    )
    prepare_external(p, "h2", internal_of(tmp_path), tmp_path / "ext")
    ext = pd.read_csv(tmp_path / "ext" / "data.csv")
    xe = np.load(tmp_path / "ext" / "x.npy")
    by_path = dict(zip(rows["path"], x, strict=True))
    assert len(ext) == 8 and all(np.array_equal(xe[i], by_path[q]) for i, q in enumerate(ext["path"]))
    # predict: a PyTorch model folder whose model.json carries the option, and an ONNX card
    torch_dir, onnx_path = models_for(pre)
    for model in (load_model(torch_dir), load_onnx(onnx_path)):
        assert model.preprocess == pre
        got = np.stack([read_one(f, model, 10**8)[0] for f in files])
        assert np.array_equal(got, x), model.runtime


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny model, its folder and its export (the graph does not depend on the option)."""
    import torch

    from cxr_transfer.runtime.models import build_model, get_spec
    from cxr_transfer.serve.export import Probabilities, card, export_onnx, parity

    root = tmp_path_factory.mktemp("model")
    spec = get_spec("resnet18")
    net = build_model("resnet18", None, 2, 0).eval()
    torch.save(net.state_dict(), root / "best.pt")
    meta = {"arch": "resnet18", "mode": "fe", "classes": ["Normal", "Covid"], "image_size": 32}
    meta |= {"mean": list(spec.mean), "std": list(spec.std)}
    wrapped = Probabilities(net, spec.mean, spec.std)
    how = export_onnx(wrapped, 32, root / "exported" / "model.onnx")
    check = parity(root / "exported" / "model.onnx", wrapped, np.zeros((2, 32, 32), np.uint8))
    return root, meta, lambda info: card(info, {}, {}, None, "Covid", check, how)


@pytest.fixture
def models_for(exported):
    root, meta, make_card = exported

    def write(pre: Preprocess):
        info = ModelInfo.from_json({**meta, "preprocess": pre.to_json()})
        (root / "model.json").write_text(json.dumps(info.to_json()))
        c = make_card(info)
        assert (c["preprocessing"]["intensity"], c["preprocessing"]["crop"]) == (pre.intensity, pre.crop)
        (root / "exported" / "card.json").write_text(json.dumps(c))
        return root, root / "exported" / "model.onnx"

    return write


def test_a_card_with_an_unknown_option_is_one_line(models_for):
    _, onnx_path = models_for(PLAIN)
    c = json.loads((onnx_path.parent / "card.json").read_text())
    c["preprocessing"]["intensity"] = "magic"
    (onnx_path.parent / "card.json").write_text(json.dumps(c))
    with pytest.raises(CxrError, match=r"card.json: preprocessing intensity 'magic' is not one of"):
        load_onnx(onnx_path)


def test_a_model_without_the_keys_reads_as_plain(models_for):
    """model.json and card.json from before the keys existed: none/none, as they were made."""
    torch_dir, onnx_path = models_for(PLAIN)
    meta = json.loads((torch_dir / "model.json").read_text())
    meta.pop("preprocess")
    (torch_dir / "model.json").write_text(json.dumps(meta))
    c = json.loads((onnx_path.parent / "card.json").read_text())
    del c["preprocessing"]["intensity"], c["preprocessing"]["crop"]
    (onnx_path.parent / "card.json").write_text(json.dumps(c))
    assert load_model(torch_dir).preprocess == PLAIN == load_onnx(onnx_path).preprocess
    a = padded(np.random.default_rng(3), True)
    assert np.array_equal(
        preprocessed(a, 32), np.asarray(Image.fromarray(a).resize((32, 32), Image.BILINEAR))
    )
