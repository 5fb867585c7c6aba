"""Where a stage process's time goes, when the environment variable CXR_PROFILE names a file,
appended to that file as one JSON line per process (off, and free, otherwise):

- import: from the interpreter's start to main(), and every module main() loads (the import
  system's own loads only: an `import` of a module already loaded costs nothing and is not seen);
- load: the blocks marked `phase("load")`: opening the prepared stores (memory-mapped: the pages
  are read later, in work), reading checkpoints and ImageNet weights;
- write: the blocks of the atomic writers every output goes through (cxr_transfer.core.cli:
  whatever runs inside them, e.g. serialising a checkpoint, or the ONNX export into its file);
- work: the rest of main().

Only the main thread's time is counted (a prefetch thread's imports are not). Under torchrun only
rank 0 writes its line (the other ranks leave with os._exit). The bench's demo cases set it and
join each line to DVC's stage of the same order; what a stage's time holds beyond its line
(DVC's hashing and lock file, the interpreter's shutdown, torchrun's launcher) is DVC's share there."""

from __future__ import annotations

import contextlib
import importlib._bootstrap as bootstrap
import json
import os
import sys
import threading
import time
from collections.abc import Iterator

ENV = "CXR_PROFILE"
PHASES = ("import", "load", "work", "write")

_spent = dict.fromkeys(PHASES, 0.0)
_stack: list[list] = []  # [phase, start, seconds spent in phases nested inside]


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Count the block's time under `name` (nested phases count only in the innermost one; a
    phase inside the same phase, as an import an import triggers, counts once)."""
    if not _stack or name == _stack[-1][0] or threading.current_thread() is not threading.main_thread():
        yield
        return
    frame = [name, time.perf_counter(), 0.0]
    _stack.append(frame)
    try:
        yield
    finally:
        _stack.pop()
        total = time.perf_counter() - frame[1]
        _spent[name] += total - frame[2]
        _stack[-1][2] += total


def _since_process_start() -> float:
    """Seconds since this process started (Linux: its start time in clock ticks since boot)."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def _timed_load(real):
    def _find_and_load(*args, **kwargs):
        with phase("import"):
            return real(*args, **kwargs)

    return _find_and_load


def profiled(stage: str, main) -> None:
    """Run main() and append its phases to $CXR_PROFILE (nothing is measured when it is unset)."""
    if not enabled():
        main()
        return
    before = _since_process_start()  # the interpreter's start and the stage module's imports
    _spent.update(dict.fromkeys(PHASES, 0.0))
    real = bootstrap._find_and_load  # called by every import of a module not yet loaded
    bootstrap._find_and_load = _timed_load(real)
    _stack[:] = [["work", time.perf_counter(), 0.0]]
    try:
        main()
    finally:
        bootstrap._find_and_load = real
        frame = _stack.pop()
        total = time.perf_counter() - frame[1]
        _spent["work"] += total - frame[2]
        _spent["import"] += before
        line = {"stage": stage, "argv": sys.argv[1:], "rank": int(os.environ.get("RANK", 0))}
        line["seconds"] = round(before + total, 3)
        line.update({k: round(v, 3) for k, v in _spent.items()})
        with contextlib.suppress(OSError), open(os.environ[ENV], "a") as f:  # never fails the stage
            f.write(json.dumps(line) + "\n")
