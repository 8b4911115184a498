"""`tunebench sweep` workers on many machines, as separate processes sharing one study: on a real PostgreSQL server
(a server of the test's own, tests/fixtures/pg_server.py) and on an Optuna journal file (the sites without a database).

For each storage, the same story (4 trials of one training step on the 2-layer random Llama, 3 validation
conversations): workers A and B start together, each with its own folder, as two machines would; A is killed
(SIGKILL, its trial's child with it) during its second trial; C, a replacement machine, joins at once. The study must
end with exactly 4 finished trials and the killed one failed and run again (the heartbeat: 3 s here, so lost after
9 s), every finished trial run by exactly one worker, and B and C must report the same selection.
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
from pg_server import postgres_server

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.slow  # ~2 min a storage on 2 cores: 5 trainings of one step, 3 worker processes

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 4
HEARTBEAT = 3
STUDY = "workers"
SPACE = """\
lora.r: {type: categorical, choices: [4, 8]}
lora.target_modules: {type: categorical, choices: [[q_proj, v_proj]]}
train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
"""


def overrides(model: Path) -> list[str]:
    return [
        f"model.ref={model}",
        "train.backend=hf",
        "data.max_train=8",
        "data.max_validation=3",
        "data.max_test=4",
        "data.max_length=64",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_steps=1",
        "train.eval_every=0",
        "train.save_every=0",
        "train.warmup_steps=0",
        "train.gradient_checkpointing=false",
        "eval.bootstrap_samples=200",
    ]


def spawn(tmp: Path, name: str, url: str, model: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """One worker, as a machine would run it: the same command, its own folder; its output in tmp/<name>.log.
    Its own session, so killing it kills its trial's child too, as losing the machine would."""
    args = [
        *("sweep", "smoke", "--trials", str(TRIALS), "--space", str(tmp / "space.yaml")),
        *("--storage", url, "--study", STUDY, "--heartbeat", str(HEARTBEAT), "--pruner", "none", "--no-confirm"),
        *("--out", str(tmp / name), *overrides(model)),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with open(tmp / f"{name}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tunebench", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def started(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "trials").glob("*/trial.json"))


def run_story(tmp: Path, url: str, model: Path, password: str | None = None) -> dict:
    (tmp / "space.yaml").write_text(SPACE)
    a, b = spawn(tmp, "a", url, model), spawn(tmp, "b", url, model)
    deadline = time.time() + 600
    while len(started(tmp / "a")) < 2 and a.poll() is None and time.time() < deadline:
        time.sleep(0.3)
    assert len(started(tmp / "a")) == 2, f"worker A never began a second trial:\n{(tmp / 'a.log').read_text()[-3000:]}"
    time.sleep(1.5)  # its trial's child is loading
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    (killed_in,) = [run for run in started(tmp / "a") if not (run / "validation.json").exists()]
    if password:  # C keeps the password off its command line: libpq reads PGPASSWORD
        c = spawn(tmp, "c", url.replace(f":{password}@", "@"), model, {"PGPASSWORD": password})
    else:
        c = spawn(tmp, "c", url, model)
    codes = {n: w.wait(timeout=900) for n, w in (("b", b), ("c", c))}
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url))
    return {"tmp": tmp, "codes": codes, "killed_in": killed_in, "trials": study.get_trials()}


def open_storage(url: str):
    from tunebench.app.sweep_storage import open_storage as open_

    return open_(url)


@pytest.fixture(scope="module", params=["postgresql", "journal"])
def story(request, tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp(request.param)
    t0 = time.perf_counter()
    if request.param == "journal":
        (tmp / "shared").mkdir()  # the disk every machine mounts
        result = run_story(tmp, f"journal:{tmp / 'shared' / 'study.journal'}", tiny_llama_dir)
    else:
        with postgres_server() as (url, password):
            result = run_story(tmp, url, tiny_llama_dir, password)
        result["password"] = password
    print(f"{request.param}: the workers' story took {time.perf_counter() - t0:.0f} s")
    return result


def log_of(story: dict, name: str) -> str:
    return (story["tmp"] / f"{name}.log").read_text()


def test_both_workers_finish_and_report(story):
    for name, code in story["codes"].items():
        assert code == 0, log_of(story, name)[-4000:]
        assert "Traceback" not in log_of(story, name)


def test_the_study_ends_with_exactly_n_trials_none_duplicated_or_lost(story):
    trials = story["trials"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(complete) == TRIALS and len(failed) == 1 and len(trials) == TRIALS + 1  # none running, none queued
    assert sorted(t.number for t in trials) == list(range(TRIALS + 1))

    # every finished trial ran in exactly one worker's folder, its adapter and scores there
    where = {}
    for name in ("a", "b", "c"):
        for run in started(story["tmp"] / name):
            if (run / "validation.json").is_file():
                assert int(run.name) not in where, f"trial {run.name} ran twice"
                where[int(run.name)] = name
    assert sorted(where) == sorted(t.number for t in complete)
    assert where  # and by the workers that lived: A's completed ones too
    ran_here = {n: int(re.search(r"sweep: (\d+) trial\(s\) run here", log_of(story, n)).group(1)) for n in "bc"}
    assert sum(ran_here.values()) == sum(1 for w in where.values() if w != "a")


def test_the_killed_workers_trial_is_failed_and_run_again(story):
    trials = {t.number: t for t in story["trials"]}
    (lost,) = [t for t in trials.values() if t.state.name == "FAIL"]
    assert int(story["killed_in"].name) == lost.number  # the trial A was running when it died
    assert lost.user_attrs["lost"] is True and f"no heartbeat for {3 * HEARTBEAT} s" in lost.user_attrs["error"]
    assert not (story["killed_in"] / "validation.json").exists()
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == lost.number]
    assert retry.state.name == "COMPLETE" and retry.params == lost.params  # the same configuration, run again


def test_both_workers_report_the_same_selection(story):
    b, c = (json.loads((story["tmp"] / n / "sweep.json").read_text()) for n in "bc")
    assert b["selection"] is not None
    assert b["selection"] == c["selection"] and b["chosen"] == c["chosen"] and b["counts"] == c["counts"]
    assert b["counts"]["complete"] == TRIALS and b["counts"]["fail"] == 1
    assert [r["number"] for r in b["trials"]] == [r["number"] for r in c["trials"]]
    line = [
        [x for x in (story["tmp"] / n / "sweep.md").read_text().splitlines() if "Indistinguishable from the best" in x]
        for n in "bc"
    ]
    assert line[0] and line[0] == line[1]


def test_no_file_holds_the_database_password(story):
    password = story.get("password")
    if password is None:
        pytest.skip("a journal has no password")
    for name in ("a", "b", "c"):
        for path in (story["tmp"] / name).rglob("*"):
            if path.is_file() and path.suffix in (".json", ".md", ".yaml", ".log", ".txt"):
                assert password not in path.read_text(errors="replace"), path
    for name in ("a", "b", "c"):
        assert password not in log_of(story, name)
