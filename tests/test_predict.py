"""predict: rows, warnings and skip reasons on a mixed folder; the same probabilities through
PyTorch and ONNX Runtime; the ONNX path without torch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_transfer.__main__ import main
from cxr_transfer.data.synth import render_cxr
from cxr_transfer.runtime.card import ModelInfo
from cxr_transfer.runtime.models import build_model, get_spec
from cxr_transfer.serve.export import Probabilities, card, export_onnx, parity
from cxr_transfer.serve.predict import load_model, warnings_for
from tests.conftest import ROOT
from tests.test_dicom import make_dicom

CLASSES = ["Normal", "Covid"]
TRAINING = {
    "n": 100,
    "short_side_p05": 120.0,
    "short_side_median": 128.0,
    "aspect_p01": 0.9,
    "aspect_p99": 1.1,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model folder as train writes it (resnet18, 32 px) and its export with a card."""
    root = tmp_path_factory.mktemp("models")
    spec = get_spec("resnet18")
    net = build_model("resnet18", None, 2, 0).eval()
    folder = root / "resnet18-fe-s0"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "best.pt")
    meta = {
        "arch": "resnet18",
        "mode": "fe",
        "seed": 0,
        "classes": CLASSES,
        "image_size": 32,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "bits_stored": None,
        "training_images": TRAINING,
    }
    (folder / "model.json").write_text(json.dumps(meta))
    out = root / "exported"
    wrapped = Probabilities(net, spec.mean, spec.std)
    how = export_onnx(wrapped, 32, out / "model.onnx")
    check = parity(out / "model.onnx", wrapped, np.zeros((2, 32, 32), np.uint8))
    full = {"youden": {"threshold": 0.9}}  # a validation threshold far from 0.5: never applied
    (out / "card.json").write_text(
        json.dumps(card(ModelInfo.from_json(meta), {}, full, None, "Covid", check, how))
    )
    return folder, out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder as users have them: radiographs (PNG, JPEG, in a subfolder), a colour photo, a
    blank image, a small one, a wide one, a truncated PNG, a text file and an OS file."""
    d = tmp_path_factory.mktemp("mixed")
    xr = [render_cxr(np.random.default_rng([1, i]), 128, covid=bool(i % 2)) for i in range(3)]
    Image.fromarray(xr[0]).save(d / "a.png")
    Image.fromarray(xr[1]).save(d / "b.jpg", quality=90)
    (d / "sub").mkdir()
    Image.fromarray(xr[2]).save(d / "sub" / "c.png")
    rgb = np.stack([xr[0], xr[0] // 2, 255 - xr[0]], axis=2)
    Image.fromarray(rgb, "RGB").save(d / "colour.png")
    Image.fromarray(np.full((128, 128), 7, np.uint8)).save(d / "blank.png")
    Image.fromarray(xr[0][::4, ::4].copy()).save(d / "small.png")  # 32x32
    Image.fromarray(np.tile(xr[0], (1, 3))).save(d / "wide.png")  # 384x128
    good = (d / "a.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "notes.txt").write_text("not an image")
    scan = (xr[2].astype(np.uint16) * 16)[::-1].copy()  # a 12-bit DICOM, as PACS exports name them
    make_dicom(d / "sub" / "IM0001", scan, bits=12, WindowCenter=2048, WindowWidth=4096)
    (d / ".DS_Store").write_bytes(b"\0\0")
    return d


EXPECT = {  # file -> (skip reason, warning fragment); None = neither
    "a.png": (None, None),
    "b.jpg": (None, None),
    "sub/c.png": (None, None),
    "sub/IM0001": (None, None),
    "colour.png": (None, "colour image"),
    "blank.png": (None, "nearly blank image"),
    "small.png": (None, "much smaller than the training images (32x32"),
    "wide.png": (None, "aspect ratio 3.00 far from the training images' (0.90-1.10)"),
    "truncated.png": ("corrupt or truncated image", None),
    "notes.txt": ("not an image (.txt)", None),
    ".DS_Store": ("hidden or OS file", None),
}


@pytest.mark.parametrize("which", ["torch", "onnx"])
def test_a_mixed_folder_gives_the_right_rows_warnings_and_skips(models, mixed, tmp_path, which, capsys):
    model = models[0] if which == "torch" else models[1]
    out = tmp_path / "p.csv"
    main(["predict", str(mixed), "--model", str(model), "--out", str(out), "--batch-size", "4"])
    df = pd.read_csv(out, keep_default_na=False).set_index("path")
    df.index = [str(Path(p).relative_to(mixed)) for p in df.index]
    assert sorted(df.index) == sorted(EXPECT)
    for f, (skip, warn) in EXPECT.items():
        row = df.loc[f]
        assert row["skipped"].startswith(skip) if skip else row["skipped"] == "", f
        assert warn in row["warning"] if warn else row["warning"] == "", (f, row["warning"])
        if skip:
            assert row["p_Covid"] == "" and row["predicted"] == ""
        else:
            assert float(row["p_Normal"]) + float(row["p_Covid"]) == pytest.approx(1, abs=1e-5)
            assert row["predicted"] in CLASSES
    said = capsys.readouterr().out
    assert "8 images scored" in said and "4 with a warning, 3 skipped" in said


def test_torch_and_onnx_give_the_same_probabilities_and_the_same_decisions(models, mixed):
    """One rule per model (the argmax, the card's), whatever the runtime: the same label for the
    same image, even with a validation threshold in the card (an alternative it states)."""
    from cxr_transfer.serve.predict import gather, predict_files

    files, _ = gather([str(mixed)])
    got, labels = {}, {}
    for name, path in zip(("torch", "onnx"), models, strict=True):
        m = load_model(path)
        rows = [r for chunk, _ in predict_files(m, files, 3) for r in chunk if "skipped" not in r]
        got[name] = np.array([[r["p_Normal"], r["p_Covid"]] for r in rows])
        labels[name] = [r["predicted"] for r in rows]
    assert np.abs(got["torch"] - got["onnx"]).max() < 1e-5
    assert labels["torch"] == labels["onnx"] == list(np.array(CLASSES)[got["onnx"].argmax(1)])
    card_ = json.loads((models[1] / "card.json").read_text())
    assert card_["decision"]["rule"].startswith("the class of highest probability (argmax")
    assert card_["decision"]["alternative"]["threshold"] == 0.9  # stated, not applied


def test_a_card_s_temperature_gives_named_calibrated_probabilities_beside_the_network_s(
    models, mixed, tmp_path
):
    """The card says what a user gets: the graph's softmax as p_<class>, and with a temperature
    fitted by evaluate, p_<class>_calibrated = softmax(log p / T); none without one."""
    from cxr_transfer.serve.onnx import calibrated
    from cxr_transfer.serve.predict import gather, predict_files, table

    files, _ = gather([str(mixed)])
    plain = load_model(models[1])
    assert plain.temperature is None
    rows = [r for chunk, _ in predict_files(plain, files, 4) for r in chunk if "skipped" not in r]
    assert "p_Covid_calibrated" not in table(rows, plain)
    c = json.loads((models[1] / "card.json").read_text())
    assert c["output"]["calibrated"] is False and "p_<class>_calibrated" in c["calibration"]["applied"]
    dst = tmp_path / "warm"
    shutil.copytree(models[1], dst)
    c["calibration"]["temperature"] = 2.0
    (dst / "card.json").write_text(json.dumps(c))
    warm = load_model(dst)
    rows = [r for chunk, _ in predict_files(warm, files, 4) for r in chunk if "skipped" not in r]
    df = table(rows, warm)
    p = df[["p_Normal", "p_Covid"]].to_numpy()
    q = df[["p_Normal_calibrated", "p_Covid_calibrated"]].to_numpy()
    z = np.log(p[:, 1] / p[:, 0]) / 2.0  # the log-odds halved
    assert q[:, 1] == pytest.approx(1 / (1 + np.exp(-z)), abs=2e-5)
    assert ((q[:, 1] >= 0.5) == (p[:, 1] >= 0.5)).all()  # the decision is the network's argmax either way
    assert calibrated(np.array([[1e-30, 1.0]], np.float32), 10.0)[0, 0] == pytest.approx(
        1 / (1 + 1e3), rel=1e-3
    )


def test_the_onnx_path_does_not_import_torch(models, mixed, tmp_path):
    code = (
        "import sys; from cxr_transfer.__main__ import main; "
        f"main(['predict', {str(mixed / 'a.png')!r}, '--model', {str(models[1])!r}, '--out', "
        f"{str(tmp_path / 'o.csv')!r}]); print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip().endswith("False"), r.stdout


def test_bad_model_path_and_gradcam_on_onnx_are_one_line_errors(models, mixed, tmp_path):
    for args, expect in (
        (["--model", str(tmp_path)], "neither a trained model folder"),
        (["--model", str(models[1]), "--gradcam", str(tmp_path / "g")], "--gradcam needs the PyTorch model"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "cxr_transfer", "predict", str(mixed / "a.png"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and r.stderr.startswith("predict: error: ") and expect in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_gradcam_writes_one_overlay_per_scored_image(models, mixed, tmp_path):
    out = tmp_path / "p.csv"
    main(
        [
            "predict",
            str(mixed),
            "--model",
            str(models[0]),
            "--out",
            str(out),
            "--gradcam",
            str(tmp_path / "g"),
        ]
    )
    df = pd.read_csv(out, keep_default_na=False)
    drawn = df.loc[df["skipped"] == "", "gradcam"]
    assert len(drawn) == 8 and all(Image.open(p).size == (32, 32) for p in drawn)
    assert (df.loc[df["skipped"] != "", "gradcam"] == "").all()


def test_warnings_follow_the_training_images():
    flat = np.full((32, 32), 100, np.uint8)
    assert warnings_for({"width": 128, "height": 128}, flat, TRAINING) == [
        "nearly blank image (1st-99th percentile 100-100 of 255)"
    ]
    noisy = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    assert warnings_for({"width": 128, "height": 128}, noisy, TRAINING) == []
    assert warnings_for({"width": 128, "height": 128}, noisy, None) == []  # nothing to compare with


def _broken_copy(models, tmp_path, which: str) -> Path:
    """A copy of the exported model or the model folder with one file broken as `which` says."""
    import shutil

    folder, exported = models
    src = exported if which.startswith("onnx") or which.startswith("card") else folder
    dst = tmp_path / which
    shutil.copytree(src, dst)
    if which == "onnx-truncated":
        data = (dst / "model.onnx").read_bytes()
        (dst / "model.onnx").write_bytes(data[: len(data) // 3])
    elif which == "onnx-garbage":
        (dst / "model.onnx").write_bytes(b"not a protobuf at all\n" * 10)
    elif which == "card-size":
        c = json.loads((dst / "card.json").read_text())
        c["preprocessing"]["image_size"] = 64  # the graph takes 32
        (dst / "card.json").write_text(json.dumps(c))
    elif which == "card-empty":
        (dst / "card.json").write_text("{}")
    elif which == "card-not-json":
        (dst / "card.json").write_text('{"classes": [')
    elif which == "pt-truncated":
        data = (dst / "best.pt").read_bytes()
        (dst / "best.pt").write_bytes(data[: len(data) // 2])
    elif which == "json-empty":
        (dst / "model.json").write_text("{}")
    return dst


@pytest.mark.parametrize(
    "which, expect",
    [
        ("onnx-truncated", "model.onnx: not a loadable ONNX model"),
        ("onnx-garbage", "model.onnx: not a loadable ONNX model"),
        ("card-size", "model.onnx: the graph takes ['batch', 1, 32, 32], but card.json says image_size 64"),
        ("card-empty", "card.json: no 'classes' in it"),
        ("card-not-json", "card.json: not a readable model card"),
        ("pt-truncated", "best.pt: cannot be loaded as resnet18 weights"),
        ("json-empty", "model.json: unusable (KeyError: 'arch')"),
    ],
)
def test_a_broken_model_file_is_one_line_and_a_non_zero_exit(models, mixed, tmp_path, which, expect, capsys):
    """In process (the command's main, as the console script calls it): the exit code and stderr."""
    model = _broken_copy(models, tmp_path, which)
    out = tmp_path / "p.csv"
    with pytest.raises(SystemExit) as e:
        main(["predict", str(mixed / "a.png"), "--model", str(model), "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("predict: error: ") and expect in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not out.exists()


def test_links_and_odd_names_are_skipped_rows_and_every_input_skipped_exits_non_zero(models, tmp_path):
    import os

    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(render_cxr(np.random.default_rng(5), 64, covid=True)).save(d / "good.png")
    os.symlink("/nonexistent/x.png", d / "gone.png")
    os.symlink("l2.png", d / "l1.png")
    os.symlink("l1.png", d / "l2.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(os.fsencode(d) + b"/caf\xe9.png")
    out = tmp_path / "p.csv"
    cmd = [
        sys.executable,
        "-m",
        "cxr_transfer",
        "predict",
        str(d),
        "--model",
        str(models[1]),
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    df = pd.read_csv(out, keep_default_na=False).set_index("path")
    df.index = [Path(p).name for p in df.index]
    assert df.loc["good.png", "predicted"] in CLASSES
    assert df.loc["gone.png", "skipped"] == "dangling symbolic link (its target is missing)"
    assert df.loc["l1.png", "skipped"] == df.loc["l2.png", "skipped"] == "symbolic link loop"
    assert df.loc["caf\\xe9.png", "skipped"] == "file name is not valid UTF-8 (rename the file)"
    assert "skipped 2: symbolic link loop" in r.stderr
    (d / "good.png").unlink()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"predict: error: no image could be scored: all 4 files were skipped (reasons in {out})"
    )
    assert len(pd.read_csv(out)) == 4  # the reasons are still written


def test_predict_on_12_bit_files_equals_predict_proba_on_what_prepare_made_of_them(tmp_path):
    """A model trained on 12-bit data (bits_stored: 12 in its card): predict decodes the files by
    the card's bits and gives predict_proba's probabilities on prepare's array. A card that lost
    bits_stored would scale the 12 bits as 16 (16 times darker images) and score differently."""
    from cxr_transfer.data.prepare import decode_split
    from cxr_transfer.runtime.engine import predict_proba
    from cxr_transfer.serve.predict import predict_files

    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        a = (rng.random((40, 40)) * 4095).astype(np.uint16)  # 12 bits in a 16-bit PNG
        a[10:30, 10:30] = 4000 if i % 2 else 300
        path = tmp_path / f"x{i}.png"
        Image.fromarray(a).save(path)
        files.append(str(path))
    x = decode_split(files, 32, workers=0, bits_stored=12)  # what prepare stores
    spec = get_spec("resnet18")
    net = build_model("resnet18", None, 2, 0).eval()
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "best.pt")
    meta = {
        **json.loads(json.dumps(dict(arch="resnet18", mode="fe", seed=0, classes=CLASSES))),
        "image_size": 32,
    }
    meta |= {"mean": list(spec.mean), "std": list(spec.std), "bits_stored": 12, "training_images": TRAINING}
    (folder / "model.json").write_text(json.dumps(meta))
    want = predict_proba(net, "resnet18", spec.mean, spec.std, x, torch.device("cpu")).numpy()
    rows = [r for chunk, _ in predict_files(load_model(folder), files, 4) for r in chunk]
    got = np.array([[r["p_Normal"], r["p_Covid"]] for r in rows])
    assert np.abs(got - want).max() < 1e-5
    (folder / "model.json").write_text(json.dumps({**meta, "bits_stored": None}))  # the card loses it
    rows = [r for chunk, _ in predict_files(load_model(folder), files, 4) for r in chunk]
    lost = np.array([[r["p_Normal"], r["p_Covid"]] for r in rows])
    assert np.abs(lost - want).max() > 1e-3  # the test can tell
