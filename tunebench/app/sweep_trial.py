"""One sweep trial's training, in a process of its own: ``python -m tunebench.app.sweep_trial RUN``.

The study's storage URL comes in the environment (``STORAGE_ENV``), never in a file: it may hold a password.

A child for the reason `tunebench run` trains in one: Unsloth must be imported before transformers, and the
objective (scored by the sweep's own process) must never run on Unsloth-patched transformers. The child reads
``RUN/trial.json`` (the study's name, the trial's id, the pruner, the study's prepared data), trains
through ``train.trainer.train`` with the study's prepared data, and reports each validation loss to its Optuna trial
as a perplexity, so the pruner can stop it. It writes ``RUN/outcome.json`` (pruned or not, the last value
reported) and exits 0, 130 when interrupted (SIGINT or SIGTERM: the step finishes and a checkpoint is saved), or
the exit code of a tunebench error, printed as one paragraph.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunebench.app.sweep_storage import open_storage
from tunebench.core import output
from tunebench.core.config import load_config
from tunebench.core.errors import EXIT_INTERRUPTED, ConfigError, TunebenchError
from tunebench.core.io import atomic_write_json, read_json
from tunebench.core.signals import sigterm_as_interrupt
from tunebench.data.conversations import prepared_from_dict
from tunebench.evals.validation import require_no_test
from tunebench.train.backends import import_unsloth
from tunebench.train.trainer import train

log = logging.getLogger(__name__)

STORAGE_ENV = "TUNEBENCH_SWEEP_STORAGE"
"""The study's storage URL, for the trial's child."""
TRIAL_FILE = "trial.json"
OUTCOME_FILE = "outcome.json"


@dataclass
class TrialSpec:
    """What the sweep tells a trial's child (RUN/trial.json)."""

    study: str
    trial_id: int
    """Optuna's storage id of the trial (not its number): the child reports to this trial."""
    number: int
    pruner: str
    max_steps: int
    """The most optimizer steps any trial of the study can take (Hyperband's maximum resource)."""
    data: str
    """The study's prepared data (data/prepared.json): no test split in it."""
    report: bool = True
    """Report validation losses to the trial (the first seed of a configuration; later seeds only train)."""

    @classmethod
    def read(cls, run_dir: Path) -> TrialSpec:
        return cls(**read_json(run_dir / TRIAL_FILE))

    def write(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / TRIAL_FILE, asdict(self))


@dataclass
class Outcome:
    """What the child leaves for the sweep (RUN/outcome.json)."""

    pruned: bool = False
    step: int | None = None
    """The step of the last value reported (where a pruned trial stopped)."""
    value: float | None = None
    """The last validation perplexity reported."""


def make_pruner(name: str, max_steps: int) -> Any:
    """Optuna's pruner for ``--pruner``: the median rule (after 3 finished trials, never on step 0, which is the base
    model for every trial), Hyperband over optimizer steps, or none."""
    import optuna  # optional: the sweep extra

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_steps, 1))
    return optuna.pruners.NopPruner()


def report_callback(trial: Any, outcome: Outcome) -> Any:
    """A TrainerCallback that reports each validation loss to ``trial`` as a perplexity and stops training when the
    pruner says so (recorded in ``outcome``)."""
    from tunebench.app.sweep_callback import ReportToTrial  # heavy: transformers, after Unsloth (main imports it)

    return ReportToTrial(trial, outcome)


def open_trial(spec: TrialSpec) -> Any:
    """The running Optuna trial ``spec`` names, through the study's storage."""
    import optuna  # optional: the sweep extra

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = os.environ.get(STORAGE_ENV)
    if not url:
        raise ConfigError(
            f"{STORAGE_ENV} is not set: a sweep trial runs as `tunebench sweep`'s child, which names "
            "the study's storage there"
        )
    storage = open_storage(url)
    study = optuna.load_study(study_name=spec.study, storage=storage, pruner=make_pruner(spec.pruner, spec.max_steps))
    return optuna.trial.Trial(study, spec.trial_id)


def run_trial(run_dir: Path) -> int:
    """Train the trial in ``run_dir``; returns the exit code."""
    spec = TrialSpec.read(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if cfg.train.backend == "unsloth":
        import_unsloth()  # before transformers: Unsloth patches it on import
    prepared = prepared_from_dict(read_json(spec.data))
    require_no_test(prepared, spec.data)
    outcome = Outcome()
    callbacks = [report_callback(open_trial(spec), outcome)] if spec.report else []
    result = train(cfg, run_dir, resume=True, prepared=prepared, extra_callbacks=callbacks)
    if result.interrupted:
        return EXIT_INTERRUPTED
    atomic_write_json(run_dir / OUTCOME_FILE, asdict(outcome))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    output.setup()  # as the sweep's (quiet unless -v; the sweep shows the bar over trials)
    output.log_to(Path(argv[0]) / "run.log")
    try:
        with sigterm_as_interrupt():
            return run_trial(Path(argv[0]))
    except TunebenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
