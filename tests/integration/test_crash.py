"""The crash-consistency test on a short preset (scripts/crash_test.py): SIGKILL `tunebench run` at 7 seeded moments
(one inside a checkpoint write, one during each evaluation, the judge and the report), re-run after each kill, and
the completed run equals an uninterrupted one value for value, with no kill leaving a stage "done" with partial
outputs. The model work is tiny: 4 optimizer steps and a few evaluation items."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # 9 `tunebench run`s, killed and resumed: about 13 minutes on 2 cores

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "crash_test.py"

SHORT = [
    "data.max_train=16",
    "data.max_validation=4",
    "data.max_test=8",
    "data.max_length=128",
    "train.max_steps=4",
    "train.save_every=1",
    "train.eval_every=2",
    "train.batch_size=2",
    "train.warmup_steps=0",
    "eval.lm_eval_limit=4",
    "eval.bootstrap_samples=200",
    "eval.judge.n=2",
    "eval.judge.sanity_questions=1",
    "eval.probe_batch_size=8",
    # both samplings of the preset (the seeded one must regenerate identically after a kill), shorter answers
    "eval.probe_sampling=[{name: seed, temperature: 1.5, min_p: 0.1, max_new_tokens: 8},"
    " {name: greedy, temperature: 0.0, min_p: null, max_new_tokens: 8}]",
]
"""The smoke preset cut to a few minutes on 2 cores; save_every=1 gives the checkpoint kill a save to land in."""


def test_killed_runs_complete_with_the_results_of_an_uninterrupted_one(tmp_path):
    work = tmp_path / "crash"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "smoke", "7", "--seed", "0", "--work", str(work), *SHORT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=SCRIPT.parents[1],
    )
    try:
        stdout, stderr = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script kills the run in flight (its own session) before it exits
        proc.communicate(timeout=120)
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    summary = json.loads((work / "crash_test.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["equal"] and not summary["differences"], summary["differences"]
    assert summary["state_problems"] == []
    assert summary["kills_fired"] >= 6, summary["kills"]
    assert summary["kills_inside_checkpoint_write"] >= 1, summary["kills"]
    assert {"eval/base/results.json", "eval/tuned/results.json", "comparison.json", "gate.json"} <= set(
        summary["compared"]
    )
    assert summary["exit_codes"]["crashed"] == summary["exit_codes"]["reference"]
