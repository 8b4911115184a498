"""Stop strings: a row is done once one of its stop strings occurs in what it generated (the ``stop`` of the
``generation.Generator`` contract; lm-eval's ``until``). Imports torch and transformers at its top: ``generate``
imports it only for a call with stop strings."""

from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteria


class StopStrings(StoppingCriteria):
    """Per row: done once one of ``stops`` occurs in the tokens generated after ``start``; done stays done.
    ``every``: how many tokens arrive between two calls (the window looks back that much further)."""

    def __init__(self, tokenizer: Any, stops: list[str], start: int, rows: int, every: int = 1):
        self.tokenizer, self.stops, self.start = tokenizer, [s for s in stops if s], start
        # lm-eval looks back len(tokens of the stop) + 2 tokens; the longest stop's window covers every stop
        longest = max((len(tokenizer.encode(s, add_special_tokens=False)) for s in self.stops), default=0)
        self.lookback = longest + 2 + every - 1
        self.done = torch.zeros(rows, dtype=torch.bool)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        todo = (~self.done).nonzero().flatten().tolist()
        if todo and self.stops and input_ids.shape[1] > self.start:
            window = input_ids[todo, self.start :][:, -self.lookback :].tolist()
            for row, text in zip(todo, self.tokenizer.batch_decode(window), strict=True):
                if any(s in text for s in self.stops):
                    self.done[row] = True
        return self.done.to(input_ids.device)
