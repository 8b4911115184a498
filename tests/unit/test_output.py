"""Quiet by default (issue 40, item 7), in a fresh process each: the terminal gets tunebench's lines, library errors
and one bar per stage; library log lines, Python warnings and library handlers' output go to the run's log; -v
shows everything. The smoke run's terminal is counted in tests/integration/test_pipeline.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from e2e import bar_names, warning_lines

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, sys, warnings
from tunebench.core import output

output.setup(verbose=sys.argv[2] == "-v")
logging.getLogger("tunebench.demo").info("ours before the folder")
logging.getLogger("somelib").warning("a library warning before the folder")
output.log_to(sys.argv[1])
warnings.warn("a python warning")
logging.getLogger("somelib.sub").warning("a library warning")
logging.getLogger("somelib").error("a library error")
from transformers.utils import logging as hf_logging  # installs its own terminal handler on first use
hf_logging.get_logger("transformers.demo").warning("a transformers warning")
with output.prints_to_log("somelib"):
    print("a library banner")
with output.stage("eval base"):
    for desc in ("perplexity", "generate[greedy]"):
        bar = output.bar(total=4, desc=desc)
        for _ in range(4):
            bar.update(1)
        bar.close()
    for _ in output.bar(range(3), desc="judge"):
        pass
logging.getLogger("tunebench.demo").warning("ours after")
"""


def run(tmp_path: Path, *flags: str) -> tuple[str, str]:
    script = tmp_path / "demo.py"
    script.write_text(textwrap.dedent(SCRIPT))
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEBENCH_", "TQDM_"))}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run(
        [sys.executable, str(script), str(log), *flags], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr, log.read_text()


def test_quiet_terminal_and_everything_in_the_run_log(tmp_path):
    err, log = run(tmp_path, "-q")
    for line in ("ours before the folder", "a library error", "ours after"):
        assert line in err, err
    for line in ("a library warning", "a python warning", "a transformers warning", "a library banner"):
        assert line not in err, err
        assert line in log, log
    assert "a library warning before the folder" in log  # held until the folder was known
    assert "ours after" in log and "ours before the folder" not in log  # ours is in the log from log_to on
    assert bar_names(err) == ["eval base"], err  # one bar for the stage; its loops are its postfix
    assert [line.split(": ", 1)[1] for line in warning_lines(err)] == ["ours after"], err
    assert "generate[greedy]" in err and "judge" in err


def test_verbose_shows_everything_each_loop_its_bar(tmp_path):
    err, log = run(tmp_path, "-v")
    for line in ("a library warning", "a python warning", "a transformers warning", "a library banner", "ours after"):
        assert line in err, err
    assert set(bar_names(err)) >= {"perplexity", "generate[greedy]", "judge"}, err
