"""Training backends: Unsloth (fast path) and transformers + peft (fallback and baseline).

Both take the same encoded conversations and produce the same kind of adapter. A backend is a small
object with three steps the trainer calls in order: ``load`` (model + tokenizer with LoRA attached),
``datasets`` (train/validation datasets in the form its trainer wants), ``finish_trainer`` (last touches
on the TRL trainer, e.g. Unsloth's ``train_on_responses_only``).
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any, Protocol

from tunebench.core import dist
from tunebench.core.errors import BackendError

BACKENDS = ("unsloth", "hf")


class Backend(Protocol):
    name: str

    def load(self, source: Any, model_cfg: Any, lora_cfg: Any, train_cfg: Any, max_length: int,
             template_name: str) -> tuple[Any, Any]: ...

    def datasets(self, prepared: Any, tokenizer: Any) -> tuple[Any, Any]: ...

    def finish_trainer(self, trainer: Any, prepared: Any) -> Any: ...


def choose_backend(requested: str) -> tuple[str, str]:
    """Resolve ``train.backend`` to a concrete backend and say why.

    ``auto`` picks Unsloth where it is installed and this is a single-process job, else ``hf`` (under a
    launcher, ``hf``: its data-parallel path is the one verified on GPUs; an explicit ``unsloth`` is honoured). Whether
    Unsloth also *imports* is checked when the trainer imports it (first, before transformers); a failed
    import under ``auto`` falls back to ``hf`` with the error as the reason.

    Raises:
        BackendError: an unknown name.
    """
    if requested not in ("auto",) + BACKENDS:
        hint = difflib.get_close_matches(requested, BACKENDS, n=1)
        dym = f"; did you mean {hint[0]!r}?" if hint else ""
        raise BackendError(f"train.backend {requested!r} is unknown (known: auto, {', '.join(BACKENDS)}){dym}")
    if requested != "auto":
        return requested, "requested in the config"
    if dist.world_size() > 1:
        return "hf", (
            f"WORLD_SIZE={dist.world_size()}: tunebench's data-parallel training is verified on GPUs with "
            "transformers+peft; Unsloth's own DDP runs under torchrun on CPU but is not yet verified on GPUs "
            "(train.backend=unsloth chooses it)"
        )
    if importlib.util.find_spec("unsloth") is None:
        return "hf", "unsloth is not installed (pip install 'tunebench[cuda]' on a CUDA box)"
    return "unsloth", "unsloth is installed and this is a single-process job"


def import_unsloth() -> str | None:
    """Import Unsloth before transformers (it patches them). Returns the error text, or None on success."""
    try:
        import unsloth  # noqa: F401
    except Exception as e:  # unsloth raises many kinds (NotImplementedError, ImportError, RuntimeError)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def get_backend(name: str) -> Backend:
    """The backend object for a resolved name."""
    if name == "unsloth":
        from tunebench.train.backends.unsloth import UnslothBackend

        return UnslothBackend()
    if name == "hf":
        from tunebench.train.backends.hf import HFBackend

        return HFBackend()
    raise BackendError(f"unknown backend {name!r}")


def compute_dtype(model_cfg: Any) -> Any:
    """The dtype both backends train in: bf16 on CUDA (fp16 pre-Ampere), fp32 on CPU, unless set."""
    import torch

    if model_cfg.dtype != "auto":
        return getattr(torch, model_cfg.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def use_4bit(model_cfg: Any) -> bool:
    """4-bit base weights: on by default with CUDA; bitsandbytes 4-bit needs CUDA."""
    import torch

    if model_cfg.load_in_4bit == "on":
        if not torch.cuda.is_available():
            raise BackendError("model.load_in_4bit=on needs CUDA (bitsandbytes 4-bit); use off or auto on CPU")
        return True
    return model_cfg.load_in_4bit == "auto" and torch.cuda.is_available()


def labels_dataset(encoded: list[Any], with_labels: bool = True) -> Any:
    """A datasets.Dataset of pre-tokenized conversations (the shared mask as labels when asked)."""
    from datasets import Dataset

    data: dict[str, list[Any]] = {"input_ids": [e.input_ids for e in encoded]}
    if with_labels:
        data["labels"] = [e.labels for e in encoded]
    return Dataset.from_dict(data)
