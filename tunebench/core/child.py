"""One way to run work in a child process: write a JSON spec, run ``python -m MODULE SPEC OUT``, read the JSON
the child wrote.

A child process keeps a heavy or fragile job (lm-eval on a model Unsloth has not patched, one benchmark worker
per measurement) out of the caller's process; the spec and the result cross the boundary as JSON files, so what
crosses is plain data (typed specs write themselves with ``to_dict``). The child reports its own failures in the
JSON it writes (``{"error": ...}`` or a status field); a child that writes nothing, or runs past its time, is a
``ChildError`` here.
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunebench.core import output
from tunebench.core.errors import TunebenchError
from tunebench.core.io import atomic_write_json, read_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the tunebench package
SPEC = "{spec}"
"""In ``args``: replaced by the spec file's path."""
OUT = "{out}"
"""In ``args``: replaced by the result file's path."""
LAUNCHER_VARS = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "GROUP_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)
"""torchrun's rendezvous variables: a caller running under torchrun must not hand its own to the child."""
TAIL_LINES = 20
"""Last lines of a captured child's output kept for error messages."""


class ChildError(TunebenchError):
    """A child process ran past its timeout, exited without writing its JSON, or (with ``check``) exited non-zero.

    Attributes:
        returncode: The child's exit status; None when it was stopped at the timeout.
        timed_out: True when it ran past the timeout and was stopped.
        elapsed: Seconds it ran.
        tail: Its last lines of output when captured (``capture=True``), else ``""``.
        data: The JSON it wrote, if it wrote one (a timed-out job may have written part of its work), else None.
    """

    def __init__(
        self,
        message: str,
        returncode: int | None = None,
        timed_out: bool = False,
        elapsed: float = 0.0,
        tail: str = "",
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.timed_out = timed_out
        self.elapsed = elapsed
        self.tail = tail
        self.data = data


def run_child(
    module: str,
    spec: Mapping[str, Any],
    out: str | Path | None = None,
    *,
    spec_path: str | Path | None = None,
    args: Sequence[str] = (SPEC, OUT),
    launcher: Sequence[str] = (),
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    own_group: bool = False,
    check: bool = False,
) -> Any:
    """Write ``spec`` as JSON, run ``python [LAUNCHER...] -m MODULE ARGS...``, return the JSON the child wrote.

    The child runs this very tree (the project root leads its ``PYTHONPATH``, wherever the caller's working
    directory is), without torchrun's rendezvous variables (``LAUNCHER_VARS``). Ctrl-C in the caller stops
    the child before the KeyboardInterrupt goes on: no model-sized orphan is left behind.

    Args:
        module: The module the child runs with ``-m`` (e.g. ``tunebench.evals.lm_eval.child``).
        spec: What the child is to do, JSON-serializable (a typed spec's ``to_dict()``).
        out: Where the child writes its JSON; None = ``out.json`` in a temporary folder removed afterwards.
            A file left there by an earlier run is removed before the child starts.
        spec_path: Where the spec is written; None = ``spec.json`` in that temporary folder.
        args: The child module's arguments; ``SPEC`` and ``OUT`` stand for the two paths. The default gives
            ``python -m MODULE SPEC OUT``; a worker that finds its result path in the spec takes e.g.
            ``("worker", SPEC)``.
        launcher: Arguments between ``python`` and ``-m MODULE``, to run the module under a launcher, e.g.
            ``["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]``.
        timeout: Seconds before the child is stopped (``ChildError`` with ``timed_out``); None = no limit.
        env: Variables set for the child on top of this process's environment.
        capture: True: the child's stdout and stderr are read through a pipe and echoed to this process's
            stderr as they come (progress bars included), the last lines kept for ``ChildError.tail``.
            False: the child writes to this process's stdout and stderr directly.
        own_group: Start the child in its own session (process group) and stop the whole group (SIGTERM,
            then SIGKILL) at the timeout, so a launcher's worker processes end with it; else the child alone
            is killed.
        check: Also raise ``ChildError`` when the child exits non-zero after writing its JSON (the error then
            carries that JSON in ``data``); by default the JSON is returned whatever the exit status, since
            the child reports its own failures in it.

    Returns:
        The parsed JSON the child wrote to ``out``.

    Raises:
        ChildError: the child ran past ``timeout``, exited without writing ``out`` (killed for memory, a crash
            below Python), or, with ``check``, exited non-zero.
    """
    with tempfile.TemporaryDirectory(prefix="tunebench-child-") as tmp:
        spec_file = Path(spec_path) if spec_path is not None else Path(tmp) / "spec.json"
        out_file = Path(out) if out is not None else Path(tmp) / "out.json"
        atomic_write_json(spec_file, dict(spec))
        out_file.unlink(missing_ok=True)
        paths = {SPEC: str(spec_file), OUT: str(out_file)}
        cmd = [sys.executable, *launcher, "-m", module, *(paths.get(a, a) for a in args)]
        start = time.monotonic()
        returncode, tail = _run(cmd, _child_env(env), timeout, capture, own_group)
        elapsed = time.monotonic() - start
        data = read_json(out_file) if out_file.exists() else None
    if returncode is None:
        raise ChildError(
            f"{module} did not finish within {timeout:g} s and was stopped", None, True, elapsed, tail, data
        )
    if data is None or (check and returncode != 0):
        wrote = "wrote no result" if data is None else "wrote a result"
        shown = f"; its last output:\n{tail}" if tail else " (see its output above)"
        raise ChildError(
            f"{module} exited with status {returncode} and {wrote}{shown}", returncode, False, elapsed, tail, data
        )
    return data


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment without torchrun's rendezvous, the project root first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run(
    cmd: list[str], env: dict[str, str], timeout: float | None, capture: bool, own_group: bool
) -> tuple[int | None, str]:
    """Run the command; return (exit status, or None when stopped at the timeout; last lines of its output)."""
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(
        cmd, stdout=pipe, stderr=subprocess.STDOUT if capture else None, env=env, start_new_session=own_group
    )
    tail: deque[str] = deque(maxlen=64)
    reader = threading.Thread(target=_pump, args=(proc, tail), name="child-output", daemon=True)
    if capture:
        reader.start()
    try:
        returncode: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, own_group)
        returncode = None
    except BaseException:  # Ctrl-C: do not leave a model-sized orphan behind
        _stop(proc, own_group)
        raise
    if capture:
        reader.join(5)
    return returncode, _last_lines(tail)


def _pump(proc: subprocess.Popen, tail: deque[str]) -> None:
    """Echo the child's output to stderr as it comes, keeping the last chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    assert proc.stdout is not None
    while chunk := os.read(proc.stdout.fileno(), 8192):
        text = decoder.decode(chunk)
        tail.append(text)
        output.echo(text)  # between the redraws of the stage's bar


def _last_lines(tail: deque[str]) -> str:
    """The last non-blank lines of the output, each as a terminal shows it after its carriage returns."""
    lines = "".join(tail).replace("\r\n", "\n").split("\n")
    return "\n".join([line.rsplit("\r", 1)[-1] for line in lines if line.strip()][-TAIL_LINES:])


def _stop(proc: subprocess.Popen, own_group: bool) -> None:
    """Stop the child: its whole group, politely first (``own_group``), else the child alone, at once."""
    if not own_group:
        proc.kill()
        proc.wait()
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
