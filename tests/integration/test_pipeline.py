"""`tunebench run smoke` end to end, as README's first Quick start line runs it: offline, CPU, real parts.

The run is made once per session; the tests read its folder. It takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tunebench(*args, timeout=1500):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tunebench", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "smoke"
    t0 = time.perf_counter()
    res = tunebench("run", "smoke", "--out", str(out))
    assert res.returncode == 0, res.stderr[-4000:]
    return out, res, time.perf_counter() - t0


def test_smoke_run_writes_a_report_with_real_numbers(smoke_run):
    out, res, seconds = smoke_run
    for rel in ("config.yaml", "data/data_report.md", "adapter/manifest.json", "adapter/adapter_model.safetensors",
                "loss_curve.png", "eval/base/results.json", "eval/tuned/results.json", "eval/contamination.json",
                "comparison.json", "report.md", "gate.json", "forest.png"):
        assert (out / rel).exists(), rel
    assert f"report: {out / 'report.md'}" in res.stdout and "perplexity/test" in res.stdout  # headline printed
    comp = json.loads((out / "comparison.json").read_text())
    rows = {r["metric"]: r for r in comp["rows"]}
    ppl = rows["perplexity/test"]
    assert ppl["base"] != ppl["tuned"] and ppl["ci_low"] is not None and ppl["n"] > 10  # the tuned side differs
    assert any(m.startswith("lm_eval/tunebench_facts_mc/") for m in rows)
    assert "probes/default/seed/fibonacci/pass_rate" in rows and "probes/default/greedy/pass_rate" in rows
    report = (out / "report.md").read_text()
    for section in ("## Headline", "## Perplexity", "## lm-eval tasks", "## Probes", "Fibonacci", "## Training",
                    "## Data", "## Contamination", "## Environment"):
        assert section in report, section
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    assert manifest["backend"]["name"] == "unsloth"  # auto picks Unsloth: it imports and runs on CPU
    assert manifest["backend"]["mask_agreement_with_shared"] == 1.0
    base = json.loads((out / "eval" / "base" / "results.json").read_text())
    tuned = json.loads((out / "eval" / "tuned" / "results.json").read_text())
    assert base["inputs"]["test_tokens"] == tuned["inputs"]["test_tokens"]  # identical tokens, prompts, seeds
    assert base["inputs"]["probe_sets"] == tuned["inputs"]["probe_sets"]
    assert tuned["model"]["adapter_merged"] is True  # evaluation merges by default: what ships
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["stages"]) == {"data", "train", "contamination", "eval_base", "eval_tuned", "judge"}
    assert all(s > 0 for s in timings["stages"].values())
    assert "wall time: train" in report and "wall time: eval tuned" in report
    assert "](forest.png)" in report and "](loss_curve.png)" in report and "None GiB" not in report
    assert manifest["eval_history"][0]["step"] == 0 and manifest["base_eval_loss"] is not None  # eval_on_start
    # the judge stage: the packaged model judged its own base and tuned answers, both orders, and says so
    judged = [json.loads(line) for line in (out / "eval" / "judge" / "judgments.jsonl").read_text().splitlines()]
    pairs = [j for j in judged if "judgment_base_first" in j]
    assert len(pairs) == 4 and all(j["base_answer"] and j["tuned_answer"] for j in pairs)
    assert sum("expected" in j for j in judged) == 8  # 2 planted questions x (empty, off-topic) x both orders
    assert "judge/heldout/win_rate" in rows and rows["judge/heldout/win_rate"]["base"] == 0.5
    assert "## Conversational quality (judged)" in report and "not conversational quality" in report
    assert not any(r["metric"].startswith("judge/") for r in json.loads((out / "gate.json").read_text())["rows"])
    print(f"smoke run took {seconds:.0f} s; stages {timings['stages']}; eval {tuned['timings']}")


def test_rerun_skips_finished_stages(smoke_run):
    out, _, _ = smoke_run
    before = (out / "eval" / "tuned" / "results.json").stat().st_mtime
    t0 = time.perf_counter()
    res = tunebench("run", "smoke", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stage train" not in res.stderr and "stage eval" not in res.stderr
    assert (out / "eval" / "tuned" / "results.json").stat().st_mtime == before
    assert time.perf_counter() - t0 < 120


def test_gate_exit_codes_follow_the_rules(smoke_run, tmp_path):
    out, _, _ = smoke_run
    # smoke's perplexity rule concludes; 12 lm-eval documents and a few dozen probe samples may not (exit 3)
    res = tunebench("gate", str(out), "--out", str(tmp_path / "d.json"))
    verdict = json.loads((tmp_path / "d.json").read_text())
    assert res.returncode == {"pass": 0, "inconclusive": 3}[verdict["status"]], res.stdout
    assert next(r for r in verdict["rows"] if r["metric"] == "perplexity/test")["status"] == "pass", res.stdout
    report = (out / "report.md").read_text()
    assert report.split("\n")[2].startswith(("**Ship.**", "**Not enough evidence.**")), report[:600]
    strict = tmp_path / "strict.yaml"
    strict.write_text("rules:\n  - metric: perplexity/test\n    min_improvement_rel: 0.9\n")
    res = tunebench("gate", str(out), "--rules", str(strict), "--out", str(tmp_path / "v.json"))
    assert res.returncode == 1 and "FAIL" in res.stdout
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False
    missing = tmp_path / "missing.yaml"
    missing.write_text("rules:\n  - metric: lm_eval/no_such_task/acc\n    max_regression: 0\n")
    assert tunebench("gate", str(out), "--rules", str(missing), "--out", str(tmp_path / "m.json")).returncode == 2
    nothing = tmp_path / "nothing.yaml"  # an optional rule that matches no metric checks nothing: never a pass
    nothing.write_text("rules:\n  - metric: lm_eval/no_such_task/acc\n    max_regression: 0\n    optional: true\n")
    res = tunebench("gate", str(out), "--rules", str(nothing), "--out", str(tmp_path / "n.json"))
    assert res.returncode == 3 and "no rule matched any metric: nothing was checked" in res.stdout, res.stdout


def test_example_quality_tests_run_against_the_smoke_run(smoke_run):
    out, _, _ = smoke_run
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(ROOT / "tests/quality")]
    res = subprocess.run([*cmd, f"--tunebench-run={out}", "--tunebench-require"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    # Perplexity concludes on smoke's conversations; every other test decides as the gate does and fails when
    # its interval cannot exclude the regression (12 lm-eval documents, one sample per probe).
    example = "tests/quality/test_quality.py::"
    summary = [line for line in res.stdout.splitlines() if line.startswith(("PASSED ", "FAILED ", "ERROR "))]
    assert len(summary) == 5 and all(line.split()[1].startswith(example) for line in summary), res.stdout[-3000:]
    for name in ("test_perplexity_significantly_lower_after_tuning", "test_perplexity_at_most_5_percent_worse"):
        assert f"PASSED {example}{name}" in summary, res.stdout[-3000:]
    gate = json.loads((out / "gate.json").read_text())["status"]
    assert any(line.startswith(f"{'PASSED' if gate == 'pass' else 'FAILED'} {example}test_release_gate_passes")
               for line in summary), res.stdout[-3000:]
    assert res.returncode == (1 if any(line.startswith("FAILED") for line in summary) else 0), res.stdout[-3000:]
    # As two words the run folder is refused: pytest would take it for a test path when it picks the rootdir.
    res = subprocess.run([*cmd, "--tunebench-run", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 4 and f"write --tunebench-run={out}" in res.stderr, res.stderr[-2000:]


def test_compare_builds_a_leaderboard(smoke_run, tmp_path):
    out, _, _ = smoke_run
    res = tunebench("compare", str(out), str(out), "--out", str(tmp_path / "board.md"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "perplexity/test" in (tmp_path / "board.md").read_text()
