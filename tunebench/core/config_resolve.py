"""Resolving a run configuration for the machine it runs on: every machine-dependent ``auto`` (dtype, 4-bit,
optimizer, backend, padding-free batches, compiled blocks) decided once, with the reason recorded in
``RunConfig.resolution``; and ``asked``, the way back to what the user wrote.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any

from tunebench.core import dist
from tunebench.core.config_build import from_dict, to_dict
from tunebench.core.config_schema import RunConfig, TrainConfig
from tunebench.core.errors import ConfigError

# the config's one logger (users and tests filter on it), whichever of its modules speaks
log = logging.getLogger("tunebench.core.config")
_SAID: set[str] = set()


@dataclass(frozen=True)
class Machine:
    """The facts about this machine and launch that ``auto`` settings resolve against."""

    cuda: bool
    bf16: bool
    world_size: int
    unsloth_installed: bool

    @classmethod
    def detect(cls) -> Machine:
        """Ask torch about CUDA, the launcher about the process count, and the importer about Unsloth."""
        import torch  # heavy: only to ask whether CUDA is there, when a config is resolved

        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            world_size=dist.world_size(),
            unsloth_installed=importlib.util.find_spec("unsloth") is not None,
        )


def resolve(cfg: RunConfig, machine: Machine | None = None) -> tuple[RunConfig, dict[str, str]]:
    """Resolve every machine-dependent ``auto`` once: backend, dtype, 4-bit, optimizer.

    The chat template's ``auto`` depends on the model, not the machine: the models layer resolves it when the
    tokenizer is loaded, and the run folder records the result.

    Returns:
        a copy of ``cfg`` without those ``auto`` values, and the reason for each resolved value.

    Raises:
        ConfigError: a setting this machine cannot honour (4-bit or 8-bit optimizers without CUDA).
    """
    m = machine or Machine.detect()
    out = from_dict(to_dict(cfg))
    why: dict[str, str] = {}
    if out.model.dtype == "auto":
        out.model.dtype = auto_dtype(m.cuda, m.bf16)
        why["model.dtype"] = "CUDA with bf16" if m.bf16 else ("CUDA before Ampere" if m.cuda else "CPU")
    if out.model.load_in_4bit == "auto":
        out.model.load_in_4bit = "on" if m.cuda else "off"
        why["model.load_in_4bit"] = "CUDA: QLoRA" if m.cuda else "CPU: bitsandbytes 4-bit needs CUDA"
    elif out.model.load_in_4bit == "on" and not m.cuda:
        raise ConfigError("model.load_in_4bit=on needs CUDA (bitsandbytes 4-bit); use off or auto on CPU")
    if out.train.optimizer == "auto":
        out.train.optimizer = "adamw_8bit" if m.cuda else "adamw_torch"
        why["train.optimizer"] = "CUDA: bitsandbytes 8-bit AdamW" if m.cuda else "CPU: torch AdamW"
    elif out.train.optimizer in ("adamw_8bit", "paged_adamw_8bit") and not m.cuda:
        raise ConfigError(
            f"train.optimizer={out.train.optimizer} needs CUDA (bitsandbytes); use adamw_torch or auto on CPU"
        )
    if out.train.backend == "auto":
        if m.world_size > 1:
            out.train.backend = "hf"
            why["train.backend"] = (
                f"WORLD_SIZE={m.world_size}: tunebench's data-parallel training is verified on GPUs with "
                "transformers+peft; Unsloth's own DDP runs under torchrun on CPU but is not yet verified on GPUs "
                "(train.backend=unsloth chooses it)"
            )
        elif not m.unsloth_installed:
            out.train.backend = "hf"
            why["train.backend"] = "unsloth is not installed (pip install 'tunebench[cuda]' on a CUDA box)"
        else:
            out.train.backend = "unsloth"
            why["train.backend"] = "unsloth is installed and this is a single-process job"
    if out.train.padding_free == "auto":
        out.train.padding_free, why["train.padding_free"] = auto_padding_free(out.train.backend, out.train.packing)
    if out.train.compile_blocks == "auto":
        out.train.compile_blocks, why["train.compile_blocks"] = auto_compile_blocks(out.train, m.cuda)
    out.resolution = {**out.resolution, **why}
    for line in overridden(out):
        if line not in _SAID:  # once per process: a sweep resolves each trial's config
            _SAID.add(line)
            log.warning(line)
    return out, why


def overridden(cfg: RunConfig) -> list[str]:
    """One line for each setting that another one makes do nothing (epochs under max_steps, warm-up steps under
    warmup_ratio or a constant schedule, samples of a greedy decode), saying which wins and how to change it."""
    t, lines = cfg.train, []
    if t.max_steps > 0 and t.epochs != TrainConfig.epochs:
        lines.append(
            f"train.epochs={t.epochs:g} does nothing: train.max_steps={t.max_steps} sets the length of training "
            f"(add train.max_steps=-1 to train for {t.epochs:g} epochs)"
        )
    if t.warmup_ratio is not None and t.warmup_steps != 0:
        steps = f" ({math.ceil(t.warmup_ratio * t.max_steps)} of {t.max_steps} updates)" if t.max_steps > 0 else ""
        lines.append(f"train.warmup_ratio={t.warmup_ratio:g} replaces train.warmup_steps={t.warmup_steps}{steps}")
    warmup = t.warmup_ratio if t.warmup_ratio is not None else t.warmup_steps
    if t.scheduler == "constant" and warmup:
        name = "warmup_ratio" if t.warmup_ratio is not None else "warmup_steps"
        lines.append(
            f"train.scheduler=constant has no warm-up, so train.{name}={warmup:g} does nothing "
            "(train.scheduler=constant_with_warmup warms up first)"
        )
    for s in cfg.eval.probe_sampling:
        ignored = [f"n_samples={s.n_samples}"] if s.n_samples > 1 else []
        ignored += [f"top_p={s.top_p:g}"] if s.top_p is not None else []
        if s.temperature == 0 and ignored:
            lines.append(
                f"eval.probe_sampling {s.name!r}: temperature 0 decodes greedily, so {' and '.join(ignored)} "
                "does nothing (one answer per prompt)"
            )
    return lines


# Optimizer steps from which train.compile_blocks=auto compiles Unsloth's decoder blocks: the point where the one-off
# compile is paid back (reports/published/2026-12-01-h200-speed-llama-3.2-1b-eager-blocks-1.md)
COMPILE_BLOCKS_MIN_STEPS = 300


def auto_padding_free(backend: str, packing: bool) -> tuple[bool, str]:
    """What ``train.padding_free: auto`` means for a backend, and why."""
    if packing:
        return False, "packing builds its own rows"
    if backend == "unsloth":
        return False, (
            "unsloth: padded batches, measured faster than Unsloth's padding-free default "
            "(reports/published/2026-12-01-h200-speed-llama-3.2-1b-eager-blocks-1.md)"
        )
    return False, "hf: padded batches on SDPA"


def auto_compile_blocks(train: TrainConfig, cuda: bool) -> tuple[bool, str]:
    """What ``train.compile_blocks: auto`` means for a resolved train config on this machine, and why."""
    if train.backend != "unsloth":
        return False, f"{train.backend}: Unsloth compiles nothing on this backend"
    if not cuda:
        return False, "CPU: Unsloth compiles decoder blocks on CUDA only"
    if train.padding_free or train.packing:
        return False, "padding-free and packed batches run Unsloth's stock decoder blocks"
    if 0 < train.max_steps < COMPILE_BLOCKS_MIN_STEPS:
        return False, (
            f"{train.max_steps} optimizer steps, fewer than the ~{COMPILE_BLOCKS_MIN_STEPS} after which "
            "the one-off compile pays back; eager blocks also peak lower"
        )
    steps = "an epoch-counted run" if train.max_steps <= 0 else f"{train.max_steps} optimizer steps"
    return True, (
        f"{steps}: compiled blocks train faster, which pays back the one-off compile after "
        f"~{COMPILE_BLOCKS_MIN_STEPS} steps"
    )


def with_backend(cfg: RunConfig, backend: str, why: str) -> RunConfig:
    """``cfg`` for the backend that really trains, when a runtime fact (Unsloth not importing) changed the resolved
    one: a copy with ``train.backend`` set and ``train.padding_free`` and ``train.compile_blocks`` re-resolved if
    they were ``auto``."""
    if backend == cfg.train.backend:
        return cfg
    out = from_dict(to_dict(cfg))
    out.train.backend = backend
    out.resolution["train.backend"] = why
    if "train.padding_free" in cfg.resolution:
        out.train.padding_free, out.resolution["train.padding_free"] = auto_padding_free(backend, out.train.packing)
    if "train.compile_blocks" in cfg.resolution:
        out.train.compile_blocks, out.resolution["train.compile_blocks"] = auto_compile_blocks(
            out.train, Machine.detect().cuda
        )
    return out


def asked(cfg: RunConfig) -> dict[str, Any]:
    """What the user asked for: the resolved config with every resolved key set back to ``auto``."""
    data = to_dict(cfg)
    for key in cfg.resolution:
        section, name = key.split(".", 1)
        data[section][name] = "auto"
    data["resolution"] = {}
    return data


def auto_dtype(cuda: bool, bf16: bool) -> str:
    """The compute dtype ``auto`` means: bf16 on CUDA (fp16 before Ampere), fp32 on CPU."""
    return ("bfloat16" if bf16 else "float16") if cuda else "float32"
