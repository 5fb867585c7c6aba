"""What every stage script shares: a clean one-line error instead of a traceback."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from cxr_transfer.core.errors import CxrError
from cxr_transfer.core.profile import phase, profiled


def run(main: Callable[[], None], stage: str) -> None:
    """Call a stage's main(); expected failures print `stage: error: ...` and exit 2. A stage
    script's main that returns ends its process at once (`exit_finished`)."""
    try:
        profiled(stage, main)
    except (CxrError, FileNotFoundError) as e:
        print(f"{stage}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if _started_as(main):
        exit_finished()


def _started_as(main: Callable[[], None]) -> bool:
    """`main` is the entry point of the program the interpreter was started with (`python -m
    stages.<name>` or `python <script>`), not of a module run inside another program (runpy in a
    tracer, a test calling it): only then may the process end with it."""
    mod = sys.modules.get("__main__")
    if getattr(mod, "main", None) is not main:
        return False
    args, spec = sys.orig_argv[1:], getattr(mod, "__spec__", None)
    if spec is not None:  # python [options] -m <name>
        return any(a == "-m" and b == spec.name for a, b in zip(args, args[1:], strict=False))
    path = os.path.abspath(getattr(mod, "__file__", "") or "")
    return any(os.path.abspath(a) == path for a in args if not a.startswith("-"))


def exit_finished() -> None:
    """End a process whose work is done without the interpreter's finalisation: the atexit
    handlers run (child processes joined, temporary folders removed, logs flushed), the standard
    streams are flushed, then os._exit(0). The finalisation it skips (tearing down every module
    and C++ extension) takes 0.4-0.5 s in a process that imported torch and timm, about 7 s of the
    demo's 15 such stages. With another non-daemon thread still running, the process exits the
    usual way (that thread is waited for)."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    run_exit_handlers()
    os._exit(0)


def run_exit_handlers() -> None:
    """What the interpreter's exit does before its teardown: the atexit handlers, then Python's
    and C's standard streams flushed (what C extensions wrote through C's stdio buffers)."""
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, so a
    kill or an error mid-write leaves the old file (or none), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same suffix: writers that pick a format by it (or append theirs, as np.save) keep working
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # what open() would give, not mkstemp's 0600
    try:
        with phase("write"):
            yield Path(tmp)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically, creating the folder."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(df, path: Path) -> None:
    """A data frame as CSV (no index column) atomically, creating the folder."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_json(path: Path, obj) -> None:
    """Pretty JSON with a trailing newline, creating the folder; atomic."""
    write_text(path, json.dumps(obj, indent=2) + "\n")
