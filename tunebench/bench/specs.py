"""What a benchmark parent hands a worker process: one typed spec per worker kind, written as JSON by
``bench.spawn`` and read back by ``bench.worker`` (``to_dict`` / ``from_dict``), as ``prepared_to_dict`` does for
the encoded data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

S = TypeVar("S", bound="_Spec")


class _Spec:
    """``to_dict`` / ``from_dict`` for a spec dataclass; an unknown key is an error, not silently dropped."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form the worker process reads back with ``from_dict``."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """The spec of ``data`` (what ``to_dict`` wrote).

        Raises:
            ValueError: a key that is no field of this spec.
        """
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**data)


@dataclass
class SetupSpec(_Spec):
    """The setup worker: build the named shapes and measure the card's matmul peak."""

    build: list[str]
    """Named shapes to build (``bench.shapes.SHAPES``)."""
    tokenizer: str | None = None
    """``--tokenizer``: a tokenizer folder, or None for Meta's Llama 3 tokenizer."""
    root: str | None = None
    """Where built shapes live (default: the cache)."""
    calibrate: bool = False
    """Measure the bf16 matmul peak (CUDA only)."""
    kind: str = "setup"
    """The worker kind (``bench.worker`` dispatches on it)."""
    label: str = "setup"
    """The job's name: its spec and result file names."""
    result: str | None = None
    """Where the worker writes its result JSON (``bench.spawn`` sets it)."""


@dataclass
class EvalSpec(_Spec):
    """One ``bench eval`` worker: every part of one shape, on one loaded model."""

    shape: str
    """The shape's name in the results."""
    model_dir: str
    """The model folder (a built shape or a resolved model reference)."""
    chat_template: str
    """The chat template name (``llama-3.1`` for a built shape, ``auto`` otherwise)."""
    prepared: str
    """The encoded conversations (``bench.prepared.save_prepared``)."""
    ppl_batch_tokens: list[int]
    """Perplexity batch-token budgets, one row each."""
    ppl_conversations: int
    """Conversations scored per perplexity row."""
    gen_batch: int
    """Prompts per generation batch."""
    gen_batches: int
    """Generation batches per row."""
    prompt_tokens: int
    """Every generation prompt's rendered length."""
    new_tokens: int
    """New tokens per generated answer."""
    r: int
    """The random LoRA adapter's rank."""
    alpha: int
    """The random LoRA adapter's alpha."""
    targets: list[str]
    """The modules the LoRA adapter wraps."""
    kind: str = "eval"
    """The worker kind (``bench.worker`` dispatches on it)."""
    label: str = "eval"
    """The job's name: its spec and result file names."""
    params: int = 0
    """All parameters (tied embeddings once): the MFU numerator's N."""
    head_params: int = 0
    """The LM head's parameters (vocabulary x hidden size)."""
    tied: bool = True
    """Whether the embedding and the head share their weights."""
    peak_tflops: float | None = None
    """The card's measured bf16 matmul peak (None: no MFU)."""
    probe_samples: int = 4
    """The default probe run: samples per prompt."""
    probe_new_tokens: int = 64
    """The default probe run: new tokens per answer."""
    probe_batch: int | None = None
    """The default probe run's pool size; None runs no probe run."""
    probe_prompts: int = 0
    """Prompts the probe run needs (more prompts are cut than the generation rows use)."""
    merge_base: bool = False
    """Compare the 4-bit and 16-bit bases of a QLoRA adapter."""
    parts: list[str] | None = None
    """``--parts`` (None: all of ``bench.evalworker.PARTS``)."""
    lm_eval_batches: list[int] = field(default_factory=list)
    """lm-eval generate_until batch sizes (empty: none)."""
    lm_eval_ll_tasks: list[str] = field(default_factory=list)
    """lm-eval loglikelihood tasks."""
    lm_eval_ll_batch: int = 64
    """lm-eval loglikelihood batch size."""
    lm_eval_ll_limit: int | None = None
    """Documents per loglikelihood task (None: every one)."""
    repeat: int = 0
    """This worker's first repeat."""
    inner_repeats: int = 1
    """Repeats run inside this worker (``--repeats-in-worker``)."""
    partial: str | None = None
    """Where the rows measured so far are written after each one."""
    result: str | None = None
    """Where the worker writes its result JSON (``bench.spawn`` sets it)."""


@dataclass
class TrainSpec(_Spec):
    """One ``bench speed`` training worker: one backend at one (batch, accumulation) point on one shape."""

    shape: str
    """The shape's name in the results."""
    backend: str
    """A ``bench.worker.BACKENDS`` entry."""
    model_dir: str
    """The model folder."""
    chat_template: str
    """The chat template name."""
    prepared: str
    """The encoded conversations (``bench.prepared.save_prepared``)."""
    data_source: str
    """``data.source`` of the run config (the encoded data is handed over as ``prepared``)."""
    batch_size: int
    """``train.batch_size``."""
    grad_accum: int
    """``train.grad_accum``."""
    max_length: int
    """``data.max_length``."""
    warmup: int
    """Optimizer steps before the measured ones."""
    steps: int
    """Measured optimizer steps."""
    r: int
    """LoRA rank."""
    alpha: int
    """LoRA alpha."""
    targets: list[str]
    """LoRA target modules."""
    run_dir: str
    """The run folder (removed after the run)."""
    kind: str = "train"
    """The worker kind (``bench.worker`` dispatches on it)."""
    label: str = "train"
    """The job's name: its spec and result file names."""
    load_in_4bit: bool = True
    """4-bit base weights (CUDA only)."""
    params: int = 0
    """All parameters (tied embeddings once): the MFU numerator's N."""
    peak_tflops: float | None = None
    """The card's measured bf16 matmul peak (None: no MFU)."""
    datasheet_tflops: float | None = None
    """The card's datasheet bf16 peak (None: no datasheet MFU)."""
    gradient_checkpointing: bool = True
    """``train.gradient_checkpointing``."""
    profile_steps: int = 0
    """Steps after the measured ones run under torch.profiler."""
    world_size: int = 1
    """Processes under torchrun (1: a plain process)."""
    result: str | None = None
    """Where the worker writes its result JSON (``bench.spawn`` sets it)."""


@dataclass
class SweepSpec(TrainSpec):
    """The ``--find-best`` worker: many (layout, micro-batch) candidates of one backend family in one process; each
    candidate runs as this spec with its own backend, batch and run folder."""

    kind: str = "sweep"
    """The worker kind (``bench.worker`` dispatches on it)."""
    family: str = "hf"
    """The backend family (``unsloth`` or ``hf``)."""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """Layout, gradient checkpointing, batch size and accumulation of each candidate, in order."""
    memory_limit_gib: float | None = None
    """The card is capped there (None: the whole card)."""
    deadline: float = 0.0
    """Wall-clock time (``time.time()``) after which no candidate starts."""
    min_seconds: float = 40.0
    """A candidate starts only with this much of the deadline left."""
