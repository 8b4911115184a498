"""A finished run gains an evaluation without training again (issue 40 item 10): `tunebench run` on the folder of a
finished run with the judge turned on reuses the data, training and evaluation stages, says so, runs the judge, and
records the new settings in config.yaml and when each stage ran in stages.json; another evaluation setting reruns the
evaluations but not the judge; a training setting is still refused."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml
from e2e import tunebench

# the smoke preset, cut to the least that trains and evaluates: 2 steps, perplexity only, a 2-prompt judge
TINY = [
    "train.backend=hf",
    "train.max_steps=2",
    "train.save_every=0",
    "train.eval_every=0",
    "data.max_train=16",
    "data.max_validation=4",
    "data.max_test=6",
    "data.max_length=128",
    "eval.lm_eval_tasks=[]",
    "eval.probe_files=[]",
    "eval.judge.n=2",
    "eval.judge.answer_max_new_tokens=8",
    "eval.judge.max_new_tokens=8",
    "eval.judge.sanity_questions=1",
]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_finished_run_gains_a_judge_without_training_again(tmp_path):
    out = tmp_path / "run"
    first = tunebench("run", "smoke", *TINY, "eval.judge.enabled=false", "--out", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    weights = out / "adapter" / "adapter_model.safetensors"
    digest, mtime = _sha(weights), weights.stat().st_mtime_ns
    tuned = out / "eval" / "tuned" / "results.json"
    tuned_mtime = tuned.stat().st_mtime_ns
    before = json.loads((out / "stages.json").read_text())
    assert "judge" not in before and {"data", "train", "eval_base", "eval_tuned", "report"} <= set(before)
    assert "No answers were saved for this run" in (out / "report.md").read_text()  # no judge, no probes: it says so

    second = tunebench("run", "smoke", *TINY, "eval.judge.enabled=true", "--out", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stderr
    assert "eval.judge.enabled: False -> True" in log and "the adapter is reused" in log, log[-3000:]
    reused = next(line for line in log.splitlines() if "reused (inputs unchanged" in line)
    for stage in ("data", "train", "contamination", "eval base", "eval tuned"):
        assert stage in reused, reused
    assert "stage judge" in log and "stage train" not in log and "stage eval" not in log, log[-3000:]
    # training did not run again: the adapter's bytes and time are those of the first run, and so are the evaluations'
    assert _sha(weights) == digest and weights.stat().st_mtime_ns == mtime
    assert tuned.stat().st_mtime_ns == tuned_mtime

    after = json.loads((out / "stages.json").read_text())
    for stage in ("data", "train", "eval_base", "eval_tuned"):
        assert after[stage] == before[stage], stage  # same fingerprint, checksums and time
    assert before["train"]["ran_at"] <= after["judge"]["ran_at"] <= after["report"]["ran_at"]
    assert yaml.safe_load((out / "config.yaml").read_text())["eval"]["judge"]["enabled"] is True
    assert (out / "eval" / "judge" / "judgments.jsonl").is_file()
    report = (out / "report.md").read_text()
    assert "## Conversational quality (judged)" in report
    sample = report.split("## Answers side by side")[1].split("\n## ")[0]
    assert "judge" in sample and "| Base " in sample, sample

    # another evaluation setting: the evaluations run again, the judge (which does not read it) and training do not
    more = ["eval.judge.enabled=true", "eval.lm_eval_limit=5", "report.side_by_side=1"]
    third = tunebench("run", "smoke", *TINY, *more, "--out", str(out))
    assert third.returncode == 0, third.stderr[-3000:]
    reused = next(line for line in third.stderr.splitlines() if "reused (inputs unchanged" in line)
    assert "train" in reused and "judge" in reused and "eval tuned" not in reused, reused
    log = third.stderr
    assert "stage eval tuned" in log and "stage judge" not in log and "stage train" not in log, log[-3000:]
    assert tuned.stat().st_mtime_ns != tuned_mtime and _sha(weights) == digest
    again = json.loads((out / "stages.json").read_text())
    assert again["judge"] == after["judge"] and again["train"] == before["train"]
    sample = (out / "report.md").read_text().split("## Answers side by side")[1].split("\n## ")[0]
    assert "The first prompt the judge compared" in sample  # report.side_by_side read from the new config

    # a setting training reads still needs --overwrite (exit 2, naming it), and changes nothing
    fourth = tunebench("run", "smoke", *TINY, *more, "train.max_steps=3", "--out", str(out))
    assert fourth.returncode == 2 and "train.max_steps: 2 -> 3" in fourth.stderr and "--overwrite" in fourth.stderr
    assert _sha(weights) == digest and json.loads((out / "stages.json").read_text()) == again
