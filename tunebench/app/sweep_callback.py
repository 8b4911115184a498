"""The sweep trial's pruning callback (a transformers ``TrainerCallback``), at module level so it reads alone.

Imported by ``sweep_trial.report_callback`` when the trial's child trains (this module imports transformers, which
the child imports after Unsloth).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from transformers import TrainerCallback  # heavy: transformers (this module is imported lazily)

log = logging.getLogger("tunebench.app.sweep_trial")  # the messages read as the trial's, as before


class ReportToTrial(TrainerCallback):
    """Report each validation loss to an Optuna trial as a perplexity; stop training when its pruner says so.

    Args:
        trial: the running Optuna trial.
        outcome: the ``sweep_trial.Outcome`` that records the last value reported and whether the trial was pruned.
    """

    def __init__(self, trial: Any, outcome: Any) -> None:
        self.trial = trial
        self.outcome = outcome

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not math.isfinite(loss):
            return
        value = math.exp(loss)
        self.trial.report(value, state.global_step)  # the same scale as the objective: perplexity
        self.outcome.step, self.outcome.value = state.global_step, value
        if state.max_steps and state.global_step >= state.max_steps:
            return  # the last evaluation: training is over, nothing left to save by pruning
        if self.trial.should_prune():
            log.info(
                "trial %d pruned at step %d (validation perplexity %.4f)", self.trial.number, state.global_step, value
            )
            self.outcome.pruned = True
            control.should_training_stop = True
