"""Training backends: Unsloth (fast path) and transformers + peft (fallback and baseline).

Both take the same encoded conversations and produce the same kind of adapter. A backend is a small
object with three steps the trainer calls in order: ``load`` (model + tokenizer with LoRA attached),
``datasets`` (train/validation datasets in the form its trainer wants), ``finish_trainer`` (last touches
on the TRL trainer, e.g. Unsloth's ``train_on_responses_only``).
"""

from __future__ import annotations

from tunebench.core.errors import BackendError
from tunebench.train.backends.base import (
    BACKENDS,
    Backend,
    compiled_blocks,
    compute_dtype,
    import_unsloth,
    labels_dataset,
    use_4bit,
)
from tunebench.train.backends.registry import get_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "compiled_blocks",
    "compute_dtype",
    "get_backend",
    "import_unsloth",
    "labels_dataset",
    "use_4bit",
]
