"""`tunebench sweep` end to end on the packaged model, real TRL training and a real Optuna SQLite study.

One study is built in four steps, each a real invocation (one training step per trial, 3 validation conversations):
two worker processes share it (--trials 2), a third is stopped by SIGTERM during its trial, then the same command
resumes to 3 finished trials (in this process, watching which files it opens), and once more finds N met.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.slow  # ~3 min on 2 cores: 4 trainings of one step each, 5 sweep processes

ROOT = Path(__file__).resolve().parents[2]
SPACE = """\
lora.r: {type: categorical, choices: [4, 8]}
lora.target_modules: {type: categorical, choices: [[q_proj, v_proj]]}
train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
"""
OVERRIDES = [
    "train.backend=hf",
    "data.max_train=16",
    "data.max_validation=3",
    "data.max_test=4",
    "data.max_length=64",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.max_steps=1",
    "train.eval_every=1",
    "train.save_every=0",
    "train.warmup_steps=0",
    "eval.bootstrap_samples=200",
    "train.report_to=tensorboard",
]


def sweep_args(tmp: Path, trials: int) -> list[str]:
    return [
        "sweep",
        "smoke",
        "--trials",
        str(trials),
        "--space",
        str(tmp / "space.yaml"),
        "--out",
        str(tmp / "out"),
        "--no-confirm",
        *OVERRIDES,
    ]


def spawn(tmp: Path, trials: int, threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tunebench", *sweep_args(tmp, trials)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def states(out: Path) -> list[tuple[int, str, dict]]:
    study = optuna.load_study(study_name="tunebench-smoke", storage=f"sqlite:///{out / 'study.db'}")
    return [(t.number, t.state.name, t) for t in study.get_trials()]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "space.yaml").write_text(SPACE)
    out, steps, t0 = tmp / "out", {}, time.perf_counter()

    workers = [spawn(tmp, 2, threads=1), spawn(tmp, 2, threads=1)]  # two processes, one SQLite study, a core each
    steps["workers"] = [(w.wait(timeout=900), *w.communicate()) for w in workers]
    steps["after_workers"] = states(out)
    took = {"workers": time.perf_counter() - t0}

    stopped = spawn(tmp, 3)
    trial_file = out / "trials" / "2" / "trial.json"
    deadline = time.time() + 600
    while not trial_file.exists() and stopped.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # the trial's child is starting up
    stopped.send_signal(signal.SIGTERM)
    steps["stopped"] = (stopped.wait(timeout=300), *stopped.communicate())
    steps["after_stop"] = states(out)
    took["stopped"] = time.perf_counter() - t0 - sum(took.values())

    from tunebench.app.cli import main

    opened: list[str] = []
    watching = [True]

    def audit(event, args):
        if watching[0] and event == "open" and isinstance(args[0], (str, os.PathLike)):
            opened.append(os.fspath(args[0]))

    sys.addaudithook(audit)  # hooks cannot be removed: this one stops recording after the resumed run
    steps["resumed"] = main(sweep_args(tmp, 3))
    watching[0] = False
    steps["opened"] = opened
    took["resumed"] = time.perf_counter() - t0 - sum(took.values())

    from tunebench.app.sweep import sweep
    from tunebench.app.sweep_study import SweepOptions

    steps["again"] = sweep(SweepOptions("smoke", 3, OVERRIDES, out, str(tmp / "space.yaml"), confirm=False))
    took["again"] = time.perf_counter() - t0 - sum(took.values())
    print("sweep study built in " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()))
    return out, steps


def test_a_sweep_shows_one_bar_over_its_trials_with_an_eta(study):
    """Each worker's terminal: one bar, over the study's trials (finished ones counted, other workers' included),
    with its elapsed and remaining time; the trials' training bars and library warnings stay off it."""
    from e2e import bar_names

    _, steps = study
    lasts = []
    for code, _, err in steps["workers"]:
        assert code == 0 and bar_names(err) == ["sweep"], err[-3000:]
        lasts.append([s for s in err.replace("\r", "\n").splitlines() if s.startswith("sweep:")][-1])
        assert re.search(r"\b\d/2 \[\d\d:\d\d<", lasts[-1]), lasts[-1]  # finished of 2, elapsed<remaining
        assert "pip install kernels" not in err and "Warning" not in err, err[-3000:]
    assert any(re.search(r"<\d\d:\d\d", last) for last in lasts), lasts  # an ETA once a trial of its own ended


def test_two_workers_share_one_sqlite_study(study):
    out, steps = study
    ran = []
    for code, stdout, stderr in steps["workers"]:
        assert code == 0, stderr[-3000:]
        ran.append(int(re.search(r"sweep: (\d+) trial\(s\) run here", stdout).group(1)))
    finished = [s for _, s, _ in steps["after_workers"] if s == "COMPLETE"]
    assert sum(ran) == len(finished) == len(steps["after_workers"]) == 2  # the study's count is the workers' sum


def test_sigterm_keeps_finished_trials_and_marks_the_cut_one_failed(study):
    out, steps = study
    code, stdout, stderr = steps["stopped"]
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert re.search(r"^interrupted: the sweep in .* stopped during trial 2", stderr, re.M)
    by = {n: (s, t) for n, s, t in steps["after_stop"]}
    assert [by[n][0] for n in (0, 1)] == ["COMPLETE", "COMPLETE"]
    assert by[2][0] == "FAIL" and by[2][1].user_attrs["interrupted"] is True


def test_the_same_command_resumes_to_three_finished_trials_and_reports(study):
    out, steps = study
    assert steps["resumed"] == 0
    trials = {t.number: t for _, _, t in states(out)}
    assert sorted(trials) == [0, 1, 2, 3]
    assert [t.number for t in trials.values() if t.state.name == "COMPLETE"] == [0, 1, 3]
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params  # the cut config again

    summary = json.loads((out / "sweep.json").read_text())
    assert summary["counts"]["complete"] == 3 and summary["counts"]["fail"] == 1
    rows = {r["number"]: r for r in summary["trials"]}
    for n in (0, 1, 3):
        r = rows[n]
        assert r["value"] > 1 and r["ci_low"] <= r["value"] <= r["ci_high"] and r["steps"] == 1 and r["seconds"] > 0
        run = out / "trials" / str(n)
        for rel in ("config.yaml", "adapter/manifest.json", "adapter/adapter_model.safetensors", "loss_curve.png"):
            assert (run / rel).exists(), rel
        assert len(json.loads((run / "validation.json").read_text())["items"]) == 3  # per conversation, paired
    sel = summary["selection"]
    assert sel["best"] == min((0, 1, 3), key=lambda n: rows[n]["value"])
    assert sel["best"] in sel["indistinguishable"] and len(sel["compared"]) == 2
    assert summary["chosen"]["number"] in sel["indistinguishable"]
    assert summary["chosen"]["config_line"].startswith("tunebench run smoke train.backend=hf")
    assert "lora.target_modules=q_proj,v_proj" in summary["chosen"]["config_line"]
    report = (out / "sweep.md").read_text()
    for part in (
        "## Leaderboard",
        "Indistinguishable from the best: trials",
        "winner's curse",
        "## Parameter importances",
        "(chosen)",
        summary["chosen"]["config_line"],
    ):
        assert part in report, part
    assert (out / "history.png").stat().st_size > 1000 and "history.png" in report
    assert json.loads((out / "stages.json").read_text())["data"]  # one data stage for the whole study


def test_a_rerun_with_n_already_met_trains_nothing(study):
    out, steps = study
    assert steps["again"].ran == 0 and len(states(out)) == 4


def test_the_sweep_never_reads_the_test_split(study):
    out, steps = study
    prepared = json.loads((out / "data" / "prepared.json").read_text())
    assert prepared["encoded"]["test"] == [] and prepared["conversations"]["test"] == []
    assert prepared["encoded"]["validation"] and prepared["report"]["splits"]["test"]["conversations"] > 0
    assert not list(out.rglob("test.jsonl"))
    assert not [p for p in steps["opened"] if Path(p).name.startswith("test.")]  # the resumed run opened no test file
    assert any(p.endswith("prepared.json") for p in steps["opened"])  # (the hook saw the sweep's own reads)
    manifest = json.loads((out / "trials" / "3" / "adapter" / "manifest.json").read_text())
    assert manifest["data"]["splits"]["test"] == 0


def test_tensorboard_events_of_a_trial_are_written_and_readable(study):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = study
    acc = EventAccumulator(str(out / "trials" / "0" / "tracking" / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "eval/loss", "eval/perplexity/validation"} <= scalars, scalars  # TRL's and the objective
    (ppl,) = acc.Scalars("eval/perplexity/validation")
    summary = json.loads((out / "sweep.json").read_text())
    assert ppl.value == pytest.approx(next(r["value"] for r in summary["trials"] if r["number"] == 0), rel=1e-5)
