"""The parent side of a benchmark: a wall-clock budget, one worker process per job (bounded by it), and the setup
job that measures the card and builds the shapes."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tunebench.bench.scaling import WORKER_MODULE, worker_launcher
from tunebench.bench.shapes import describe
from tunebench.bench.specs import SetupSpec
from tunebench.core.child import SPEC, ChildError, run_child
from tunebench.core.errors import TunebenchError
from tunebench.core.io import cache_root

EXIT_OK, EXIT_INCOMPLETE, EXIT_INPUT, EXIT_NO_CUDA = 0, 1, 2, 3
WORKER_ENV = {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "5", "TOKENIZERS_PARALLELISM": "false"}


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

    The worker runs through ``core.child`` (the runner lm-eval's child uses too), in its own process group, so a
    timeout ends it and the processes a launcher started.

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
    print(f"\n=== {label}: starting worker ({left:.0f} s of budget left) ===", flush=True)
    t0 = time.monotonic()
    try:
        result = run_child(
            WORKER_MODULE,
            job,
            result_path,
            spec_path=work / "specs" / f"{label}.json",
            args=("worker", SPEC),
            launcher=worker_launcher(job.get("world_size", 1)),
            timeout=left,
            env=WORKER_ENV,
            capture=False,
            own_group=True,
        )
    except ChildError as e:
        if e.timed_out:
            timed_out = f"timed out after {e.elapsed:.0f} s (the --budget-s ran out)"
            # a sweep writes what it measured after each candidate
            return dict(e.data, error=timed_out) if e.data is not None else {"status": "error", "error": timed_out}
        result = {
            "status": "error",
            "error": f"worker exited with code {e.returncode} and wrote no result "
            "(killed for memory, or a crash below Python; see its output above)",
        }
    elapsed = time.monotonic() - t0
    result["worker_s"] = round(elapsed, 1)
    print(
        f"=== {label}: {result['status']} in {elapsed:.0f} s"
        + (f" ({result.get('error')})" if result["status"] != "ok" else "")
        + " ===",
        flush=True,
    )
    return result


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
