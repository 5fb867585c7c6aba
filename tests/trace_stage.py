"""Run one stage module with its inputs traced, for the declared-dependency test.

    python tests/trace_stage.py OUT.json stages.train --arch ... (the stage's own arguments)

Records, into OUT.json: every params key the stage reads (params objects are tagged with their
path and record attribute and item reads), every file it opens for reading and every folder it
lists (Python audit hooks: `open`, `os.scandir`, `os.listdir`), every project module it imports,
and its exit code. tests/test_pipeline.py compares that with what dvc.lock says the stage uses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import runpy
import sys

READ_KEYS: set[str] = set()
OPENED: set[str] = set()
LISTED: set[str] = set()


def _audit(event: str, args) -> None:
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        writing = any(c in (mode or "") for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR))
        if not writing:
            _record(OPENED, path)
    elif event in ("os.scandir", "os.listdir") and args and isinstance(args[0], str | bytes | os.PathLike):
        _record(LISTED, args[0])


def _record(into: set, path) -> None:
    # a relative name given with dir_fd (glob does this) is not relative to the working folder:
    # keep only paths that exist as resolved, which is what a stage's own paths do
    full = os.path.abspath(os.fsdecode(path))
    if os.path.exists(full):
        into.add(full)


class TracedDict(dict):
    """A params mapping that records `path.key` on item reads and `path` on whole-dict reads."""

    def __init__(self, path: str, items: dict):
        super().__init__(items)
        self._path = path

    def _leaf(self, key, value):
        if not dataclasses.is_dataclass(value):
            READ_KEYS.add(f"{self._path}.{key}")
        return value

    def __getitem__(self, key):
        return self._leaf(key, super().__getitem__(key))

    def get(self, key, default=None):
        return self._leaf(key, super().get(key, default)) if key in self else default

    def _whole(self):
        READ_KEYS.add(self._path)

    def __iter__(self):
        self._whole()
        return super().__iter__()

    def keys(self):
        self._whole()
        return super().keys()

    def items(self):
        self._whole()
        return super().items()

    def values(self):
        self._whole()
        return super().values()

    def __len__(self):
        self._whole()
        return super().__len__()


def _tag(obj, path: str) -> None:
    object.__setattr__(obj, "_trace_path", path)
    for f in dataclasses.fields(obj):
        value = object.__getattribute__(obj, f.name)
        key = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            _tag(value, key)
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    _tag(v, f"{key}.{k}")
            object.__setattr__(obj, f.name, TracedDict(key, value))


def _recording_getattribute(self, name):
    value = object.__getattribute__(self, name)
    fields = object.__getattribute__(self, "__dataclass_fields__")
    path = object.__getattribute__(self, "__dict__").get("_trace_path")
    leaf = not dataclasses.is_dataclass(value) and not isinstance(value, TracedDict)
    if path is not None and name in fields and leaf:
        READ_KEYS.add(f"{path}.{name}" if path else name)
    return value


def main() -> None:
    out, module, *argv = sys.argv[1:]
    sys.path.insert(0, os.getcwd())
    import cxr_transfer.core.params as P

    for obj in vars(P).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == P.__name__:
            obj.__getattribute__ = _recording_getattribute
    original = P.load_params

    def traced_load(path="params.yaml"):
        params = original(path)
        _tag(params, "")
        return params

    P.load_params = traced_load
    sys.addaudithook(_audit)
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    cwd = os.getcwd()
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    files.add(importlib.util.find_spec(module).origin)  # the stage itself ran as __main__
    # torch's op namespaces are module objects whose __file__ is a bare name ("_ops.py"): not files
    modules = sorted(
        os.path.relpath(f, cwd) for f in files if f and os.path.isabs(f) and f.startswith(cwd + os.sep)
    )
    with open(out, "w") as f:
        json.dump(
            {
                "params": sorted(READ_KEYS),
                "opened": sorted(OPENED),
                "listed": sorted(LISTED),
                "modules": modules,
                "exit": code,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
