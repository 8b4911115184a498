"""The step timer a benchmark worker hands the suite's trainer: timestamps per optimizer step, tokens, memory."""

from __future__ import annotations

from typing import Any


def make_step_timer(warmup: int, profile_after: int | None = None, profile_steps: int = 0) -> Any:
    """A TrainerCallback that timestamps every optimizer step (after a CUDA sync) and counts tokens.

    Real tokens are counted by the suite's own ``tunebench.train.run_state._count_tokens_hook`` (attention-mask sum, or
    every position of a padding-free row); input positions (padding included) by a second hook. The peak
    memory counters are read and reset when warm-up ends, so the result holds both the peak of the whole
    ``trainer.train()`` and the steady-state peak of the measured steps.

    With ``profile_steps``, the steps after ``profile_after`` (the last measured one) run under torch.profiler
    (``bench.trace``): they leave no step marks, so no measured figure includes the profiler's overhead.
    """
    from tunebench.bench.steptimer import StepTimer  # heavy: transformers' TrainerCallback, imported when needed

    return StepTimer(warmup, profile_after, profile_steps)
