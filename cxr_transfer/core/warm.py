"""Stage processes forked from a warm one (opt in: CXR_WARM=1), so that a stage starts with torch,
timm and the project already imported.

Every stage is a fresh `python -m stages.<name>` process under DVC, and a stage that builds a
network spends 2-3 s importing torch, torchvision, timm and scikit-learn before its work (the
demo runs 15 such stages). With CXR_WARM=1 the first stage starts a server in the background that
imports them once and waits on a Unix socket; each later stage's process (the client) connects,
hands over its arguments, environment, working folder and its standard streams (the file
descriptors themselves, so DVC reads the output as before), and the server forks a child that
runs the stage's module as `__main__` (runpy, as `python -m` does). The client waits for the
child's exit status and exits with it; Ctrl-C or a kill of the client is passed on to the child.

The server is only used where it cannot differ from a fresh process:
- its key is the interpreter, the project folder, every environment variable but DVC's own (they
  change per stage) and the modification time and size of every .py file of the project and of
  the site-packages folders: an edited file or another environment gets a new server (the old one
  leaves after SERVER_IDLE seconds without a request);
- it forks as PyTorch's DataLoader forks its workers, after the imports: no Python thread but
  the main one (fork copies the calling thread alone), the libraries' idle native pools (OpenBLAS
  re-creates its own after a fork), and no torch code run (no OpenMP pool, no CUDA context);
- the client forwards only `python -m stages.<name>` on Linux, outside torchrun; in every other
  case, when no server answers (the first stage starts one and runs as usual), or when the
  request fails before the fork, the stage runs in its own process as it always did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "CXR_WARM"
MODULE = "cxr_transfer.core.warm"  # the server runs as python -m MODULE <socket>
SERVER_IDLE = 120.0  # seconds without a request before the server exits
START_WAIT = 60.0  # seconds the first stage waits for the server it started
PRELOAD = (  # what stages import inside functions, beside what their modules import at the top
    "torch",
    "torchvision",
    "timm",
    "sklearn.metrics",
    "sklearn.linear_model",
    "scipy.stats",
    "onnx",
    "onnxruntime",
)
in_child = False  # True in a child of the server: its stage runs here, never forwarded again
STAGES = "stages"  # the stage scripts' package (this module only names it: it imports none of them)


def wanted() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def stage_of_argv(orig_argv: list[str]) -> str | None:
    """`stages.<name>` when the interpreter was started as `python -m stages.<name> ...` (and
    nothing else: no other interpreter option), else None."""
    if len(orig_argv) >= 3 and orig_argv[1] == "-m" and orig_argv[2].startswith(STAGES + "."):
        return orig_argv[2]
    return None


def key(root: Path) -> str:
    """What a stage's process depends on beyond its arguments (module docstring)."""
    files = []
    for folder in ("cxr_transfer", STAGES):
        for path in sorted((root / folder).rglob("*.py")):
            st = path.stat()
            files.append((str(path.relative_to(root)), st.st_mtime_ns, st.st_size))
    paths = [p for p in sys.path[1:] if p and os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    blob = json.dumps(
        [
            sys.executable,
            sys.version,
            str(root),
            sorted(env.items()),
            files,
            [(p, os.stat(p).st_mtime_ns) for p in paths],
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def socket_path(k: str) -> Path:
    return Path(tempfile.gettempdir()) / f"cxr-warm-{os.getuid()}" / f"{k}.sock"


# ---------------------------------------------------------------------------------------------
# the client


def forward_if_warm() -> None:
    """Called by `stages/__init__.py` before any stage module is imported: with CXR_WARM set,
    run this stage in a child of the warm server and exit with its status; return to run it here
    when that is not possible (module docstring)."""
    if in_child or not wanted() or sys.platform != "linux" or "TORCHELASTIC_RUN_ID" in os.environ:
        return
    module = stage_of_argv(sys.orig_argv)
    if module is None:
        return
    root = Path.cwd()
    try:
        path = socket_path(key(root))
    except OSError:
        return
    if len(os.fsencode(path)) > 100:  # a Unix socket's path holds at most 107 bytes
        return
    if path.with_suffix(".failed").exists():  # this key's server could not start: run here
        return
    code = _ask(path, module, sys.orig_argv[3:], root)
    if code is None and _start_server(path, root):
        code = _ask(path, module, sys.orig_argv[3:], root)
    if code is not None and code < 0:  # the child died of a signal: so does this process
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    if code is not None:
        os._exit(code if code >= 0 else 128 - code)


def _ask(path: Path, module: str, args: list[str], root: Path) -> int | None:
    """The exit status of the stage run by the server, or None when no server took it."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        request = json.dumps(
            {"module": module, "args": args, "cwd": str(root), "env": dict(os.environ)}
        ).encode()
        socket.send_fds(conn, [struct.pack("!Q", len(request))], [0, 1, 2])
        conn.sendall(request)
        pid = _read_int(conn)
    except OSError:
        conn.close()
        return None
    if pid is None or pid <= 0:  # the server refused before forking: run here
        conn.close()
        return None

    def forward(signum, _frame):  # the child leads its own process group: its children get it too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)
    status = _read_int(conn)
    conn.close()
    if status is None:
        print(
            f"{module}: error: the warm server ended before the stage did; rerun without {ENV}",
            file=sys.stderr,
        )
        return 1
    return os.waitstatus_to_exitcode(status) if status >= 0 else 1


def _read_int(conn: socket.socket) -> int | None:
    data = b""
    while len(data) < 8:
        chunk = conn.recv(8 - len(data))
        if not chunk:
            return None
        data += chunk
    return struct.unpack("!q", data)[0]


def _start_server(path: Path, root: Path) -> bool:
    """Start the server in the background (its own session, no terminal, streams closed) and
    wait until it listens (about 4 s on 2 cores: the imports a cold stage would pay itself);
    False if it ended first or took over START_WAIT seconds."""
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        server = subprocess.Popen(
            [sys.executable, "-m", MODULE, str(path)],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        return False
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline and server.poll() is None:
        if _alive(path):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------
# the server


def serve(path: Path) -> None:
    """Import what stages import, then fork a child per request until SERVER_IDLE seconds pass
    without one. Exits at once where another server holds `path`; where the imports fail or leave
    a Python thread running, writes `<path>.failed` (the clients then run cold) and exits."""
    import threading

    try:
        _preload()
    except Exception as e:  # noqa: BLE001 - whatever stops the imports: the clients run cold
        _failed(path, f"{type(e).__name__}: {e}")
        return
    if threading.active_count() != 1:  # a Python thread's locks could be held at the fork
        _failed(path, f"{threading.active_count()} Python threads after the imports")
        return
    if not hasattr(os, "pidfd_open"):  # Linux 5.3 and Python 3.9: the loop waits on pidfds
        _failed(path, "os.pidfd_open is missing (Linux 5.3 or later)")
        return
    if _alive(path):
        return
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop_servers: the socket file goes too
    try:
        _loop(listener, path.with_suffix(".log"))
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _loop(listener: socket.socket, log: Path) -> None:
    """One thread, one selector: new requests, the children running (a pidfd each: readable when
    the child ends) and their clients (readable only when gone). Several stages may run at once
    (two dvc repro in one folder, a stage run by hand beside one); with no child running and no
    request for SERVER_IDLE seconds, return."""
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, ("listener",))
    running = 0
    while True:
        events = sel.select(None if running else SERVER_IDLE)
        if not events and not running:
            return
        for k, _ in events:
            what = k.data[0]
            if what == "listener":
                conn, _ = listener.accept()
                started = _start_child(conn, listener)
                if started is None:
                    conn.close()
                    continue
                pid, pidfd, module, cwd = started
                t0 = time.perf_counter()
                sel.register(pidfd, selectors.EVENT_READ, ("child", pid, conn, module, cwd, t0))
                sel.register(conn, selectors.EVENT_READ, ("client", pid))
                running += 1
            elif what == "client":  # the client sends nothing after its request: readable = gone
                with contextlib.suppress(OSError):
                    os.killpg(k.data[1], signal.SIGKILL)  # SIGKILL cannot be passed on: do it here
                sel.unregister(k.fileobj)
            else:
                _, pid, conn, module, cwd, t0 = k.data
                sel.unregister(k.fileobj)
                os.close(k.fd)
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(conn)
                status = os.waitpid(pid, 0)[1]
                running -= 1
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError), open(log, "a") as f:
                    f.write(f"{module} pid {pid} exit {code} {time.perf_counter() - t0:.2f} s {cwd}\n")
                with contextlib.suppress(OSError):  # the client is gone (killed): nobody to tell
                    conn.sendall(struct.pack("!q", status))
                conn.close()


def _preload() -> None:
    """Every module of this package (this one too: the child sets its in_child) and what its
    functions import when called."""
    import importlib
    import pkgutil

    import cxr_transfer

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for info in pkgutil.walk_packages(cxr_transfer.__path__, "cxr_transfer."):
        if not info.name.endswith(".__main__"):
            importlib.import_module(info.name)


def _failed(path: Path, why: str) -> None:
    with contextlib.suppress(OSError):
        path.with_suffix(".failed").write_text(why + "\n")


def stop_servers(root: Path, sockets: Path | None = None) -> int:
    """End every warm server whose folder is `root` (and whose socket is under `sockets`, if
    given); Linux /proc. Returns how many were sent SIGTERM."""
    n = 0
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            mine = sockets is None or cmd[3].decode().startswith(f"{sockets}{os.sep}")
            if cmd[1:3] == [b"-m", MODULE.encode()] and mine and os.readlink(proc / "cwd") == str(root):
                os.kill(int(proc.name), signal.SIGTERM)
                n += 1
        except (OSError, ValueError, IndexError):
            continue
    return n


def _alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _start_child(conn: socket.socket, listener: socket.socket) -> tuple[int, int, str, str] | None:
    """Read a request and fork its child: (pid, its pidfd, module, folder); None for a probe
    (_alive) or a broken request (the client then runs the stage itself)."""
    conn.settimeout(30.0)
    try:
        head, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
        if len(head) != 8 or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            raise OSError("bad request")
        (size,) = struct.unpack("!Q", head)
        body = b""
        while len(body) < size:
            chunk = conn.recv(min(1 << 20, size - len(body)))
            if not chunk:
                raise OSError("short request")
            body += chunk
        req = json.loads(body)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!q", -1))
        return None
    pid = os.fork()
    if pid == 0:
        listener.close()
        conn.close()
        _child(req, fds)  # never returns
    with contextlib.suppress(OSError):  # its own process group (the child sets it too: no race)
        os.setpgid(pid, pid)
    for fd in fds:
        os.close(fd)
    conn.settimeout(None)
    with contextlib.suppress(OSError):  # the client gone already: the child is still waited for
        conn.sendall(struct.pack("!q", pid))
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # no descriptor left: wait for this child here, then serve the next
        status = os.waitpid(pid, 0)[1]
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!q", status))
        return None
    return pid, pidfd, req["module"], req["cwd"]


def _child(req: dict, fds: list[int]) -> None:
    """Become the stage's process: its streams, folder, environment and arguments, then run its
    module as __main__; the exit status is the process's."""
    import runpy
    import traceback

    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler is not the stage's
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.setpgid(0, 0)  # its own process group: the client's signals reach its children too
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            stream.reconfigure(line_buffering=stream is sys.stderr or os.isatty(fd))
        sys.modules[MODULE].in_child = True  # stages/__init__.py's forward_if_warm: run here
        module = req["module"]
        sys.orig_argv = [sys.executable, "-m", module, *req["args"]]
        sys.argv = [module, *req["args"]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # Ctrl-C passed on: end by SIGINT, as Python's own exit does
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        import atexit
        import threading

        for t in threading.enumerate():  # as the interpreter's exit does: wait for non-daemon threads
            if t is not threading.current_thread() and not t.daemon:
                t.join()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
