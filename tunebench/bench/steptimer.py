"""The step timer class itself: a transformers ``TrainerCallback``, so this module imports transformers and torch at
the top and is imported only by ``bench.timer.make_step_timer``, inside the worker that trains."""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback

from tunebench.bench.trace import ProfileWindow
from tunebench.train.run_state import TokenCounter, _count_tokens_hook


class StepTimer(TrainerCallback):
    """Timestamps every optimizer step (after a CUDA sync), counts tokens and reads the peak memory counters; see
    ``bench.timer.make_step_timer`` for what each part measures."""

    def __init__(self, warmup: int, profile_after: int | None = None, profile_steps: int = 0) -> None:
        self.warmup = warmup
        self.cuda = torch.cuda.is_available()
        self.counter = TokenCounter()  # written by _count_tokens_hook
        self.positions = 0
        self.marks: list[tuple[int, float, int, int]] = []
        self.waits: list[tuple[int, float, float]] = []  # (step, seconds waiting in the sync, process CPU s)
        self.memory: dict[str, float] = {}
        self._handles: list[Any] = []
        self.window = ProfileWindow(profile_after if profile_after is not None else 0, profile_steps)

    def _positions_hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and ids is not None:
            self.positions += int(ids.numel())

    def _mark(self, step: int) -> None:
        queued = time.perf_counter()
        cpu = time.process_time()
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        # How long the host waited for the GPU at the step's end. A large share means the host had queued work
        # ahead; near 0 is ambiguous under HF's Trainer, which already syncs inside the step (loss, grad norm):
        # see reports/published/2026-12-03-h200-repeats for what it showed.
        self.waits.append((step, now - queued, cpu))
        self.marks.append((step, now, self.counter.tokens, self.positions))

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._handles = [
            _count_tokens_hook(model, self.counter),
            model.register_forward_pre_hook(self._positions_hook, with_kwargs=True),
        ]
        if self.cuda:
            self.memory["resident_at_train_begin_gib"] = torch.cuda.memory_allocated() / 2**30
        self._mark(state.global_step)

    def on_step_end(self, args, state, control, **kw):
        if not self.window.active(state.global_step):
            self._mark(state.global_step)
        self.window.on_step_end(state.global_step, torch.cuda.synchronize if self.cuda else lambda: None)
        if self.cuda and state.global_step == self.warmup:
            self.memory["warmup_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.memory["warmup_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, **kw):
        if self.cuda:
            self.memory["steady_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.memory["steady_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        for h in self._handles:
            h.remove()
        self._handles = []

    def host_summary(self) -> dict[str, float | None]:
        """Over the measured steps: the median share of a step the host spent waiting for the GPU at its end,
        and the process CPU seconds per wall second (all threads; a busy-waiting sync counts as CPU too)."""
        w = [x for x in self.waits if x[0] >= self.warmup]
        m = [x for x in self.marks if x[0] >= self.warmup]
        if len(w) < 2 or len(m) < 2:
            return {"sync_wait_share_median": None, "process_cpu_per_wall": None}
        shares = sorted(w[i][1] / (m[i][1] - m[i - 1][1]) for i in range(1, len(w)) if m[i][1] > m[i - 1][1])
        wall = m[-1][1] - m[0][1]
        return {
            "sync_wait_share_median": round(shares[len(shares) // 2], 4) if shares else None,
            "process_cpu_per_wall": round((w[-1][2] - w[0][2]) / wall, 3) if wall > 0 else None,
        }

    def memory_summary(self) -> dict[str, float]:
        m = self.memory
        out = {k: round(v, 3) for k, v in m.items()}
        if "steady_peak_allocated_gib" in m:
            out["peak_allocated_gib"] = round(
                max(m.get("warmup_peak_allocated_gib", 0), m["steady_peak_allocated_gib"]), 3
            )
            out["peak_reserved_gib"] = round(
                max(m.get("warmup_peak_reserved_gib", 0), m["steady_peak_reserved_gib"]), 3
            )
        return out
