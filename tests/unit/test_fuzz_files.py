"""Fuzz suite (issue 37): broken files of every kind tunebench reads, through every command that reads each kind.

Each kind of file (a preset, a command-line override, a run's config.yaml, stages.json, results.json,
comparison.json, gate.json and gate-<name>.json, rules, probe files, judge templates and prompt sets, sweep spaces,
data as .jsonl, .json and .parquet, a run's data split) is broken in every way a file gets broken (fuzz_cases.CASES:
not UTF-8, UTF-16, CRLF with a bad byte, 3,000-deep nesting, a lone surrogate, an alias bomb, 0 bytes, cut short,
the wrong top-level type, a field of the wrong type, one 50 MiB line) and handed to each command that reads it,
choosing commands that stop before a model loads (`config`, `report`, `gate`, `compare`, `eval RUN`, `sweep`); where
no command reads a kind before a model loads, to the reader that command calls first (the data step's, the sweep
summary's, `run`'s stage check). Every case must exit 2 with one paragraph that names the file (and the line,
encoding, nesting, surrogate or alias where that is the fault), no traceback, within a memory cap (2 GiB of
address space) and a time cap, and leave every file of the case's folder (the run folder and the user's own files)
byte-identical, with nothing added. A UTF-8 byte-order mark and CRLF line ends on a well-formed file are accepted
spellings: they must read as the plain file does.

The cases run in two worker processes (tests/fixtures/fuzz_worker.py) calling tunebench's ``main`` in-process,
many cases each, instead of one ``python -m tunebench`` per case.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fuzz_cases  # tests/fixtures/fuzz_cases.py
import pytest
from fuzz_cases import ACCEPTED, CASES, job_id

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "fixtures" / "fuzz_worker.py"
WORKERS = 2
JOBS = fuzz_cases.jobs()
BROKEN = [j for j in JOBS if j["case"] in CASES]
SPELLINGS = [j for j in JOBS if j["case"] in ACCEPTED]
MESSAGE_LIMIT = 3000
"""Characters a message may have: the readers cut every value they show (a case holds a 50 MiB one)."""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    """Every job's outcome, run in WORKERS processes over a template run folder made once."""
    root = tmp_path_factory.mktemp("fuzz")
    template = fuzz_cases.make_template(root / "template")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    procs = []
    for w in range(WORKERS):
        jobs, results = root / f"jobs-{w}.json", root / f"results-{w}.json"
        jobs.write_text(json.dumps(JOBS[w::WORKERS]), encoding="utf-8")
        cmd = [sys.executable, str(WORKER), str(template), str(jobs), str(results), str(root / f"cases-{w}")]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True), results))
    out = {}
    for proc, results in procs:
        _, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, f"a fuzz worker died (exit {proc.returncode}): {err[-3000:]}"
        out.update({job_id(r): r for r in json.loads(results.read_text(encoding="utf-8"))})
    return out


def _paragraphs(r: dict) -> list[str]:
    """The error paragraphs a case printed: a command's ``error: ...`` lines, or a reader's message."""
    if r["target"].startswith("call:"):
        return [r["message"]] if r["message"] else []
    lines = re.split(r"[\r\n]+", r["stderr"])
    return [line for line in lines if line.startswith(("error: ", "gate: invalid input: "))]


@pytest.mark.parametrize("job", BROKEN, ids=job_id)
def test_a_broken_file_exits_2_with_one_paragraph_and_changes_nothing(outcomes, job):
    r = outcomes[job_id(job)]
    assert r["traceback"] is None, r["traceback"]
    assert "Traceback" not in r["stderr"], r["stderr"]
    paragraphs = _paragraphs(r)
    assert r["code"] == 2, f"exit {r['code']}: {paragraphs or r['stderr'][-2000:]}"
    assert len(paragraphs) == 1, r["stderr"][-3000:]
    message = paragraphs[0]
    assert "\n" not in message and len(message) < MESSAGE_LIMIT, message[:MESSAGE_LIMIT]
    where = Path(r["file"]).name if r["file"] else "command line"
    assert where in message, f"{where!r} not named: {message}"
    if r["needle"]:
        assert r["needle"] in message, f"{r['needle']!r} not in: {message}"
    assert r["changed"] == [], f"files changed by a command that exited 2: {r['changed']}"


@pytest.mark.parametrize("job", SPELLINGS, ids=job_id)
def test_a_bom_or_crlf_file_reads_as_the_plain_one(outcomes, job):
    r, plain = outcomes[job_id(job)], outcomes[job_id({**job, "case": "good"})]
    assert r["traceback"] is None and plain["traceback"] is None, r["traceback"] or plain["traceback"]
    assert plain["code"] in (0, 1, 3), f"the well-formed file itself fails: {_paragraphs(plain)}"
    assert r["code"] == plain["code"], f"exit {r['code']} where the plain file exits {plain['code']}: {_paragraphs(r)}"


def test_the_suite_covers_every_kind_and_case():
    """Its size: every kind of file, every case that applies to it, every command (or reader) that reads it."""
    kinds = Counter(j["kind"] for j in BROKEN)
    assert set(kinds) == {k.name for k in fuzz_cases.KINDS}
    assert {j["case"] for j in BROKEN} == set(CASES)
    readers = {(j["kind"], j["target"]) for j in BROKEN}
    assert len(BROKEN) >= 290 and len(readers) >= 29, (len(BROKEN), len(readers))
