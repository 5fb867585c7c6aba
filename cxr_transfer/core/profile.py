"""Where a stage process's time goes, when the environment variable CXR_PROFILE names a file:
import (from the interpreter's start to main(), and every import main() triggers), load (reading
the stores, checkpoints and weights), write (the atomic writers every output goes through) and
work (the rest), appended to that file as one JSON line per process. Off (and free) otherwise.

The bench's demo cases set it and join each line to DVC's stage of the same order."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sys
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
    if not _stack or name == _stack[-1][0] or not enabled():
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


def _timed_import(real):
    def __import__(*args, **kwargs):
        with phase("import"):
            return real(*args, **kwargs)

    return __import__


def profiled(stage: str, main) -> None:
    """Run main() and append its phases to $CXR_PROFILE (nothing is measured when it is unset)."""
    if not enabled():
        main()
        return
    before = _since_process_start()  # the interpreter's start and the stage module's imports
    real = builtins.__import__
    builtins.__import__ = _timed_import(real)
    _stack.append(["work", time.perf_counter(), 0.0])
    try:
        main()
    finally:
        builtins.__import__ = real
        frame = _stack.pop()
        total = time.perf_counter() - frame[1]
        _spent["work"] += total - frame[2]
        _spent["import"] += before
        line = {"stage": stage, "argv": sys.argv[1:], "seconds": round(before + total, 3)}
        line.update({k: round(v, 3) for k, v in _spent.items()})
        with open(os.environ[ENV], "a") as f:
            f.write(json.dumps(line) + "\n")
