"""The evaluation's metrics, logged to the trackers ``train.report_to`` names, beside the training TRL logged there.

Only tensorboard is installed with the ``track`` extra; mlflow, wandb and trackio are each the user's own install
and are imported only when named. A tracker that is named but missing is a warning here, not an error: training
already refused to start without it (transformers checks ``report_to`` when the trainer is built).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tunebench.core import tracking

log = logging.getLogger(__name__)


def log_metrics(
    report_to: Sequence[str], run_dir: str | Path, metrics: dict[str, float], step: int = 0, run_name: str | None = None
) -> list[str]:
    """Log ``metrics`` (name -> value; names like ``eval/tuned/perplexity/test``) at ``step`` to every tracker on.

    Returns:
        The trackers written to.
    """
    written = []
    values = {k: float(v) for k, v in metrics.items() if v is not None}
    for name in tracking.active(report_to):
        try:
            with tracking.tracker_environment(report_to, run_dir):
                _WRITERS[name](Path(run_dir), values, step, run_name or Path(run_dir).name)
            written.append(name)
        except ImportError as e:
            log.warning(
                "train.report_to names %s, which does not import here (%s): the evaluation's metrics were "
                "not logged to it",
                name,
                e,
            )
    return written


def _tensorboard(run_dir: Path, values: dict[str, float], step: int, run_name: str) -> None:
    from torch.utils.tensorboard import SummaryWriter  # heavy: torch's writer (needs the tensorboard package)

    writer = SummaryWriter(log_dir=str(tracking.tensorboard_dir(run_dir)))
    try:
        for k, v in values.items():
            writer.add_scalar(k, v, step)
    finally:
        writer.close()


def _mlflow(run_dir: Path, values: dict[str, float], step: int, run_name: str) -> None:
    import mlflow  # optional: the user's own install

    with mlflow.start_run(run_name=f"{run_name}-eval"):
        mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)


def _wandb(run_dir: Path, values: dict[str, float], step: int, run_name: str) -> None:
    import wandb  # optional: the user's own install

    run = wandb.init(name=f"{run_name}-eval", dir=str(tracking.tracking_dir(run_dir)), reinit=True)
    run.log(values, step=step)
    run.finish()


def _trackio(run_dir: Path, values: dict[str, float], step: int, run_name: str) -> None:
    import trackio  # optional: the user's own install

    trackio.init(project="tunebench", name=f"{run_name}-eval")
    trackio.log(values, step=step)
    trackio.finish()


_WRITERS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb, "trackio": _trackio}


def comparison_metrics(rows: Sequence[object]) -> dict[str, float]:
    """``eval/base/<metric>``, ``eval/tuned/<metric>`` and ``eval/delta/<metric>`` of a comparison's rows."""
    out: dict[str, float] = {}
    for r in rows:
        for side in ("base", "tuned", "delta"):
            v = getattr(r, side, None)
            if isinstance(v, (int, float)):
                out[f"eval/{side}/{r.metric}"] = float(v)
    return out
