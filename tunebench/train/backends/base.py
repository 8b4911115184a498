"""What both training backends share: the Backend protocol, the resolved dtype and 4-bit switch, the
labelled dataset, and the Unsloth import."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from tunebench.core import output
from tunebench.core.errors import BackendError

BACKENDS = ("unsloth", "hf")


class Backend(Protocol):
    name: str

    def load(
        self, source: Any, model_cfg: Any, lora_cfg: Any, train_cfg: Any, max_length: int, template_name: str
    ) -> tuple[Any, Any]: ...

    def datasets(self, prepared: Any, tokenizer: Any) -> tuple[Any, Any]: ...

    def finish_trainer(self, trainer: Any, prepared: Any) -> tuple[Any, dict[str, Any]]:
        """The trainer with the backend's last touches, and what the backend found doing them (recorded in the
        adapter's manifest under ``backend``, e.g. ``mask_agreement_with_shared``)."""
        ...

    def training(self, train_cfg: Any) -> AbstractContextManager[None]:
        """Backend settings that hold while ``trainer.train()`` runs."""
        ...


def import_unsloth() -> str | None:
    """Import Unsloth before transformers (it patches them). Returns the error text, or None on success."""
    try:
        with output.prints_to_log("unsloth"):  # its banner: to the run's log, unless -v
            import unsloth  # noqa: F401
    except Exception as e:  # unsloth raises many kinds (NotImplementedError, ImportError, RuntimeError)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def compute_dtype(model_cfg: Any) -> Any:
    """The torch dtype both backends train in: the resolved ``model.dtype`` (core.config_resolve.resolve)."""
    import torch  # heavy: torch only when a model is built

    if model_cfg.dtype == "auto":
        raise BackendError(
            "model.dtype is still 'auto': load the config with tunebench.core.config.load_config, "
            "which resolves it for this machine"
        )
    return getattr(torch, model_cfg.dtype)


def use_4bit(model_cfg: Any) -> bool:
    """4-bit base weights: the resolved ``model.load_in_4bit`` (core.config_resolve.resolve)."""
    if model_cfg.load_in_4bit == "auto":
        raise BackendError(
            "model.load_in_4bit is still 'auto': load the config with "
            "tunebench.core.config.load_config, which resolves it for this machine"
        )
    return model_cfg.load_in_4bit == "on"


def labels_dataset(encoded: list[Any], with_labels: bool = True) -> Any:
    """A datasets.Dataset of pre-tokenized conversations (the shared mask as labels when asked)."""
    from datasets import Dataset  # heavy: datasets, imported when needed

    data: dict[str, list[Any]] = {"input_ids": [e.input_ids for e in encoded]}
    if with_labels:
        data["labels"] = [e.labels for e in encoded]
    return Dataset.from_dict(data)


def compiled_blocks(model: Any) -> int:
    """How many decoder blocks ran through Unsloth's compiled forward (it marks a block once a compiled call of it
    succeeded; padding-free batches, CPU and a failed compile all leave blocks on the stock forward)."""
    return sum(1 for m in model.modules() if m.__dict__.get("_unsloth_block_checked", 0))
