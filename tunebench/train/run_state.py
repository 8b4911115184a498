"""What a training run counts while it runs: real tokens (a forward pre-hook), seconds, the signal received and the
first non-finite loss, shared between the trainer subclass (``sft_trainer``) and the callbacks (``callbacks``)."""

from __future__ import annotations

import time
from typing import Any


class TokenCounter:
    """Real tokens of the training forward passes (see ``_count_tokens_hook``)."""

    def __init__(self) -> None:
        self._tokens = 0
        self._on_device: Any = None  # counts not yet read back: adding them on the GPU keeps the host running ahead

    def add_tokens(self, n: Any) -> None:
        """Add a count: an int, or a 0-d tensor on the device (read back when ``tokens`` is next read)."""
        if isinstance(n, int):
            self._tokens += n
        else:
            self._on_device = n if self._on_device is None else self._on_device + n

    @property
    def tokens(self) -> int:
        """Real tokens counted so far (reading it waits for the device once)."""
        if self._on_device is not None:
            self._tokens += int(self._on_device)
            self._on_device = None
        return self._tokens


class RunState(TokenCounter):
    """Counters shared between the trainer subclass and the callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_tokens = 0
        self.prior_seconds = 0.0
        self.started = time.perf_counter()
        self.signal: str | None = None
        self.bad_loss: tuple[int, float] | None = None

    @property
    def seconds(self) -> float:
        return self.prior_seconds + time.perf_counter() - self.started


def _count_tokens_hook(model: Any, state: TokenCounter):
    """Count real (non-padding) input tokens of every training forward pass."""

    def hook(module, args, kwargs):
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None and mask.dim() == 2:
            state.add_tokens(mask.sum())  # no int(): a read-back per micro-batch would stall the host on the GPU
        elif ids is not None:  # padding-free batches carry no padding
            state.add_tokens(int(ids.numel()))

    return model.register_forward_pre_hook(hook, with_kwargs=True)
