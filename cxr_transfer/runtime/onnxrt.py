"""CPU inference through ONNX Runtime on an in-memory export of a live PyTorch model.

ONNX Runtime ran every measured family's no-gradient passes 1.1-2.4x faster than PyTorch on the
CPU (its fused Conv+BatchNorm and depthwise kernels; `python -m bench --cases cpu-infer`). A
model is exported once per process (graph and weights, kept in memory); when its weights change
(an epoch of training, a loaded checkpoint) the next pass makes a new session from the same graph
with the current tensors written into it by name, which costs a copy of the weights and a
session's optimisation (~0.05-0.3 s; VGG's 0.5 GB of weights, 3 s), not a re-export.
(SessionOptions.add_initializer shares the arrays instead, but ONNX Runtime did not apply every one
of them: the logits came out wrong.) `speed.onnx_pays` decides where the export repays itself;
the results agree with PyTorch's within the parity tolerances the export stage holds (float32
both; tests/test_onnxrt.py).
"""

from __future__ import annotations

import contextlib
import io
import sys
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from cxr_transfer.core.errors import CxrError, first_line


class _Graph(nn.Module):
    """uint8 (B,1,S,S) -> the model's logits (or what `upto` receives, flattened)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", -(torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(torch.addcmul(self.shift, x.float(), self.scale))
        return out.flatten(1)


@contextlib.contextmanager
def _cut_at(model: nn.Module, upto: nn.Module | None) -> Iterator[None]:
    """`upto` replaced by an identity while the graph is traced: the model then returns its input."""
    if upto is None:
        yield
        return
    name = next(n for n, m in model.named_modules() if m is upto)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    try:
        yield
    finally:
        setattr(parent, attr, upto)


def _undo_dedup(graph_bytes: bytes, names: set[str]):
    """The exporter stores equal tensors once and reads the others through Identity nodes; give
    every weight its own named initializer again, so each can be replaced by name."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(graph_bytes)
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for node in g.node:
        src, dst = (node.input[0], node.output[0]) if node.op_type == "Identity" else (None, None)
        if src in inits and dst in names and dst not in inits:
            copy = g.initializer.add()  # a message in the graph (append would store a copy of it)
            copy.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[src]), dst))
            inits[dst] = copy
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return proto, {n: inits[n] for n in inits if n in names}


class OnnxForward:
    """uint8 batch (B,1,S,S) -> float32 logits (or features, with `upto`), through ONNX Runtime,
    always on the model's current weights."""

    def __init__(self, model: nn.Module, mean, std, size: int, upto: nn.Module | None = None):
        graph = _Graph(model, mean, std)
        self.model = weakref.ref(model)  # the cache entry must not keep its own key alive
        self.norm = {n: b for n, b in graph.named_buffers() if not n.startswith("model.")}
        was = model.training
        model.eval()
        buf = io.BytesIO()
        try:
            with _cut_at(model, upto), torch.no_grad(), _quiet():
                torch.onnx.export(
                    graph,
                    (torch.zeros(2, 1, size, size, dtype=torch.uint8),),
                    buf,
                    dynamo=False,
                    opset_version=17,
                    do_constant_folding=False,  # ONNX Runtime folds; no weight may be baked into another
                    input_names=["image"],
                    output_names=["out"],
                    dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}},
                )
        except Exception as e:  # noqa: BLE001 - any exporter failure: the caller stays in PyTorch
            raise CxrError(f"in-memory ONNX export failed ({first_line(e)})") from None
        finally:
            model.train(was)
        tensors = self._state()
        self.proto, self.inits = _undo_dedup(buf.getvalue(), set(tensors))
        self.names = list(self.inits)
        skipped = set(upto.state_dict(prefix=_prefix(model, upto))) if upto is not None else set()
        missing = [
            n
            for n, t in tensors.items()
            if t.is_floating_point() and n not in self.names and n not in skipped
        ]
        if missing:  # a weight the graph does not read by name could not follow training
            raise CxrError(
                f"in-memory ONNX export: {len(missing)} weights not addressable (e.g. {missing[0]})"
            )
        self._session = None
        self._key = self._seen = None
        self.sessions = 0  # sessions made (tests and the bench read it)

    def _state(self) -> dict[str, torch.Tensor]:
        """The graph's tensors by name: the model's (prefixed as the export named them) and the
        normaliser's."""
        sd = self.model().state_dict(prefix="model.", keep_vars=True)
        return {**sd, **self.norm}

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        sd = self._state()
        return [(n, sd[n]) for n in self.names]

    def session(self):
        """The session on the current weights: a new one when any weight changed (in place, or
        replaced) since the last. Parameters are keyed by storage and version counter; buffers
        (BatchNorm's statistics) by value, since a train-mode forward updates them in place without
        moving their version counter (tests/test_onnxrt.py)."""
        tensors = self._tensors()
        params = {id(q) for q in self.model().parameters()}
        key = tuple((t.data_ptr(), t._version) for _, t in tensors if id(t) in params)
        buffers = [t for _, t in tensors if id(t) not in params]
        stale = self._seen is None or any(
            not torch.equal(a, b) for a, b in zip(buffers, self._seen, strict=True)
        )
        if key != self._key or stale:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            opts.intra_op_num_threads = torch.get_num_threads()  # the share the process was given
            opts.inter_op_num_threads = 1
            for name, t in tensors:
                init = self.inits[name]
                init.ClearField("float_data")
                init.ClearField("int64_data")
                init.raw_data = t.detach().cpu().contiguous().numpy().tobytes()
            graph = self.proto.SerializeToString()
            self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
            self._key, self._seen = key, [t.detach().clone() for t in buffers]
            self.sessions += 1
        return self._session

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        sess = self.session()
        x = np.ascontiguousarray(xb.cpu().numpy())
        return torch.from_numpy(sess.run(None, {"image": x})[0])


def _prefix(model: nn.Module, sub: nn.Module) -> str:
    name = next(n for n, m in model.named_modules() if m is sub)
    return f"model.{name}."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings and, where it fails, the whole TorchScript graph it prints to the
    process's stderr from C++: the caller's one line says what failed."""
    import os
    import warnings

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def started() -> bool:
    """Whether this process has exported a model (the exporter's start is paid)."""
    return any(f is not None for per_model in _CACHE.values() for f in per_model.values())


def _key(mean, std, size: int, upto: nn.Module | None) -> tuple:
    return (size, id(upto) if upto is not None else None, tuple(mean), tuple(std))


def exported(model: nn.Module, mean, std, size: int, upto: nn.Module | None = None) -> bool | None:
    """True when this process holds the model's graph for these inputs, False when not yet, None
    when its export failed here (the passes then stay in PyTorch)."""
    got = _CACHE.get(model, {}).get(_key(mean, std, size, upto), False)
    return got if got is None else got is not False


def onnx_forward(model: nn.Module, mean, std, size: int, upto: nn.Module | None = None) -> OnnxForward | None:
    """The model's ONNX Runtime forward at `size` (to `upto`'s input, or to the logits), exported
    once per process and model and then kept: later calls reuse the graph. None, with one line on
    stderr, where the export fails (the caller runs PyTorch)."""
    per_model = _CACHE.setdefault(model, {})
    key = _key(mean, std, size, upto)
    if key not in per_model:
        try:
            per_model[key] = OnnxForward(model, mean, std, size, upto)
        except CxrError as e:
            print(f"note: {e}; this model's inference stays in PyTorch", file=sys.stderr)
            per_model[key] = None
    return per_model[key]
