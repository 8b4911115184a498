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

from collections import Counter

import fuzz_cases  # tests/fixtures/fuzz_cases.py
import pytest
from fuzz_cases import ACCEPTED, CASES, job_id

WORKERS = 2
JOBS = fuzz_cases.jobs()
BROKEN = [j for j in JOBS if j["case"] in CASES]
SPELLINGS = [j for j in JOBS if j["case"] in ACCEPTED]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    """Every job's outcome, run in WORKERS processes over a template run folder made once."""
    root = tmp_path_factory.mktemp("fuzz")
    return fuzz_cases.run_workers(JOBS, fuzz_cases.make_template(root / "template"), root, WORKERS)


@pytest.mark.parametrize("job", BROKEN, ids=job_id)
def test_a_broken_file_exits_2_with_one_paragraph_and_changes_nothing(outcomes, job):
    problems = fuzz_cases.problems(outcomes[job_id(job)])
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("job", SPELLINGS, ids=job_id)
def test_a_bom_or_crlf_file_reads_as_the_plain_one(outcomes, job):
    plain = outcomes[job_id({**job, "case": "good"})]
    assert plain["code"] in (0, 1, 3) and not plain["traceback"], fuzz_cases.paragraphs(plain) or plain["traceback"]
    problems = fuzz_cases.problems(outcomes[job_id(job)], plain)
    assert not problems, "; ".join(problems)


def test_the_suite_covers_every_kind_and_case():
    """Its size: every kind of file, every case that applies to it, every command (or reader) that reads it."""
    kinds = Counter(j["kind"] for j in BROKEN)
    assert set(kinds) == {k.name for k in fuzz_cases.KINDS}
    assert {j["case"] for j in BROKEN} == set(CASES)
    readers = {(j["kind"], j["target"]) for j in BROKEN}
    assert len(BROKEN) >= 290 and len(readers) >= 29, (len(BROKEN), len(readers))
