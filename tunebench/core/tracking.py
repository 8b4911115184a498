"""Where experiment trackers write (``train.report_to``): one place per run folder, offline unless asked otherwise.

Training (TRL's own callbacks) and the evaluation's metrics (``reports.tracking``) both read these paths, so a
run's tracker holds its loss curve and its results side by side.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")
"""What ``train.report_to`` may name besides ``none``."""


def active(report_to: Sequence[str]) -> list[str]:
    """The trackers that are on (``["none"]`` -> [])."""
    return [t for t in report_to if t != "none"]


def tracking_dir(run_dir: str | Path) -> Path:
    """RUN/tracking: every local tracker's files."""
    return Path(run_dir) / "tracking"


def tensorboard_dir(run_dir: str | Path) -> Path:
    """RUN/tracking/tensorboard: TRL's event files and the evaluation's, in one log dir."""
    return tracking_dir(run_dir) / "tensorboard"


def tracker_env(report_to: Sequence[str], run_dir: str | Path) -> dict[str, str]:
    """Environment that keeps each tracker local to the run folder; a value the user set already wins.

    tensorboard: ``TENSORBOARD_LOGGING_DIR`` (transformers' TensorBoardCallback reads it); mlflow: a file store in
    the run folder; wandb: offline, its files in the run folder (``wandb sync`` uploads them later); trackio is local
    by design (its own cache folder) and needs nothing.
    """
    on = active(report_to)
    env: dict[str, str] = {}
    if "tensorboard" in on:
        env["TENSORBOARD_LOGGING_DIR"] = str(tensorboard_dir(run_dir))
    if "mlflow" in on:
        env["MLFLOW_TRACKING_URI"] = (tracking_dir(run_dir) / "mlruns").resolve().as_uri()
    if "wandb" in on:
        env["WANDB_MODE"] = "offline"
        env["WANDB_DIR"] = str(tracking_dir(run_dir))
    return {k: v for k, v in env.items() if k not in os.environ}


@contextlib.contextmanager
def tracker_environment(report_to: Sequence[str], run_dir: str | Path) -> Iterator[None]:
    """Within the block, ``tracker_env``'s variables are set (and the folders exist); afterwards they are gone."""
    env = tracker_env(report_to, run_dir)
    if active(report_to):
        tracking_dir(run_dir).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    try:
        yield
    finally:
        for k in env:
            os.environ.pop(k, None)
