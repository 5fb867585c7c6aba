"""Stages forked from a warm server (CXR_WARM=1): the same files, output and exit status as a
process of their own, and never a server whose code or environment differs from the stage's."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from cxr_transfer.core import warm
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the warm server is Linux-only")


def test_only_python_dash_m_stages_is_forwarded():
    assert warm.stage_of_argv(["python", "-m", "stages.train", "--run", "x"]) == "stages.train"
    assert warm.stage_of_argv(["python", "-X", "importtime", "-m", "stages.train"]) is None
    assert warm.stage_of_argv(["python", "-m", "bench", "--cases", "demo"]) is None
    assert warm.stage_of_argv(["python", "stages/train.py"]) is None


def test_the_key_follows_the_code_and_the_environment_but_not_dvc_s_variables(tmp_path, monkeypatch):
    packages = [tmp_path / "cxr_transfer", tmp_path / "stages"]
    for folder in packages:
        folder.mkdir()
        (folder / "a.py").write_text("x = 1\n")
    monkeypatch.setenv("DVC_STAGE", "one")
    base = warm.key(tmp_path, packages)
    monkeypatch.setenv("DVC_STAGE", "two")  # DVC's per-stage variables: the same server
    assert warm.key(tmp_path, packages) == base
    monkeypatch.setenv("KMP_AFFINITY", "compact")  # read at import by OpenMP: another server
    assert warm.key(tmp_path, packages) != base
    monkeypatch.delenv("KMP_AFFINITY")
    assert warm.key(tmp_path, packages) == base
    assert warm.key(tmp_path / "stages", packages) != base  # another working folder
    old = os.umask(0o077)
    try:
        assert warm.key(tmp_path, packages) != base  # files made with other modes
    finally:
        os.umask(old)
    f = tmp_path / "stages" / "a.py"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))  # an edited stage script
    assert warm.key(tmp_path, packages) != base


def test_the_socket_folder_must_be_this_user_s_alone(tmp_path, monkeypatch):
    """A folder someone else could enter (or made first in a shared /tmp) is not used."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = warm.socket_dir()
    assert folder == tmp_path / f"cxr-warm-{os.getuid()}" and (folder.stat().st_mode & 0o777) == 0o700
    folder.chmod(0o755)
    assert warm.socket_dir() is None
    folder.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    folder.symlink_to(tmp_path / "elsewhere")
    assert warm.socket_dir() is None


def test_one_server_at_a_time_holds_a_key_s_lock(tmp_path, monkeypatch):
    """A server takes its key's lock before its imports: a client sees it starting (and starts
    no second one), a second server of the key gives up; the lock goes with the server."""
    path = tmp_path / "key.sock"
    monkeypatch.setattr(warm, "_spawned", None)
    assert not warm._locked(path)
    held = warm._take_lock(path)
    assert held is not None and warm._locked(path)
    assert warm._take_lock(path) is None  # another server of this key: it ends at once
    started = []
    monkeypatch.setattr(warm.subprocess, "Popen", lambda *a, **k: started.append(a) or _Ended())
    warm._start_server(path, tmp_path, wait=False)
    assert started == []  # a client starts none while it is held
    os.close(held)
    assert not warm._locked(path)
    warm._start_server(path, tmp_path, wait=False)
    assert len(started) == 1  # free: the client starts one


class _Ended:
    """A server process that has ended."""

    def poll(self):
        return 0


def test_a_stage_waiting_for_a_server_that_ends_starts_one_and_gives_up_when_it_ends(tmp_path, monkeypatch):
    """A torch stage finds the lock held (a server starting, or one exiting after its idle time):
    it waits; when the lock comes free with nothing listening, it starts a server itself, and
    when that one ends without listening it stops waiting (the stage runs in its own process)."""
    import threading

    path = tmp_path / "key.sock"
    monkeypatch.setattr(warm, "_spawned", None)
    started = []
    monkeypatch.setattr(warm.subprocess, "Popen", lambda *a, **k: started.append(a) or _Ended())
    held = warm._take_lock(path)
    threading.Timer(0.3, os.close, (held,)).start()
    t0 = time.monotonic()
    assert warm._start_server(path, tmp_path, wait=True) is False
    assert 0.3 <= time.monotonic() - t0 < 5.0 and len(started) == 1


def _stage(args, env, cwd=ROOT, stage="check_params"):
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _listening(folder: Path, timeout: float = 60.0) -> bool:
    """Wait until a server listens on a socket in `folder`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(warm._alive(s) for s in folder.glob("*.sock")):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # a server that imports torch, timm and the project (about 5 s on 2 cores)
def test_a_stage_forked_from_the_warm_server_writes_prints_and_exits_as_a_process_of_its_own(tmp_path):
    """The first CXR_WARM=1 stage starts the server; a light one (check_params) runs in its own
    process meanwhile, a stage that imports torch (evaluate) waits for the server. Once it
    listens, every stage runs in a child of it (its log names them) and gives what a process of
    its own gives: the same output file and printed line, the same one-line error and exit status
    2 on bad params."""
    short = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))  # a socket's path has at most 107 bytes
    env = {
        **os.environ,
        "CXR_WARM": "1",
        "TMPDIR": str(short),
        "XDG_RUNTIME_DIR": str(short),
        "OMP_NUM_THREADS": "1",
    }
    cold_env = {**env, "CXR_WARM": "0"}
    bad = yaml.safe_load((ROOT / "params.yaml").read_text())
    bad["train"]["epochs"] = 0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    bad_args = ["--params", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "x")]
    try:
        folder = short / f"cxr-warm-{os.getuid()}"
        cold = _stage(["--out", str(tmp_path / "cold.ok")], cold_env)
        cold_help = _stage(["--help"], cold_env, stage="evaluate")
        assert not folder.exists()  # CXR_WARM=0: no server
        runs = [_stage(["--out", str(tmp_path / "warm0.ok")], env)]  # starts the server, runs here
        assert not list(folder.glob("*.log"))  # no child of the server has run
        (lock,) = folder.glob("*.lock")
        assert warm._locked(lock)  # the server it started holds its key's lock while it imports
        heavy = _stage(["--help"], env, stage="evaluate")  # waits for the server starting
        assert heavy.returncode == 0 and heavy.stdout == cold_help.stdout and "--eval-dir" in heavy.stdout
        runs += [_stage(["--out", str(tmp_path / f"warm{i}.ok")], env) for i in (1, 2)]  # it listens
        for i, r in enumerate(runs):
            assert r.returncode == 0, r.stderr
            assert (tmp_path / f"warm{i}.ok").read_text() == (tmp_path / "cold.ok").read_text()
            assert r.stdout == cold.stdout
        cold_bad, warm_bad = _stage(bad_args, cold_env), _stage(bad_args, env)
        assert cold_bad.returncode == warm_bad.returncode == 2
        assert warm_bad.stderr == cold_bad.stderr and "train.epochs" in warm_bad.stderr
        (log,) = folder.glob("*.log")
        lines = [line.split() for line in log.read_text().splitlines()]
        assert [(x[0], x[4]) for x in lines] == [
            ("stages.evaluate", "0"),
            *[("stages.check_params", c) for c in ("0", "0", "2")],
        ]
    finally:
        assert warm.stop_servers(ROOT, short) == 1
        shutil.rmtree(short)


@pytest.mark.slow  # the warm server's start, then two long stages killed a second into their work
def test_signals_and_sigkill_reach_the_forked_stage_and_other_stages_run_beside_it(tmp_path):
    """A stage runs while another one runs (the server waits on neither); SIGTERM to the client is
    passed on to the child's process group and the client dies of it, as a process of its own
    would; SIGKILL cannot be passed on: the server sees the client's connection close and kills
    the child's group (synthesize's worker processes included), so no stage outlives the process
    DVC started."""
    short = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    env = {
        **os.environ,
        "CXR_WARM": "1",
        "TMPDIR": str(short),
        "XDG_RUNTIME_DIR": str(short),
        "OMP_NUM_THREADS": "1",
    }
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["synthesize"]["n_per_class"] = 3000  # about 40 s of work on 2 cores
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(p))
    folder = short / f"cxr-warm-{os.getuid()}"
    assert _stage(["--out", str(tmp_path / "ok")], env).returncode == 0  # starts the server
    assert _listening(folder)
    assert _stage(["--out", str(tmp_path / "ok")], env).returncode == 0  # in a child: the log's first line
    (log,) = folder.glob("*.log")

    def synthesize(out: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "stages.synthesize", "--params", str(tmp_path / "big.yaml")]
        client = subprocess.Popen([*cmd, "--out", str(out), "--external", str(out / "b")], cwd=ROOT, env=env)
        deadline = time.monotonic() + 30
        while not any(out.rglob("*.png")) and time.monotonic() < deadline:
            time.sleep(0.1)  # the child is writing images
        return client

    def last_exit(n_lines: int) -> str:
        deadline = time.monotonic() + 20
        while len(log.read_text().splitlines()) < n_lines and time.monotonic() < deadline:
            time.sleep(0.1)
        line = log.read_text().splitlines()[-1].split()
        assert line[0] == "stages.synthesize"
        return line[4]

    try:
        client = synthesize(tmp_path / "a")
        t0 = time.monotonic()
        assert _stage(["--out", str(tmp_path / "beside")], env).returncode == 0  # while it runs
        assert time.monotonic() - t0 < 10 and client.poll() is None
        client.terminate()
        assert client.wait() == -signal.SIGTERM  # the client died of it, as the child did
        assert last_exit(3) == "-15"
        client = synthesize(tmp_path / "k")
        client.kill()
        client.wait()
        assert last_exit(4) == "-9"  # killed, as its client was
        written = len(list((tmp_path / "k").rglob("*.png")))
        time.sleep(1.0)
        assert len(list((tmp_path / "k").rglob("*.png"))) == written < 6000  # nothing writes on
    finally:
        assert warm.stop_servers(ROOT, short) == 1
        shutil.rmtree(short)
