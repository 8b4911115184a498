"""The training callbacks (transformers ``TrainerCallback``s), at module level so they can be named and read alone.

Imported by ``trainer.make_callbacks`` when training starts (this module imports transformers). ``run_state`` is the
``run_state.RunState``: the token counter, the signal received, the first non-finite loss.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback  # heavy: transformers (this module is imported lazily)

from tunebench.core import dist, output

log = logging.getLogger("tunebench.train.trainer")  # the messages read as the trainer's, as before


class SignalCallback(TrainerCallback):
    """First SIGINT/SIGTERM: finish the step, save a resumable checkpoint, stop. Second: abort."""

    def __init__(self, state: Any):
        self.run_state = state

    def on_train_begin(self, args, st, control, **kw):
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        if self.run_state.signal is not None:
            raise KeyboardInterrupt
        self.run_state.signal = signal.Signals(signum).name
        log.warning(
            "%s received: saving a resumable checkpoint after this step (again to abort)", self.run_state.signal
        )

    def on_step_end(self, args, st, control, **kw):
        stop = self.run_state.signal is not None
        if dist.world_size() > 1:  # every rank must stop at the same step, or DDP hangs
            stop = any(dist.gather(stop))
            if stop and self.run_state.signal is None:
                self.run_state.signal = "SIGINT (another rank)"
        if stop:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, st, control, **kw):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class NaNGuard(TrainerCallback):
    """Stop on a non-finite loss before it can be checkpointed."""

    def __init__(self, state: Any):
        self.run_state = state

    def on_log(self, args, st, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.run_state.bad_loss = (st.global_step, loss)
            control.should_save = False
            control.should_training_stop = True


class Progress(TrainerCallback):
    """The one progress bar of training: loss, validation loss and tokens/s as its postfix."""

    def __init__(self, state: Any, total_steps: int):
        self.run_state = state
        self.total_steps = total_steps

    def on_train_begin(self, args, st, control, **kw):
        self.bar = output.stage("train", self.total_steps, initial=st.global_step, unit="step", show=dist.is_main())
        self._t0 = time.perf_counter()
        self._tok0 = self.run_state.tokens
        self._step = st.global_step

    def on_log(self, args, st, control, logs=None, **kw):
        logs = logs or {}
        dt = time.perf_counter() - self._t0
        # this process's tokens x processes: the job's rate (the manifest sums the exact counts)
        rate = (self.run_state.tokens - self._tok0) * dist.world_size() / dt if dt > 0 else 0
        post = {"tok/s": f"{rate:,.0f}" if dt > 0 else "-"}
        if "loss" in logs:
            post["loss"] = f"{logs['loss']:.4f}"
        if "eval_loss" in logs:
            post["val"] = f"{logs['eval_loss']:.4f}"
        self.bar.set_postfix(post)

    def on_step_end(self, args, st, control, **kw):
        self.bar.update(st.global_step - self._step)
        self._step = st.global_step

    def on_train_end(self, args, st, control, **kw):
        self.bar.close()


class LogFile(TrainerCallback):
    """Each log dict (loss, learning rate, grad norm, eval loss) as a JSON line in the run's train.log."""

    def __init__(self, log_path: Path | None):
        self.log_path = log_path

    def on_log(self, args, st, control, logs=None, **kw):
        if self.log_path is not None and dist.is_main() and logs:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": st.global_step, **logs}, default=str) + "\n")
