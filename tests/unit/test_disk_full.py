"""A full disk (ENOSPC) while writing results, a report or a checkpoint: exit 2 naming the path and the space, no
traceback, and the file that was there before intact. On a real small filesystem: a tmpfs, which needs root (CI
has it); skipped with the reason where it cannot be mounted."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import synthetic

from tunebench.app.cli import main
from tunebench.core.errors import DiskFull
from tunebench.core.io import atomic_write_json, atomic_write_text
from tunebench.train.checkpoints import checkpoint_problem, checkpoints


def _mount(where: Path, size: str) -> Path:
    where.mkdir(parents=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}): needs root or CAP_SYS_ADMIN")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root or CAP_SYS_ADMIN")
    return where


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards."""
    where = _mount(tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}", "1m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(fs: Path, leave: int = 0) -> None:
    """Fill ``fs`` but ``leave`` bytes (to within a page)."""
    free = shutil.disk_usage(fs).free - leave
    if free > 0:
        with open(fs / "filler", "wb") as f:
            try:
                f.write(b"\0" * free)
            except OSError:
                pass


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_names_the_path(small_fs):
    target = small_fs / "results.json"
    atomic_write_json(target, {"old": True})
    _fill(small_fs, leave=4096)
    with pytest.raises(DiskFull) as err:
        atomic_write_text(target, "x" * 200_000)
    msg = str(err.value)
    assert str(target) in msg and "disk is full" in msg and "195.3 KiB" in msg and "free there" in msg, msg
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler", "results.json"]  # no temp file left


def test_report_on_a_full_disk_exits_2_and_keeps_the_previous_report(small_fs, capsys):
    run = synthetic.write_run(small_fs / "run", *synthetic.make_pair())
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_text()
    capsys.readouterr()
    _fill(small_fs)
    code = main(["report", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "disk is full" in err and str(run) in err and "Traceback" not in err, err
    assert (run / "report.md").read_text() == report
    assert not [p for p in run.rglob("*.tmp")]


@pytest.mark.slow  # trains two steps of the packaged model
def test_checkpoint_save_on_a_full_disk_exits_2_and_keeps_the_previous_checkpoint(tmp_path, capsys):
    """Room for one checkpoint (~60 MB: the r=16 adapter and its Adam moments) but not two: the second save fails,
    is named with the space it needed, and the first checkpoint stays complete and resumable."""
    fs = _mount(tmp_path / "fs", "100m")
    try:
        run = fs / "run"
        code = main(
            [
                "train",
                "smoke",
                "train.backend=hf",
                "train.max_steps=2",
                "train.save_every=1",
                "train.eval_every=0",
                "data.max_train=8",
                "data.max_validation=2",
                "data.max_test=2",
                "data.max_length=96",
                "train.batch_size=2",
                "train.warmup_steps=0",
                "--out",
                str(run),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2, err[-3000:]
        assert "disk is full" in err and "checkpoint-2" in err and "Traceback" not in err, err[-3000:]
        found = checkpoints(run / "checkpoints")
        assert [p.name for p in found] == ["checkpoint-1"]
        assert checkpoint_problem(found[0]) is None
        assert not (run / "checkpoints" / ".staging").exists()
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)
