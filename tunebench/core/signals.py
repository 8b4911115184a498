"""SIGTERM handled like Ctrl-C: schedulers (Slurm, Kubernetes) stop a job with SIGTERM, then SIGKILL after a grace
period; every stage that stops cleanly on Ctrl-C (keeping what is finished) stops the same way on SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread (a no-op elsewhere); the trainer's
    own handler, which finishes the step and checkpoints first, takes over while it trains and restores this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
