"""Stage processes forked from a warm one (opt in: CXR_WARM=1), so that a stage starts with torch,
timm and the project already imported.

Every stage is a fresh `python -m stages.<name>` process under DVC, and a stage that builds a
network spends 2-3 s importing torch, torchvision, timm and scikit-learn before its work (the
demo runs 15 such stages). With CXR_WARM=1 the first stage starts a server in the background that
imports them once and waits on a Unix socket; a stage that imports none of them (stages/__init__.py
lists them: check_params, synthesize, index, split, prepare, external) does not wait for a server
still importing, it runs in its own process meanwhile; every other stage's process (the client),
and every stage once the server listens, connects, hands
over its arguments, environment, working folder and its standard streams (the file descriptors
themselves, so DVC reads the output as before), and the server forks a child that runs the
stage's module as `__main__` (runpy, as `python -m` does). The client waits for the child's exit
status and exits with it (or dies of its signal); INT, TERM, HUP, QUIT, USR1 and USR2 sent to the
client are passed on to the child's process group, and a client that dies without passing one on
(SIGKILL) takes the child with it.

The server is used only where a child behaves as a fresh process would:
- its key is the interpreter, the working folder, the umask and CPU affinity, every environment
  variable but DVC's own (they change per stage) and the modification time and size of every .py
  file of the project's two packages and of the site-packages folders themselves: an edited file
  or another environment gets a new server (the old one leaves after SERVER_IDLE seconds idle);
- it forks as PyTorch's DataLoader forks its workers, after the imports: no Python thread but
  the main one (fork copies the calling thread alone), the libraries' idle native pools (OpenBLAS
  re-creates its own after a fork), and no torch code run (no OpenMP pool, no CUDA context); the
  child reseeds Python's and NumPy's global generators, as a new process seeds them;
- the socket lives in a folder only this user can enter ($XDG_RUNTIME_DIR, else the temporary
  folder), and the server serves only its own user's processes and only `stages.<name>` modules;
- the client forwards only `python -m stages.<name>` on Linux, outside torchrun; in every other
  case, when the server cannot start, or when a request fails before the fork, the stage runs in
  its own process as it always did.
What is not the same: the hash seed (PYTHONHASHSEED) and resource limits are the server's, and
warnings printed while modules are imported appear only in the first, cold, process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "CXR_WARM"
MODULE = "cxr_transfer.core.warm"  # the server runs as python -m MODULE <socket>
SERVER_IDLE = 120.0  # seconds without a request and no stage running before the server exits
START_WAIT = 60.0  # seconds a stage that imports torch waits for a server starting
RETRY_FAILED = 600.0  # seconds after which a server that could not start is tried again
LOCK_TRIES = 10  # a starting server's tries (10 ms apart) at its key's lock
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
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
in_child = False  # True in a child of the server: its stage runs here, never forwarded again
_lock_fd = None  # the server's descriptor of its key's lock (closed in each child)
_spawned = None  # the client's Popen of the server it started (kept: it outlives the client)
STAGES = "stages"  # the stage scripts' package (this module only names it: it imports none of them)


def wanted() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def stage_of_argv(orig_argv: list[str]) -> str | None:
    """`stages.<name>` when the interpreter was started as `python -m stages.<name> ...` (and
    nothing else: no other interpreter option), else None."""
    if len(orig_argv) >= 3 and orig_argv[1] == "-m" and _is_stage(orig_argv[2]):
        return orig_argv[2]
    return None


def _is_stage(module) -> bool:
    parts = module.split(".") if isinstance(module, str) else []
    return len(parts) == 2 and parts[0] == STAGES and parts[1].isidentifier()


def package_dirs() -> list[Path]:
    """The folders of the project's two packages, wherever they are imported from."""
    here = Path(__file__).resolve().parent.parent  # cxr_transfer/
    stages = sys.modules.get(STAGES)
    return [here, Path(stages.__file__).resolve().parent if stages else here.parent / STAGES]


def key(cwd: Path, packages: list[Path]) -> str:
    """What a stage's process depends on beyond its arguments (module docstring)."""
    files = []
    for folder in packages:
        for path in sorted(folder.rglob("*.py")):
            st = path.stat()
            files.append((str(path), st.st_mtime_ns, st.st_size))
    paths = [p for p in sys.path[1:] if p and os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    umask = os.umask(0o022)
    os.umask(umask)
    blob = json.dumps(
        [
            sys.executable,
            sys.version,
            str(cwd),
            umask,
            sorted(os.sched_getaffinity(0)),
            sorted(env.items()),
            files,
            [(p, os.stat(p).st_mtime_ns) for p in paths],
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def socket_dir() -> Path | None:
    """This user's folder for the sockets, made if missing; None unless it is a real folder that
    this user owns and nobody else may enter (a shared /tmp: someone may have made it first)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = Path(runtime) if runtime and os.path.isdir(runtime) else Path(tempfile.gettempdir())
    folder = base / f"cxr-warm-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return folder


# ---------------------------------------------------------------------------------------------
# the client


def forward_if_warm(light: frozenset[str] = frozenset()) -> None:
    """Called by `stages/__init__.py` before any stage module is imported: with CXR_WARM set,
    run this stage in a child of the warm server and exit with its status; return to run it here
    when that is not possible (module docstring). A `light` stage (by name) returns to run here at
    once where no server listens yet, after making sure one is starting."""
    if in_child or not wanted() or sys.platform != "linux" or "TORCHELASTIC_RUN_ID" in os.environ:
        return
    module = stage_of_argv(sys.orig_argv)
    if module is None:
        return
    cwd = Path.cwd()
    try:
        folder = socket_dir()
        if folder is None:
            return
        path = folder / f"{key(cwd, package_dirs())}.sock"
        failed = path.with_suffix(".failed")
        if failed.exists() and time.time() - failed.stat().st_mtime < RETRY_FAILED:
            return  # this key's server could not start a moment ago: run here
    except OSError:
        return
    if len(os.fsencode(path)) > 100:  # a Unix socket's path holds at most 107 bytes
        return
    code = _ask(path, module, sys.orig_argv[3:], cwd)
    if code is None and _start_server(path, cwd, wait=module.split(".")[1] not in light):
        code = _ask(path, module, sys.orig_argv[3:], cwd)
    if code is None:
        return
    if code < 0:  # the child died of a signal: so does this process
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP keep their action
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


def _ask(path: Path, module: str, args: list[str], cwd: Path) -> int | None:
    """The exit status of the stage run by the server, or None when no server took it."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        request = json.dumps({"module": module, "args": args, "cwd": str(cwd), "env": dict(os.environ)})
        socket.send_fds(conn, [struct.pack("!Q", len(request.encode()))], [0, 1, 2])
        conn.sendall(request.encode())
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

    for s in FORWARDED:
        signal.signal(s, forward)
    status = _read_int(conn)
    conn.close()
    if status is None:  # the server died: the stage must not outlive this process
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        print(
            f"{module}: error: the warm server ended during the stage; rerun without {ENV}", file=sys.stderr
        )
        return 1
    return os.waitstatus_to_exitcode(status)


def _read_int(conn: socket.socket) -> int | None:
    data = b""
    while len(data) < 8:
        try:
            chunk = conn.recv(8 - len(data))
        except InterruptedError:
            continue
        if not chunk:
            return None
        data += chunk
    return struct.unpack("!q", data)[0]


def _start_server(path: Path, cwd: Path, wait: bool = True) -> bool:
    """Start the server in the background (its own session, no terminal, streams closed) unless
    one holds the key's lock already (starting or serving); with `wait`, wait until it listens
    (about 4 s on 2 cores: the imports a cold stage would pay itself), starting one if the lock
    comes free first (a server that ended as this waited). False where it did not wait, where
    the one it started ended, or after START_WAIT seconds."""
    global _spawned
    deadline = time.monotonic() + START_WAIT
    while True:
        if _spawned is None and not _locked(path):
            try:
                _spawned = subprocess.Popen(
                    [sys.executable, "-m", MODULE, str(path)],
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError:
                return False
        if not wait or time.monotonic() > deadline:
            return False
        if _alive(path):
            return True
        if _spawned is not None and _spawned.poll() is not None and not _locked(path):
            return False  # ours ended (failed, or gave way to another that ended too)
        time.sleep(0.05)


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file of `path`'s key (made if missing)."""
    return os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _locked(path: Path) -> bool:
    """Whether a server holds the lock of `path`'s key: it takes it before its imports and holds
    it until it exits. Testing takes a shared lock for a moment (tests never block each other; a
    server starting meanwhile tries again)."""
    try:
        fd = _open_lock(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock where this took it
    return False


def _take_lock(path: Path) -> int | None:
    """The server's hold on its key: the lock's descriptor, or None where another server holds
    it (a client testing it holds it for microseconds: retried for LOCK_TRIES x 10 ms)."""
    fd = _open_lock(path)
    for _ in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            time.sleep(0.01)
    os.close(fd)
    return None


# ---------------------------------------------------------------------------------------------
# the server


def serve(path: Path) -> None:
    """Import what stages import, then fork a child per request until SERVER_IDLE seconds pass
    with no request and no stage running. Exits at once where another server holds `path`; where
    the imports fail or leave a Python thread running, writes `<path>.failed` (the clients then
    run cold for RETRY_FAILED seconds) and exits."""
    import threading

    global _lock_fd
    try:
        _lock_fd = _take_lock(path)
    except OSError as e:  # no lock, no server: the clients run cold
        _failed(path, f"the lock: {e}")
        return
    if _lock_fd is None:  # another server starts or serves this key
        return
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
    mine = os.stat(path).st_ino
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop_servers: the socket file goes too
    try:
        _loop(listener, path.with_suffix(".log"))
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == mine:  # not another server's, bound after ours
                path.unlink()
        os.close(_lock_fd)  # now, not after the interpreter's teardown: a new server may start


def _loop(listener: socket.socket, log: Path) -> None:
    """One thread, one selector: new requests, the children running (a pidfd each: readable when
    the child ends) and their clients (readable only when gone). Several stages may run at once
    (two dvc repro in one folder, a stage run by hand beside one); with no child running and no
    request for SERVER_IDLE seconds, return."""
    sel = selectors.EpollSelector()  # Linux only, as the server is: fileno() for the child to close
    sel.register(listener, selectors.EVENT_READ, ("listener",))
    running = 0
    while True:
        events = sel.select(None if running else SERVER_IDLE)
        if not events and not running:
            return
        for k, _ in events:
            what = k.data[0]
            if what == "listener":
                with contextlib.suppress(OSError):
                    conn, _ = listener.accept()
                    started = _start_child(conn, sel)
                    if started is None:
                        conn.close()
                        continue
                    pid, pidfd, module, cwd = started
                    sel.register(
                        pidfd, selectors.EVENT_READ, ("child", pid, conn, module, cwd, time.perf_counter())
                    )
                    sel.register(conn, selectors.EVENT_READ, ("client", pid))
                    running += 1
            elif what == "client":  # the client sends nothing after its request: readable = gone
                with contextlib.suppress(OSError):
                    os.killpg(k.data[1], signal.SIGKILL)  # SIGKILL cannot be passed on: do it here
                with contextlib.suppress(KeyError, ValueError):  # its child may have ended first
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
    given); Linux /proc. Servers lead their own session, their running stages do not: those are
    left alone. Returns how many were sent SIGTERM."""
    n = 0
    for proc in Path("/proc").iterdir():
        try:
            pid = int(proc.name)
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            ours = sockets is None or cmd[3].decode().startswith(f"{sockets}{os.sep}")
            server = cmd[1:3] == [b"-m", MODULE.encode()] and os.getsid(pid) == pid
            if server and ours and os.readlink(proc / "cwd") == str(root):
                os.kill(pid, signal.SIGTERM)
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


def _read_request(conn: socket.socket) -> tuple[dict, list[int]] | None:
    """A client's request and its three descriptors; None (descriptors closed) for a probe
    (_alive), another user's process, or anything but `stages.<name>` with its fields."""
    conn.settimeout(30.0)
    fds: list[int] = []
    try:
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        head, fds, _flags, _addr = socket.recv_fds(conn, 8, 3)
        if uid != os.getuid() or len(head) != 8 or len(fds) != 3:
            raise ValueError("not a request of this user's")
        (size,) = struct.unpack("!Q", head)
        body = b""
        while len(body) < size:
            chunk = conn.recv(min(1 << 20, size - len(body)))
            if not chunk:
                raise ValueError("short request")
            body += chunk
        req = json.loads(body)
        ok = (
            _is_stage(req.get("module"))
            and isinstance(req.get("args"), list)
            and all(isinstance(a, str) for a in req["args"])
            and isinstance(req.get("cwd"), str)
            and isinstance(req.get("env"), dict)
        )
        if not ok:
            raise ValueError("not a stage's request")
        return req, fds
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!q", -1))
        return None


def _start_child(conn: socket.socket, sel: selectors.EpollSelector) -> tuple[int, int, str, str] | None:
    """Read a request and fork its child: (pid, its pidfd, module, folder); None when there is
    no child (the client then runs the stage itself, or has been told its status)."""
    got = _read_request(conn)
    if got is None:
        return None
    req, fds = got
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # none lands before the child's reset
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        inherited = [*(k.fd for k in sel.get_map().values()), sel.fileno(), conn.fileno()]
        inherited += [] if _lock_fd is None else [_lock_fd]
        _child(req, fds, inherited, blocked)  # never returns
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    for fd in fds:
        os.close(fd)
    if pid < 0:
        with contextlib.suppress(OSError):
            conn.sendall(struct.pack("!q", -1))
        return None
    with contextlib.suppress(OSError):  # its own process group (the child sets it too: no race)
        os.setpgid(pid, pid)
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


def _child(req: dict, fds: list[int], inherited: list[int], blocked) -> None:
    """Become the stage's process: its streams, folder, environment and arguments, then run its
    module as __main__; the exit status is the process's (an int as Python's, & 0xFF); 1 where
    the child could not become the stage's process (its folder gone, say)."""
    code = 1
    try:
        import random
        import runpy
        import traceback

        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler is not the stage's
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in inherited:  # the server's listener, other stages' clients and pidfds
            with contextlib.suppress(OSError):
                os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.setpgid(0, 0)  # its own process group: the client's signals reach its children too
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
            stream.reconfigure(line_buffering=stream is sys.stderr or os.isatty(fd))
        random.seed()  # a new process's global generators are seeded afresh, not the server's
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        sys.modules[MODULE].in_child = True  # stages/__init__.py's forward_if_warm: run here
        module = req["module"]
        sys.orig_argv = [sys.executable, "-m", module, *req["args"]]
        sys.argv = [module, *req["args"]]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code & 0xFF
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:  # Ctrl-C passed on: end by SIGINT, as Python's own exit does
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        _finish()
    except BaseException as e:  # before the stage ran: its folder gone, a descriptor refused
        with contextlib.suppress(Exception):
            print(
                f"{req.get('module')}: error: the warm server could not run it ({e}); rerun without {ENV}",
                file=sys.stderr,
            )
    finally:
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code if code >= 0 else 128 - code)


def _finish() -> None:
    """What the interpreter's exit does before its teardown: wait for non-daemon threads, then
    cli's run_exit_handlers (atexit, Python's and C's streams)."""
    import threading

    from cxr_transfer.core.cli import run_exit_handlers

    with contextlib.suppress(Exception):
        threading._shutdown()
    run_exit_handlers()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
