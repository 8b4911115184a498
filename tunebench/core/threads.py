"""Thread settings that the suite switches on only around the calls that need them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def tokenizer_threads() -> Iterator[None]:
    """Let the fast tokenizer encode a batch on every core (``TOKENIZERS_PARALLELISM``, read per call), even where
    the environment turned it off for forked workers (the CLI does, by default): on one thread, batch encoding is
    barely faster than a string-at-a-time loop (2,251 vs 1,801 strings/s on 2 cores here; 4,425 with both)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
