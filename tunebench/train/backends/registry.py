"""The backends by name: ``get_backend`` (Unsloth, or transformers + peft)."""

from __future__ import annotations

from tunebench.core.errors import BackendError
from tunebench.train.backends.base import Backend
from tunebench.train.backends.hf import HFBackend
from tunebench.train.backends.unsloth import UnslothBackend


def get_backend(name: str) -> Backend:
    """The backend object for a resolved name."""
    backends = {"unsloth": UnslothBackend, "hf": HFBackend}
    if name not in backends:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(backends)}")
    return backends[name]()
