"""Session fixtures of the integration tests: one `tunebench run smoke` folder, and every `tunebench --help` example run
as written on a copy of it. test_pipeline.py reads both; test_llamacpp.py scores and serves the examples' exports."""

from __future__ import annotations

import shlex
import shutil
import time

import pytest
from e2e import PARSED_ONLY, check_parsed_only, help_examples, tunebench, tunebench_in


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "smoke"
    t0 = time.perf_counter()
    res = tunebench("run", "smoke", "--out", str(out))
    assert res.returncode == 0, res.stderr[-4000:]
    return out, res, time.perf_counter() - t0


@pytest.fixture(scope="session")
def examples(smoke_run, tmp_path_factory):
    """Every `tunebench --help` example in order, from a folder whose runs/smoke is a copy of the smoke run (runs/a
    and runs/b name it too, for `compare`): {example: CompletedProcess}, and that folder."""
    out, _, _ = smoke_run
    cwd = tmp_path_factory.mktemp("examples")
    shutil.copytree(out, cwd / "runs" / "smoke", ignore=shutil.ignore_patterns("checkpoints"))
    for name in ("a", "b"):
        (cwd / "runs" / name).symlink_to("smoke")
    done = {}
    for argv in help_examples():
        key = shlex.join(argv)
        if key in PARSED_ONLY:
            done[key] = check_parsed_only(argv)
        else:  # the chat reads /help, then end of input
            done[key] = tunebench_in(cwd, *argv, stdin="/help\n" if argv[0] == "chat" else None)
    return done, cwd
