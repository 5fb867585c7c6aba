"""Stage export@<arch>-<mode>: the first seed's model as ONNX (uint8 images in, probabilities
out), checked against PyTorch on the test store, with its model card."""

import argparse
import json
from pathlib import Path

import torch

from cxr_transfer.core.cli import run, write_json
from cxr_transfer.core.params import load_params
from cxr_transfer.data.prepare import load_store
from cxr_transfer.runtime.models import load_trained
from cxr_transfer.runtime.speed import keep_freed_memory
from cxr_transfer.serve.export import Probabilities, card, check_parity, export_onnx, parity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, required=True, help="the train stage's folder")
    ap.add_argument("--eval-dir", type=Path, required=True, help="its evaluate folder (figures, threshold)")
    ap.add_argument("--probe", type=Path, required=True, help="metrics/probe.json")
    ap.add_argument("--prepared", type=Path, required=True, help="prepare's folder (test/ is read)")
    ap.add_argument("--out", type=Path, required=True, help="folder for model.onnx and card.json")
    args = ap.parse_args()
    keep_freed_memory()  # no mmap/munmap of every batch's activations (cxr_transfer.runtime.speed)
    p = load_params(args.params)
    model, meta = load_trained(args.model)
    wrapped = Probabilities(model, meta.mean, meta.std)
    name = f"{meta.arch}-{meta.mode}"
    onnx_path = args.out / "model.onnx"
    how = export_onnx(wrapped, meta.image_size, onnx_path)
    x, _ = load_store(args.prepared, "test")
    check = parity(onnx_path, wrapped, x)
    check_parity(check, name)
    head = json.loads((args.eval_dir / "headline.json").read_text())
    full = json.loads((args.eval_dir / "metrics.json").read_text())
    probe = json.loads(args.probe.read_text())
    positive = p.data.positive if p.data.positive in meta.classes else None
    write_json(args.out / "card.json", card(meta, head, full, probe, positive, check, how))
    mb = onnx_path.stat().st_size / 2**20
    print(
        f"export {name}: {onnx_path} ({mb:.1f} MiB, {how}); parity on {check['images']} test images: "
        f"max |dP| {check['max_abs_diff']:.1e}, max |dlogit| {check['max_logit_diff']:.1e} "
        f"({check['max_logit_excess']:.2g}x the tolerance), {check['decisions_differ']} decisions differ; "
        "CPU inference "
        f"{check['onnxruntime_images_per_s']:.0f} img/s ONNX Runtime, "
        f"{check['pytorch_images_per_s']:.0f} img/s PyTorch"
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run(main, "export")
