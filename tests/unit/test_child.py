"""core.child: the one child-process runner (spec in, JSON out), on a tiny real child module."""

from __future__ import annotations

import textwrap

import pytest

from tunebench.core.child import SPEC, ChildError, run_child


@pytest.fixture
def child_module(tmp_path, monkeypatch):
    """A module ``tb_child_probe`` that does what its spec says: write, fail, sleep or write then exit 3."""
    (tmp_path / "tb_child_probe.py").write_text(
        textwrap.dedent(
            """
            import json, sys, time
            spec = json.load(open(sys.argv[-2] if len(sys.argv) > 2 else sys.argv[-1]))
            out = sys.argv[-1] if len(sys.argv) > 2 else spec["result"]
            print("child says", spec["say"], flush=True)
            if spec.get("sleep"):
                json.dump({"partial": True}, open(out, "w"))
                time.sleep(spec["sleep"])
            if spec.get("write", True):
                json.dump({"echo": spec["say"]}, open(out, "w"))
            sys.exit(spec.get("exit", 0))
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "tb_child_probe"


def test_returns_the_json_the_child_wrote_and_echoes_its_output(child_module, capfd):
    assert run_child(child_module, {"say": "hi"}) == {"echo": "hi"}
    assert "child says hi" in capfd.readouterr().err


def test_a_child_that_writes_nothing_is_an_error_with_its_last_output(child_module):
    with pytest.raises(ChildError, match="status 0 and wrote no result") as e:
        run_child(child_module, {"say": "nothing", "write": False})
    assert "child says nothing" in e.value.tail and e.value.data is None


def test_non_zero_exit_returns_the_json_unless_checked(child_module):
    assert run_child(child_module, {"say": "x", "exit": 3}) == {"echo": "x"}
    with pytest.raises(ChildError) as e:
        run_child(child_module, {"say": "x", "exit": 3}, check=True)
    assert e.value.returncode == 3 and e.value.data == {"echo": "x"}


def test_timeout_stops_the_child_and_keeps_what_it_wrote(child_module, tmp_path):
    out = tmp_path / "res.json"
    spec = {"say": "slow", "sleep": 120, "result": str(out)}
    with pytest.raises(ChildError, match="did not finish") as e:
        run_child(child_module, spec, out, spec_path=tmp_path / "s.json", args=(SPEC,), timeout=5, own_group=True)
    assert e.value.timed_out and e.value.returncode is None and e.value.data == {"partial": True}


def test_a_training_child_that_dies_of_a_passed_on_sigterm_is_interrupted_not_failed():
    """`tunebench sweep` stopped by SIGTERM while its trial's child was still starting up: the child died of the signal
    passed on to it (SIGABRT inside an import, seen under two test workers), and the trial was recorded as failed
    instead of interrupted, so the sweep went on. run_child reports any unclean end after a passed-on SIGTERM as an
    interruption."""
    import os
    import signal
    import sys
    import threading

    from tunebench.app.pipeline import run_child
    from tunebench.core.errors import EXIT_INTERRUPTED

    child = "import os, signal, time; signal.signal(signal.SIGTERM, lambda *a: os.abort()); time.sleep(60)"
    threading.Timer(2.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    assert run_child([sys.executable, "-c", child]) == EXIT_INTERRUPTED
    assert run_child([sys.executable, "-c", "raise SystemExit(3)"]) == 3  # no signal: the child's own code
