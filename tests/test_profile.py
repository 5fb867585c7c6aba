"""The stage profile (CXR_PROFILE): import, load, work and write add up to the process's time, an
import inside a load counts once (as import), another thread's phases do not count, and nothing
is written when it is off (nor does an unwritable profile file fail the stage)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAGE = textwrap.dedent(
    """
    import threading
    import time
    from pathlib import Path

    from cxr_transfer.core.cli import atomic_path, run
    from cxr_transfer.core.profile import phase

    def main():
        with phase("load"):
            time.sleep(0.3)
            import slow_module  # 0.4 s at import: counts as import, not load
        time.sleep(0.2)  # work
        side = threading.Thread(target=lambda: [phase("load").__enter__(), time.sleep(0.3)])
        side.start()
        side.join()  # 0.3 s of work for the main thread, waiting; the thread's "load" is not counted
        with atomic_path(Path("out.txt")) as tmp:
            time.sleep(0.25)
            tmp.write_text("x")

    run(main, "fake")
    """
)


def _run(tmp_path: Path, env_extra: dict) -> subprocess.CompletedProcess:
    (tmp_path / "slow_module.py").write_text("import time\ntime.sleep(0.4)\n")
    (tmp_path / "fake_stage.py").write_text(STAGE)
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin", **env_extra}
    return subprocess.run(
        [sys.executable, "fake_stage.py"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )


def test_phases_add_up_and_nest(tmp_path):
    log = tmp_path / "profile.jsonl"
    _run(tmp_path, {"CXR_PROFILE": str(log)})
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["stage"] == "fake"
    assert 0.3 <= line["load"] < 0.4  # the sleep, not the import inside it
    assert 0.4 <= line["import"] < 1.5  # the slow module, the interpreter's start and cxr_transfer's
    assert 0.25 <= line["write"] < 0.35
    assert 0.5 <= line["work"] < 0.6
    assert line["rank"] == 0 and line["argv"] == []
    parts = sum(line[k] for k in ("import", "load", "work", "write"))
    assert abs(parts - line["seconds"]) < 0.03  # the process's start is counted once, as import
    assert (tmp_path / "out.txt").read_text() == "x"


def test_off_writes_nothing(tmp_path):
    _run(tmp_path, {})
    assert (tmp_path / "out.txt").read_text() == "x"
    assert not list(tmp_path.glob("*.jsonl"))


def test_an_unwritable_profile_file_does_not_fail_the_stage(tmp_path):
    _run(tmp_path, {"CXR_PROFILE": str(tmp_path / "missing" / "profile.jsonl")})  # check=True: exit 0
    assert (tmp_path / "out.txt").read_text() == "x"


EXIT_STAGE = textwrap.dedent(
    """
    import atexit
    import sys
    import threading
    import time
    from pathlib import Path

    from cxr_transfer.core.cli import run

    def main():
        atexit.register(lambda: Path("atexit.txt").write_text("ran"))
        if sys.argv[1:] == ["thread"]:
            threading.Thread(target=lambda: [time.sleep(0.3), Path("thread.txt").write_text("done")]).start()
        print("last words, unflushed", end="")

    run(main, "fake")
    Path("after_run.txt").write_text("the interpreter went on")
    """
)


@pytest.mark.parametrize("thread", [False, True])
def test_a_finished_stage_exits_at_once_after_its_atexit_handlers(tmp_path, thread):
    """The stage's process ends right after main (the script's next line never runs), with its
    atexit handlers run and its output flushed; a non-daemon thread still running is waited for
    (the usual exit)."""
    (tmp_path / "stage.py").write_text(EXIT_STAGE)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "stage.py", *(["thread"] if thread else [])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout == "last words, unflushed"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "after_run.txt").exists() is thread  # os._exit: the script's next line never ran
    assert (tmp_path / "thread.txt").exists() is thread


def test_a_stage_run_inside_another_program_leaves_it_running(tmp_path):
    """Run by runpy from another script (as the dependency tracer does), the stage returns to it:
    only the program the interpreter was started with may end the process."""
    (tmp_path / "stage.py").write_text(EXIT_STAGE)
    (tmp_path / "runner.py").write_text(
        "import runpy\nfrom pathlib import Path\n"
        "runpy.run_path('stage.py', run_name='__main__')\nPath('runner.txt').write_text('went on')\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "runner.py"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "last words, unflushed"
    assert (tmp_path / "after_run.txt").exists() and (tmp_path / "runner.txt").read_text() == "went on"
