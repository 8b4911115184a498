"""The one evaluation driver: any runtime, through the evaluation families, on the run's fixed inputs.

A **runtime** is how a model is run: transformers in process (base, base + adapter, or an exported GGUF through
transformers' loader), llama.cpp in process (an exported GGUF), or an OpenAI-compatible server. Each is one class
implementing ``Runtime`` and one ``register_runtime`` entry, name -> ``"module:Class"``, imported only when that
runtime is opened (docs/architecture.md, "How to add a runtime"). ``evaluate`` opens nothing itself: it takes an
opened runtime, records what it is, lets it check what must hold before anything is scored (an artifact's
template and token contract, a server's log-probs), then runs every registered family that the settings enable
and that declares a ``measure`` (``evals.families``: perplexity, probes, lm-eval, in registration order), and
writes the results.

Base and tuned go through this same function with the same test tokens, probe prompts, seeds and lm-eval
documents; only the adapter differs. An artifact and a served endpoint go through it too, so their results pair
with the adapter's on the same items.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tunebench.core.io import environment
from tunebench.core.runtimes import ENDPOINT, LLAMA_CPP, TRANSFORMERS
from tunebench.core.shards import Shard
from tunebench.evals.families import Family, families
from tunebench.evals.generation import Generator
from tunebench.evals.results import Results
from tunebench.evals.settings import EvalSettings

GENERATE = "generate"
"""Capability: answers prompts with stop strings (``generator()``, the ``Generator`` contract)."""
TOKEN_LOGPROBS = "token_logprobs"
"""Capability: log-probs of given token ids (the run's test tokens: perplexity)."""
CONTINUATION_LOGPROBS = "continuation_logprobs"
"""Capability: log-probs of a continuation after a context (lm-eval's loglikelihood requests)."""
SHARDS = "shards"
"""Capability: scores one shard of the items (``tunebench eval --shard``)."""


@dataclass
class Job:
    """One evaluation under way: what every family's ``measure`` reads and where it writes."""

    results: Results
    settings: EvalSettings
    run_dir: Path
    label: str
    progress: bool = True
    shard: Shard | None = None
    scratch: dict[str, Any] = field(default_factory=dict)
    """What one family leaves for a later one or for ``Runtime.save`` (the encoded test split, kept log-probs)."""


@runtime_checkable
class Runtime(Protocol):
    """One model opened in one runtime: the contract the driver and the families use.

    ``open`` (a classmethod, arguments per runtime) loads the model; ``started`` is when loading began.
    """

    name: str
    """The runtime's name (``core.runtimes``), recorded in results."""
    capabilities: frozenset[str]
    """What it can do (GENERATE, TOKEN_LOGPROBS, CONTINUATION_LOGPROBS, SHARDS); a family needing more is skipped."""
    started: float

    def identity(self) -> dict[str, Any]:
        """The model as results record it (``Results.model``)."""

    def check(self, job: Job) -> None:
        """What must hold before anything is scored; raises a ``TunebenchError`` naming what to do."""

    def generator(self, job: Job) -> Generator:
        """Answers prompts with stop strings (``evals.generation.Generator``)."""

    def score_perplexity(self, job: Job) -> None:
        """Log-probs of the run's test tokens: ``perplexity/test`` (and what is read off the same pass) into
        ``job.results``."""

    def score_lm_eval(self, job: Job) -> None:
        """The run's lm-eval tasks (continuations' log-probs, generation) into ``job.results``."""

    def close(self) -> None:
        """Free the model (before a child loads its own, or at the end)."""

    def save(self, job: Job, out_path: Path) -> None:
        """Write ``job.results`` (and what the runtime keeps beside them) atomically."""


_RUNTIMES: dict[str, str | type] = {
    TRANSFORMERS: "tunebench.evals.runner:TransformersRuntime",
    LLAMA_CPP: "tunebench.evals.llamacpp_eval:LlamaCppRuntime",
    ENDPOINT: "tunebench.evals.served:EndpointRuntime",
}


def register_runtime(name: str, target: str | type) -> None:
    """Add a runtime: ``name`` -> ``"module:Class"`` (imported when first opened) or the class itself, a ``Runtime``
    with an ``open(settings, run_dir, target, **options)`` classmethod.

    Raises:
        ValueError: that name is registered already, or a string target is not ``module:Class``.
    """
    if name in _RUNTIMES:
        raise ValueError(f"runtime {name!r} is registered already ({_RUNTIMES[name]}); pick another name")
    if isinstance(target, str) and target.count(":") != 1:
        raise ValueError(f"runtime {name!r}: {target!r} is not 'module:Class'")
    _RUNTIMES[name] = target


def unregister_runtime(name: str) -> str | type:
    """Remove a runtime (a test's toy runtime, afterwards); returns its target.

    Raises:
        KeyError: no runtime of that name.
    """
    return _RUNTIMES.pop(name)


def runtime_names() -> list[str]:
    """Every registered runtime, in registration order."""
    return list(_RUNTIMES)


def runtime_class(name: str) -> type:
    """The class of a registered runtime (imported now when registered by name).

    Raises:
        KeyError: no runtime of that name, naming the known ones.
    """
    if name not in _RUNTIMES:
        raise KeyError(f"no runtime {name!r}; known: {', '.join(_RUNTIMES)}")
    target = _RUNTIMES[name]
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        return getattr(importlib.import_module(module), cls)
    return target


def open_runtime(name: str, settings: EvalSettings, run_dir: str | Path, target: Any = None, **options: Any) -> Any:
    """Open ``target`` (an adapter folder, a GGUF file, a URL: what the runtime takes) in runtime ``name``."""
    return runtime_class(name).open(settings, Path(run_dir), target, **options)


def evaluate(
    runtime: Runtime,
    settings: EvalSettings,
    run_dir: str | Path,
    label: str,
    out_path: str | Path | None = None,
    contamination: dict[str, Any] | None = None,
    progress: bool = True,
    shard: Shard | None = None,
) -> Results:
    """Every enabled family on ``runtime`` (see the module docstring); writes results.json atomically.

    Args:
        shard: score one shard of the items (``core.shards``; runtimes with SHARDS only).

    Raises:
        ModelError, AdapterError, DataError, ProbeError, LmEvalError, ContractError, EndpointError: with what to do.
    """
    if shard is not None and SHARDS not in runtime.capabilities:
        raise ValueError(f"runtime {runtime.name} does not score shards")
    job = Job(
        Results(label=label, model=runtime.identity(), inputs={}, environment=environment()),
        settings,
        Path(run_dir),
        label,
        progress,
        shard,
    )
    runtime.check(job)
    job.results.timings["load_s"] = round(time.perf_counter() - runtime.started, 2)
    for family in measured(settings, runtime.capabilities):
        family.measurer()(runtime, job)
    runtime.close()
    if contamination is not None:
        job.results.artifacts["contamination"] = contamination
    job.results.timings["total_s"] = round(time.perf_counter() - runtime.started, 2)
    if out_path is not None:
        runtime.save(job, Path(out_path))
    return job.results


def measured(settings: EvalSettings, capabilities: frozenset[str]) -> list[Family]:
    """The families ``evaluate`` measures, in registration order: those with a ``measure`` that ``settings`` enable,
    measured on every model (not only on an artifact), whose ``needs`` the runtime's ``capabilities`` cover."""
    return [
        f
        for f in families()
        if f.measure is not None and f.runtimes is None and f.enabled(settings.eval) and set(f.needs) <= capabilities
    ]


def measure_perplexity(runtime: Runtime, job: Job) -> None:
    """The perplexity family: the runtime scores the run's test tokens."""
    runtime.score_perplexity(job)


def measure_probes(runtime: Runtime, job: Job) -> None:
    """The probes family: every probe set under every sampling setting, answered by the runtime's generator."""
    from tunebench.evals.probes.sets import run_probes

    t = time.perf_counter()
    ev = job.settings.eval
    gen = runtime.generator(job)
    job.results.merge(
        run_probes(
            gen,
            list(ev.probe_files),
            list(ev.probe_sampling),
            seed=ev.probe_seed,
            label=job.label,
            generator=gen,
            shard=job.shard,
        )
    )
    job.results.timings["probes_s"] = round(time.perf_counter() - t, 2)


def measure_lm_eval(runtime: Runtime, job: Job) -> None:
    """The lm-eval family: the runtime runs the run's tasks."""
    runtime.score_lm_eval(job)


__all__ = [
    "CONTINUATION_LOGPROBS",
    "GENERATE",
    "Job",
    "Runtime",
    "SHARDS",
    "TOKEN_LOGPROBS",
    "evaluate",
    "measured",
    "open_runtime",
    "register_runtime",
    "runtime_class",
    "runtime_names",
    "unregister_runtime",
]
