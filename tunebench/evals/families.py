"""The evaluation families, one registry: what each measures, which metric names it produces, where they report.

A family is one kind of measurement (perplexity, probes, lm-eval, the judge, export parity, contamination). Each is
one ``Family`` entry: its name (the first segment of its metric names and their ``Metric.group``), whether a
config turns it on, the metric names it produces under an ``EvalConfig`` (as ``MetricShape``: fixed leading
segments, an open tail, the better direction) and its report section. ``app.preflight`` reads the produced names
to refuse a gate rule that could never match; ``reports.render`` reads the sections to place each metric.

Adding a family is one ``register`` call (docs/architecture.md, "How to add an evaluation family"). ``produced``
may be a ``"module:function"`` string, imported only when a config's metrics are asked for, so the report (which
reads only names and sections) never imports a family's heavy module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tunebench.core.config_schema import EvalConfig
from tunebench.core.runtimes import LLAMA_CPP
from tunebench.evals.settings import probes_on


@dataclass(frozen=True)
class MetricShape:
    """A set of metric names: fixed leading segments, then any tail when ``open``."""

    segments: tuple[str, ...]
    open: bool = True
    higher_is_better: bool | None = None
    """The better direction of these metrics; None where each metric carries its own (lm-eval's)."""

    def text(self) -> str:
        return "/".join(self.segments) + ("/..." if self.open else "")


@dataclass(frozen=True)
class Section:
    """Where a family's rows go in report.md."""

    title: str
    """The heading (for ``layout="own"`` report.md.j2 writes its own, the same)."""
    intro: str = ""
    """The line under the heading, before the table."""
    layout: Literal["table", "own"] = "table"
    """``table``: the heading, the intro and one metric table of the family's rows, after the headline; ``own``: a
    block of report.md.j2 written for this family (lm-eval tasks, probes, the judge) lays them out."""


Produced = Callable[[EvalConfig], list[MetricShape]]
Measure = Callable[[Any, Any], None]
"""``(runtime, job)``: an ``evals.driver.Runtime`` and ``evals.driver.Job`` (typed loosely: the driver imports this
module)."""


@dataclass(frozen=True)
class Family:
    """One evaluation family (see the module docstring)."""

    name: str
    """The first segment of its metric names, and their ``Metric.group``."""
    produced: Produced | str | None = None
    """``EvalConfig -> [MetricShape]``, or ``"module:function"`` naming one; None: it produces no metrics."""
    enabled: Callable[[EvalConfig], bool] = lambda settings: True
    """Whether a config measures it at all."""
    section: Section | None = None
    """Its report section; None: its rows (if any) go under "Other metrics"."""
    runtimes: tuple[str, ...] | None = None
    """None: measured on every model evaluated; else only on an exported artifact scored in one of these."""
    measure: Measure | str | None = None
    """``(runtime, job) -> None``, or ``"module:function"`` naming one: how ``evals.driver.evaluate`` measures it on
    any runtime (writing into ``job.results``); None: not measured by the driver (the judge is its own stage,
    parity is read off the perplexity pass, contamination is computed once per run)."""
    needs: tuple[str, ...] = ()
    """The runtime capabilities ``measure`` uses (``evals.driver``: generate, token_logprobs, ...); a runtime
    without them skips the family."""

    def measurer(self) -> Measure:
        """``measure`` as a function (imported now when it names one)."""
        return _resolve(self.measure)

    def shapes(self, settings: EvalConfig) -> list[MetricShape]:
        """The metric names it produces under ``settings`` (none when it is not enabled)."""
        if self.produced is None or not self.enabled(settings):
            return []
        return list(_resolve(self.produced)(settings))


def _resolve(target: Any) -> Any:
    """A ``"module:function"`` string imported (anything else as it is)."""
    if isinstance(target, str):
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    return target


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family; its metrics then count in preflight, its section in the report.

    Raises:
        ValueError: a family of that name is registered already.
    """
    if family.name in _REGISTRY:
        raise ValueError(f"evaluation family {family.name!r} is registered already; pick another name")
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> Family:
    """Remove a family (a test's toy family, afterwards).

    Raises:
        KeyError: no family of that name, naming the known ones.
    """
    if name not in _REGISTRY:
        raise KeyError(f"no evaluation family {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY.pop(name)


def families() -> list[Family]:
    """Every registered family, in registration order (the order preflight lists their metrics)."""
    return list(_REGISTRY.values())


def produced_metrics(settings: EvalConfig) -> list[MetricShape]:
    """The metric names evaluating any model under ``settings`` can produce."""
    out = [s for f in families() if f.runtimes is None for s in f.shapes(settings)]
    return list(dict.fromkeys(out))


def artifact_metrics(settings: EvalConfig, runtime: str) -> list[MetricShape]:
    """What an exported artifact scored in ``runtime`` produces besides ``produced_metrics`` (llama.cpp: parity)."""
    out = [s for f in families() if f.runtimes is not None and runtime in f.runtimes for s in f.shapes(settings)]
    return list(dict.fromkeys(out))


PERPLEXITY_INTRO = "Held-out perplexity over assistant tokens (lower is better); paired over conversations."


register(
    Family(
        "perplexity",
        "tunebench.evals.perplexity:produced",
        enabled=lambda settings: settings.perplexity,
        section=Section("Perplexity", PERPLEXITY_INTRO),
        measure="tunebench.evals.driver:measure_perplexity",
        needs=("token_logprobs",),
    )
)
register(
    Family(
        "probes",
        "tunebench.evals.probes.sets:produced",
        enabled=probes_on,
        section=Section("Probes", layout="own"),
        measure="tunebench.evals.driver:measure_probes",
        needs=("generate",),
    )
)
register(
    Family(
        "lm_eval",
        "tunebench.evals.lm_eval.index:produced",
        enabled=lambda settings: bool(settings.lm_eval_tasks),
        section=Section("lm-eval tasks", layout="own"),
        measure="tunebench.evals.driver:measure_lm_eval",
        needs=("continuation_logprobs", "generate"),
    )
)
register(
    Family(
        "judge",
        "tunebench.evals.judge.metrics:produced",
        enabled=lambda settings: settings.judge.enabled,
        section=Section("Conversational quality (judged)", layout="own"),
    )
)
# the artifact's agreement with the adapter: in the report's export section, beside the artifact's own metrics
register(Family("parity", "tunebench.evals.parity:produced", runtimes=(LLAMA_CPP,)))
# train/eval overlap: no metrics; the report's Contamination section reads it from Results.artifacts
register(Family("contamination"))
