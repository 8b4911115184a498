"""Crash consistency of `tunebench run`: SIGKILL it at N moments drawn from a seeded schedule, re-run the same command
after each kill, and check that the run it finally completes equals an uninterrupted one, value for value.

    python scripts/crash_test.py PRESET N [--seed S] [--work DIR] [--out FILE.json] [key=value ...]
    (scripts/crash-test.sh PRESET N [...] is the same)

Kill points are events of the run folder, polled every few milliseconds, each with a seeded delay after it:

- ``data``:       the run folder was prepared and the data stage has not finished (encoding);
- ``step``:       training has started (train.log) and not finished (mid-step);
- ``checkpoint``: a checkpoint is being written (``checkpoints/.staging`` exists): aimed inside the save;
- ``eval_base``, ``eval_tuned``, ``judge``: that evaluation has started and not finished;
- ``report``:     every stage has finished and the report, comparison and gate are being written.

The whole process group is killed (the training child too), as a preempted node or the OOM killer would. After each
kill the run folder must be in a state the pipeline recognises: every stage recorded as done has all its outputs,
with the bytes recorded for them (stages.json), never "done" with partial outputs.

Both runs get their own generation cache (answers are not shared between them; the dequantized model is), so the
crashed run really regenerates what it lost. Fields left out of the comparison, and why, are in EXCLUDED below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunebench.core.io import git_commit, sha256_file

EVENTS = ("data", "step", "checkpoint", "eval_base", "eval_tuned", "judge", "report")
"""In pipeline order: the schedule is sorted by it, so each kill point is reached by the run after the one before."""

MAX_DELAY_S = {
    "data": 3.0,
    "step": 6.0,
    "checkpoint": 0.0,
    "eval_base": 20.0,
    "eval_tuned": 20.0,
    "judge": 15.0,
    "report": 0.0,
}
"""The longest seeded wait after an event before the kill (0: at once, aimed inside a short write)."""

COMPARED = (
    "eval/base/results.json",
    "eval/tuned/results.json",
    "eval/judge/results.json",
    "comparison.json",
    "gate.json",
)

EXCLUDED = {
    "created": "when the file was written",
    "timings": "wall time of each part of an evaluation (load, perplexity, generation, lm-eval)",
    "seconds": "wall time of a part (generation, a stage)",
    "wall_time_s": "wall time",
    "tokens_per_s": "throughput: a measure of the machine, not of the model",
    "duration_s": "wall time",
    "peak_memory_gib": "memory high-water mark of the process that ran it (a resumed process saw less)",
    "environment": "host, versions and timing of the process that wrote it",
    "run_dir": "where the run folder is (the two runs are in different folders)",
    "path": "a file path inside the run folder",
    "rules_path": "the rules file's path",
    "probe_generation": "what the generating process did (cache hits and misses, generate calls, tokens it made): "
    "a resumed process reads the answers its predecessor cached; the answers themselves are "
    "compared (probe_transcripts)",
}
"""Keys dropped (at any depth) before the value-for-value comparison, and why: none of them is a result."""

POLL_S = 0.005


def _stages(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "stages.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _reached(event: str, run: Path, judge: bool) -> bool:
    done = _stages(run)
    if event == "data":
        return (run / "config.yaml").exists() and "data" not in done
    if event == "step":
        return "data" in done and "train" not in done and (run / "train.log").exists()
    if event == "checkpoint":
        return (run / "checkpoints" / ".staging").exists()
    if event == "eval_base":
        return "contamination" in done and "eval_base" not in done
    if event == "eval_tuned":
        return "eval_base" in done and "eval_tuned" not in done
    if event == "judge":
        return judge and "eval_tuned" in done and "judge" not in done
    if event == "report":
        last = "judge" if judge else "eval_tuned"
        return last in done and not (run / "gate.json").exists()
    raise ValueError(event)


def schedule(n: int, seed: int, judge: bool) -> list[tuple[str, float]]:
    """``n`` (event, delay) kill points: every event once while n allows (a checkpoint write always), the rest drawn
    at random, sorted in pipeline order; the delays are seeded draws in [0, MAX_DELAY_S[event]]."""
    rng = random.Random(seed)
    events = [e for e in EVENTS if judge or e != "judge"]
    first = ["checkpoint"] + [e for e in events if e != "checkpoint"]
    picked = first[:n] + [rng.choice(events) for _ in range(max(0, n - len(first)))]
    picked.sort(key=events.index)
    return [(e, round(rng.uniform(0, MAX_DELAY_S[e]), 2)) for e in picked]


def _cache_dir(work: Path, name: str) -> Path:
    """A cache root of its own (generation answers start empty) sharing the user's other derived files."""
    own = work / f"cache-{name}"
    own.mkdir(parents=True, exist_ok=True)
    user = Path(
        os.environ.get("TUNEBENCH_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunebench"
    )
    if user.is_dir():
        for p in user.iterdir():
            if p.name != "generations" and not (own / p.name).exists():
                (own / p.name).symlink_to(p.resolve())
    return own


def _command(preset: str, out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "tunebench", "run", preset, *overrides, "--out", str(out)]


LIVE: set[subprocess.Popen] = set()
"""Runs in flight: a SIGTERM to this script (a test's timeout) takes their process groups with it."""


def _start(cmd: list[str], cache: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TUNEBENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    env.pop("TUNEBENCH_RUN_LOCK", None)
    with log.open("ab") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    LIVE.add(proc)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the training child too: a preempted node takes everything
    except ProcessLookupError:
        pass
    proc.wait()
    LIVE.discard(proc)


def _stop_all(signum: int, _frame: object) -> None:
    """SIGTERM: kill every run in flight (each in its own session, so nothing else would), then exit.

    No wait here: the signal may arrive inside ``proc.wait()``, whose lock a second wait in the handler would
    block on forever; the killed runs are reaped when this script exits."""
    for proc in list(LIVE):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def check_state(run: Path) -> list[str]:
    """Problems of the run folder as a kill left it: a stage recorded as done whose outputs are missing or are not
    the bytes recorded for them."""
    problems = []
    for name, rec in _stages(run).items():
        sums = rec.get("sha256", {}) if isinstance(rec, dict) else {}
        for rel, want in sums.items():
            p = run / rel
            if not p.is_file():
                problems.append(f"stage {name} is recorded as done but {rel} is missing")
            elif sha256_file(p) != want:
                problems.append(f"stage {name} is recorded as done but {rel} is not the file it wrote")
    return problems


def normalize(obj: Any, run: Path) -> Any:
    """``obj`` without the EXCLUDED keys, with the run folder's path replaced by RUN."""
    if isinstance(obj, dict):
        return {k: normalize(v, run) for k, v in obj.items() if k not in EXCLUDED}
    if isinstance(obj, list):
        return [normalize(v, run) for v in obj]
    if isinstance(obj, str):
        return obj.replace(str(run), "RUN")
    return obj


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return [] if a == b or both_nan else [f"{where}: {_short(a)} != {_short(b)}"]


def _short(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def compare_runs(ref: Path, run: Path) -> dict[str, list[str]]:
    """File -> differences between the reference run and the crashed one (after normalize)."""
    out = {}
    for rel in COMPARED:
        a, b = ref / rel, run / rel
        if not a.exists() and not b.exists():
            continue
        if not (a.exists() and b.exists()):
            out[rel] = [f"present in only one run ({'reference' if a.exists() else 'crashed'})"]
            continue
        diff = differences(normalize(json.loads(a.read_text()), ref), normalize(json.loads(b.read_text()), run))
        if diff:
            out[rel] = diff
    return out


def _until_done(cmd: list[str], cache: Path, log: Path, tries: int = 3) -> int:
    code = None
    for _ in range(tries):
        proc = _start(cmd, cache, log)
        code = proc.wait()
        if code in (0, 1, 3):
            return code
    raise SystemExit(f"the run did not complete after {tries} tries (exit {code}); see {log}")


def crash_test(preset: str, n: int, seed: int, work: Path, overrides: list[str]) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    judge = not any(o.replace(" ", "") == "eval.judge.enabled=false" for o in overrides)
    ref, run = work / "reference", work / "crashed"
    t0 = time.perf_counter()
    ref_code = _until_done(
        _command(preset, ref, overrides), _cache_dir(work, "reference"), work / "reference.log", tries=1
    )
    ref_s = time.perf_counter() - t0
    judge = judge and (ref / "eval" / "judge" / "results.json").exists()
    cache, log, cmd = _cache_dir(work, "crashed"), work / "crashed.log", _command(preset, run, overrides)
    kills, t1 = [], time.perf_counter()
    for event, delay in schedule(n, seed, judge):
        proc = _start(cmd, cache, log)
        fired = None
        while proc.poll() is None:
            if _reached(event, run, judge):
                end = time.perf_counter() + delay
                while proc.poll() is None and time.perf_counter() < end:
                    time.sleep(POLL_S)
                if proc.poll() is None:
                    state = sorted(_stages(run))
                    staging = (run / "checkpoints" / ".staging").exists()
                    _kill(proc)
                    fired = {"stages_done": state, "inside_checkpoint_write": staging}
                break
            time.sleep(POLL_S)
        if proc.poll() is None:
            proc.wait()
        problems = check_state(run)
        kills.append(
            {
                "event": event,
                "delay_s": delay,
                "killed": fired is not None,
                **(fired or {}),
                "exit": proc.returncode,
                "state_problems": problems,
            }
        )
    code = _until_done(cmd, cache, log)
    diffs = compare_runs(ref, run)
    killed = [k for k in kills if k["killed"]]
    return {
        "preset": preset,
        "overrides": overrides,
        "kill_points": n,
        "seed": seed,
        "kills_fired": len(killed),
        "kills_inside_checkpoint_write": sum(1 for k in killed if k.get("inside_checkpoint_write")),
        "kills_missed": [k["event"] for k in kills if not k["killed"]],
        "state_problems": [p for k in kills for p in k["state_problems"]],
        "exit_codes": {"reference": ref_code, "crashed": code},
        "equal": not diffs and code == ref_code,
        "differences": diffs,
        "compared": [r for r in COMPARED if (ref / r).exists()],
        "excluded": EXCLUDED,
        "kills": kills,
        "seconds": {"reference": round(ref_s, 1), "crashed_with_restarts": round(time.perf_counter() - t1, 1)},
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "commit": git_commit(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="crash_test.py")
    ap.add_argument("preset")
    ap.add_argument("n", type=int, help="kill points")
    ap.add_argument("overrides", nargs="*", help="key=value settings for both runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="crash-test", help="folder for both runs, their logs and caches")
    ap.add_argument("--out", help="write the summary JSON here (default WORK/crash_test.json)")
    args = ap.parse_intermixed_args(argv)
    signal.signal(signal.SIGTERM, _stop_all)
    work = Path(args.work)
    summary = crash_test(args.preset, args.n, args.seed, work, args.overrides)
    out = Path(args.out) if args.out else work / "crash_test.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"crash test {args.preset}: {summary['kills_fired']} of {args.n} kills fired "
        f"({summary['kills_inside_checkpoint_write']} inside a checkpoint write), "
        f"{len(summary['state_problems'])} bad intermediate states, results "
        f"{'equal' if summary['equal'] else 'DIFFERENT'} to an uninterrupted run; {out}"
    )
    for rel, diff in summary["differences"].items():
        print(f"  {rel}: " + "; ".join(diff[:5]) + (f" (+{len(diff) - 5} more)" if len(diff) > 5 else ""))
    return 0 if summary["equal"] and not summary["state_problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
