"""The parent side of a benchmark: a wall-clock budget, one worker process per job (bounded by it), and the setup
job that measures the card and builds the shapes."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tunebench.bench.scaling import worker_command
from tunebench.bench.shapes import describe
from tunebench.bench.specs import SetupSpec
from tunebench.core.errors import TunebenchError
from tunebench.core.io import atomic_write_json, cache_root, read_json

EXIT_OK, EXIT_INCOMPLETE, EXIT_INPUT, EXIT_NO_CUDA = 0, 1, 2, 3


class SetupError(TunebenchError):
    """The setup worker (shape building, calibration) failed: nothing can be measured (exit code 2)."""


class Budget:
    """Wall-clock budget of one invocation: each worker gets what is left, minus a reserve for writing."""

    def __init__(self, seconds: float, reserve: float = 10.0):
        self.deadline = time.monotonic() + seconds
        self.reserve = reserve

    def left(self) -> float:
        return self.deadline - self.reserve - time.monotonic()

    def wall_deadline(self) -> float:
        """The end of the budget on the wall clock (``time.time()``), for a worker process to read."""
        return time.time() + self.left()


def spawn(spec: Any, work: Path, budget: Budget, min_seconds: float = 45.0) -> dict[str, Any]:
    """Run one worker process (output streamed through), bounded by the budget; return its result.

    Args:
        spec: the job, a ``bench.specs`` spec or its ``to_dict()``; written as JSON for the worker, with the path
            of its result file added.
    """
    job = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    label = job["label"]
    left = budget.left()
    if left < min_seconds:
        return {"status": "skipped", "error": f"{left:.0f} s of the --budget-s left, fewer than {min_seconds:.0f}"}
    result_path = work / "results" / f"{label}.json"
    job["result"] = str(result_path)
    spec_path = atomic_write_json(work / "specs" / f"{label}.json", job)
    result_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="5", TOKENIZERS_PARALLELISM="false")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"\n=== {label}: starting worker ({left:.0f} s of budget left) ===", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        worker_command(str(spec_path), job.get("world_size", 1)), env=env, start_new_session=True
    )  # its own group: a timeout ends it and its children
    try:
        code = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        _stop(proc)
        timed_out = f"timed out after {time.monotonic() - t0:.0f} s (the --budget-s ran out)"
        if result_path.exists():  # a sweep writes what it measured after each candidate
            return dict(read_json(result_path), error=timed_out)
        return {"status": "error", "error": timed_out}
    except KeyboardInterrupt:
        _stop(proc)
        raise
    elapsed = time.monotonic() - t0
    if result_path.exists():
        result = read_json(result_path)
    else:
        result = {
            "status": "error",
            "error": f"worker exited with code {code} and wrote no result "
            "(killed for memory, or a crash below Python; see its output above)",
        }
    result["worker_s"] = round(elapsed, 1)
    print(
        f"=== {label}: {result['status']} in {elapsed:.0f} s"
        + (f" ({result.get('error')})" if result["status"] != "ok" else "")
        + " ===",
        flush=True,
    )
    return result


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def setup(shapes: dict[str, dict[str, Any]], args: argparse.Namespace, work: Path, budget: Budget) -> dict[str, Any]:
    """Calibrate the card and build the shapes in a worker; fill in each shape's folder and description."""

    spec = SetupSpec(
        build=[n for n, s in shapes.items() if s["build"]],
        tokenizer=args.tokenizer,
        root=str(work / "shapes"),
        calibrate=True,
    )
    res = spawn(spec, work, budget, min_seconds=20)
    if res["status"] != "ok":
        raise SetupError(
            f"setup failed: {res.get('error')} (check --tokenizer and --work; the worker's output is above)"
        )
    for name, s in shapes.items():
        if s["build"]:
            s["path"] = res["shapes"][name]["path"]
        s["info"] = describe(name, s["path"])
    return res


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work) if args.work else cache_root() / "bench"
