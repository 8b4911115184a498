"""One writer per run folder (core/lock.py): a second live process is refused with exit 2 naming the holder;
a lock left by a killed process is taken over with a warning. Real processes, no model."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tunebench.core.errors import RunLocked
from tunebench.core.lock import LOCK_NAME, RECORD_NAME, read_holder, run_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\nfrom tunebench.core.lock import run_lock\n"
    "with run_lock(sys.argv[1], 'train'):\n    print('locked', flush=True)\n    time.sleep(120)\n"
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNEBENCH_RUN_LOCK"}
    return {**env, "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")}


def _holder(run: Path) -> subprocess.Popen:
    """A real second process that takes the lock and sleeps; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        holder = read_holder(tmp_path)
        assert holder is not None and holder.pid == proc.pid and holder.command == "train"
        assert holder.host == socket.gethostname()
        out = subprocess.run(
            [sys.executable, "-m", "tunebench", "report", str(tmp_path)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
        assert out.returncode == 2, out.stderr
        assert f"pid {proc.pid} on {socket.gethostname()}" in out.stderr
        assert "`tunebench train`" in out.stderr and f"since {holder.since}" in out.stderr
        assert "Traceback" not in out.stderr
        with pytest.raises(RunLocked, match=f"pid {proc.pid}"), run_lock(tmp_path, "eval"):
            pass  # in this process too
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    proc = _holder(tmp_path)
    proc.send_signal(signal.SIGKILL)  # no cleanup: its record stays beside the lock
    proc.wait()
    assert read_holder(tmp_path).pid == proc.pid
    with caplog.at_level(logging.WARNING, logger="tunebench.core.lock"), run_lock(tmp_path, "report"):
        assert read_holder(tmp_path).pid == os.getpid()
    assert f"stale lock left by pid {proc.pid}" in caplog.text
    assert not (tmp_path / RECORD_NAME).exists()  # released: no record of a live holder is left


def test_lock_still_held_for_a_dead_recorded_pid_is_taken_over(tmp_path, caplog):
    # a child that inherited the lock's descriptor outlived the recorded holder: the OS lock is still held
    dead = _dead_pid()
    (tmp_path / RECORD_NAME).write_text(
        json.dumps({"pid": dead, "host": socket.gethostname(), "command": "run", "since": "2025-01-01T00:00:00+00:00"})
    )
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with caplog.at_level(logging.WARNING, logger="tunebench.core.lock"), run_lock(tmp_path, "eval"):
            assert read_holder(tmp_path).pid == os.getpid()
    finally:
        os.close(fd)
    assert f"taking over the lock of pid {dead}" in caplog.text


def test_live_holder_on_another_host_is_never_judged_stale(tmp_path):
    (tmp_path / RECORD_NAME).write_text(
        json.dumps({"pid": _dead_pid(), "host": "elsewhere", "command": "run", "since": "2025-01-01T00:00:00+00:00"})
    )
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(RunLocked, match="on elsewhere .*delete"), run_lock(tmp_path, "eval"):
            pass
    finally:
        os.close(fd)


def test_nested_and_child_of_holder_pass_through(tmp_path):
    # pipeline.run holds the lock while `tunebench train` runs in its child process, and the CLI nests it
    child = "import sys\nfrom tunebench.core.lock import run_lock\nwith run_lock(sys.argv[1], 'train'):\n    pass\n"
    with run_lock(tmp_path, "run"), run_lock(tmp_path, "report"):
        env = {**_env(), "TUNEBENCH_RUN_LOCK": os.environ["TUNEBENCH_RUN_LOCK"]}
        out = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert read_holder(tmp_path).command == "run"
    assert "TUNEBENCH_RUN_LOCK" not in os.environ
