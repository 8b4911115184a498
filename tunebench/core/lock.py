"""One writer per run folder: ``run_lock(RUN, command)`` holds ``RUN/.tunebench.lock`` while a command writes.

Beside the lock, ``RUN/.tunebench.lock.json`` records the holder (pid, host, command, since when), written
atomically, so a refused second process can say who is writing. The lock is an OS file lock (``filelock``): the
kernel drops it when its process dies, even by SIGKILL. Two leftovers are recognised as stale and taken over with
a warning: a record whose lock is free (its process was killed), and a lock still held on this host by a process
other than the recorded pid, which is dead (a child that inherited the lock's descriptor outlived it).

A child process of the holder (pipeline.run's training child) finds the lock's path in ``TUNEBENCH_RUN_LOCK``
and its parent as the holder: it writes under its parent's lock instead of being refused.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from tunebench.core import dist
from tunebench.core.errors import InvalidInput, RunLocked
from tunebench.core.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

LOCK_NAME = ".tunebench.lock"
RECORD_NAME = ".tunebench.lock.json"
LOCK_FILES = (LOCK_NAME, RECORD_NAME)
"""Names a run folder may hold that are not run output (a fresh folder holding only these is empty)."""
ENV = "TUNEBENCH_RUN_LOCK"
_RECORD_WAIT_S = 2.0
"""How long a refused process waits for the holder's record: the holder writes it just after it takes the lock."""
_held: dict[Path, int] = {}  # lock path -> nesting depth in this process (cli and pipeline.run both take it)


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder's lock, as its record says."""

    pid: int
    host: str
    command: str
    since: str
    """ISO 8601 time (UTC) at which it took the lock."""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (`tunebench {self.command}`, since {self.since})"


def read_holder(run_dir: str | Path) -> Holder | None:
    """The record beside the lock, or None when there is none or it cannot be read (a foreign or cut file)."""
    try:
        data = read_json(Path(run_dir) / RECORD_NAME, limit=2**16)
        return Holder(int(data["pid"]), str(data["host"]), str(data["command"]), str(data["since"]))
    except (InvalidInput, FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _is_dead(holder: Holder) -> bool:
    # a pid is meaningful only on its own host; another host's process is never judged dead from here
    return holder.host == socket.gethostname() and not pid_alive(holder.pid)


def _by_parent(path: Path) -> bool:
    """This process is a child of the holder of ``path`` (it inherited the lock's name and its parent holds it)."""
    holder = read_holder(path.parent)
    return os.environ.get(ENV) == str(path) and holder is not None and holder.pid == os.getppid()


def _refusal(run_dir: Path, holder: Holder | None) -> RunLocked:
    who = holder.describe() if holder else "another process (its record is not written yet)"
    return RunLocked(
        f"{run_dir} is in use by {who}: one command at a time writes a run folder. Wait for it to finish or "
        f"stop it; if that process is gone for good (e.g. on another host), delete {run_dir / LOCK_NAME} and "
        f"{run_dir / RECORD_NAME}."
    )


def _wait_for_record(run_dir: Path) -> Holder | None:
    deadline = time.monotonic() + _RECORD_WAIT_S
    while (holder := read_holder(run_dir)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return holder


def _acquire(run_dir: Path, path: Path) -> FileLock:
    """Take the lock at once or raise RunLocked naming the holder; take over a stale one with a warning."""
    previous = read_holder(run_dir)
    lock = FileLock(path, timeout=0, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        holder = _wait_for_record(run_dir)
        if holder is None or not _is_dead(holder):
            raise _refusal(run_dir, holder) from None
        log.warning(
            "%s: taking over the lock of %s, which is no longer running (a child process of it still held the lock)",
            run_dir,
            holder.describe(),
        )
        path.unlink(missing_ok=True)  # the lock on the old file stays with that child; this one is new
        lock = FileLock(path, timeout=0, preserve_lock_file=True)
        try:
            lock.acquire()
        except Timeout:
            raise _refusal(run_dir, read_holder(run_dir)) from None
        return lock
    if previous is not None and previous.pid != os.getpid():
        log.warning(
            "%s: taking over a stale lock left by %s, which stopped without releasing it (killed?); "
            "stages it left unfinished are redone",
            run_dir,
            previous.describe(),
        )
    return lock


def _hide_password(arg: str) -> str:
    """An argument with the password of any URL in it hidden (`sweep --storage postgresql://user:PASS@host/db`)."""
    return re.sub(r"(://[^/:@\s]*:)[^/@\s]+@", r"\1***@", arg)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (creating the folder); nested and child-of-holder uses pass through.

    Only the main process of a distributed job takes it: the other ranks write nothing of the run folder.

    Raises:
        RunLocked: another live process holds it; the message names it (pid, host, command, since when).
    """
    run_dir = Path(run_dir)
    if not dist.is_main():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = (run_dir / LOCK_NAME).resolve()
    if path in _held or _by_parent(path):
        _held[path] = _held.get(path, 0) + 1
        try:
            yield
        finally:
            _held[path] -= 1
            if not _held[path]:
                del _held[path]
        return
    lock = _acquire(run_dir, path)
    since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record = Holder(os.getpid(), socket.gethostname(), command, since)
    atomic_write_json(run_dir / RECORD_NAME, {**asdict(record), "argv": [_hide_password(a) for a in sys.argv]})
    _held[path], old_env = 1, os.environ.get(ENV)
    os.environ[ENV] = str(path)
    try:
        yield
    finally:
        del _held[path]
        if old_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old_env
        (run_dir / RECORD_NAME).unlink(missing_ok=True)  # before the release: a free lock never has a live record
        lock.release()
