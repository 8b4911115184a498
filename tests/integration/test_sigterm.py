"""SIGTERM (a scheduler's stop) during an evaluation stops it like Ctrl-C: exit 130 within the grace period, the
message says what was kept and how to continue, no results file half-written, and no child process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tunebench.core.io import cache_root


def _own_cache(tmp_path: Path) -> Path:
    """A cache with no answers (generation runs) that shares the dequantized model."""
    own = tmp_path / "cache"
    own.mkdir()
    if cache_root().is_dir():
        for p in cache_root().iterdir():
            if p.name != "generations":
                (own / p.name).symlink_to(p.resolve())
    return own


def test_sigterm_during_an_evaluation_exits_130_and_keeps_nothing_half_written(smol_adapter_run, tmp_path):
    run = smol_adapter_run
    out = tmp_path / "sig" / "results.json"
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "TUNEBENCH_CACHE": str(_own_cache(tmp_path)), "PYTHONUNBUFFERED": "1"}
    with err.open("wb") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunebench",
                "eval",
                "--model",
                "packaged:smollm2-135m-instruct",
                "--data-from",
                str(run),
                "--label",
                "sig",
                "--out",
                str(out),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            text = err.read_text(errors="replace")
            if "generate[" in text or "perplexity" in text:  # evaluating: the model is loaded and working
                break
            time.sleep(0.2)
        assert proc.poll() is None, err.read_text(errors="replace")[-3000:]
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # to the command alone, as `kill PID` or a scheduler does
        code = proc.wait(timeout=60)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = err.read_text(errors="replace")
    assert code == 130, text[-3000:]
    assert "interrupted:" in text and "stopped before" in text and "Continue with" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert waited < 60
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))
    try:  # nothing of its process group is left (an lm-eval child would be killed with it)
        os.killpg(proc.pid, 0)
        left = True
    except ProcessLookupError:
        left = False
    assert not left
