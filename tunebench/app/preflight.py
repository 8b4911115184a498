"""Checks a config can pass or fail before any model loads: a typo must cost seconds, not a training run.

``tunebench config`` and the start of ``run``, ``train``, ``eval`` and ``data`` call ``preflight``: lm-eval task
names (lm-eval's task index, cached), probe files (parsed as evaluation will), the judge's prompt sets and template,
the contamination n-gram length
(against the limit ``evals.contamination`` enforces) and the gate rules against the metrics this config can
produce. It lives in the application layer because it asks evals and reports; core validates types and ranges.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError, GateError, ProbeError
from tunebench.core.runtimes import LLAMA_CPP, artifact_names, artifact_runtime
from tunebench.evals.contamination import MIN_SHINGLE_WORDS
from tunebench.evals.judge import preflight as judge_preflight
from tunebench.evals.judge_prompts import set_name
from tunebench.evals.llamacpp import PARITY_METRICS
from tunebench.evals.lm_eval_index import TaskIndex, check_task_names
from tunebench.evals.probes import load_probe_set
from tunebench.reports.gate_rules import GateRule, load_rules

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricShape:
    """A family of metric names a config produces: fixed leading segments, then any tail when ``open``."""

    segments: tuple[str, ...]
    open: bool = True

    def text(self) -> str:
        return "/".join(self.segments) + ("/..." if self.open else "")


def preflight(cfg: RunConfig, whole_run: bool = False) -> None:
    """Refuse a config whose evaluation or gate cannot work, before anything heavy runs.

    Args:
        whole_run: ``tunebench run``: its gate reads only the artifacts ``export.gguf`` writes, so a required rule
            on another artifact is refused too (elsewhere it may be exported and evaluated by hand first).

    Raises:
        ConfigError: a contamination n-gram below the check's minimum.
        LmEvalError: an lm-eval task name lm-eval does not know (with close matches).
        ProbeError: a probe file that is missing or invalid (with file and line).
        GateError: a bad rules file, or a required rule that names a metric this config never produces.
    """
    if cfg.eval.contamination_ngram < MIN_SHINGLE_WORDS:
        raise ConfigError(
            f"eval.contamination_ngram: {cfg.eval.contamination_ngram} is below {MIN_SHINGLE_WORDS}, the shortest "
            "n-gram the train/eval overlap check accepts (shorter phrases in common say nothing); use 13 (the "
            "default)",
            key="eval.contamination_ngram",
        )
    index = check_task_names(list(cfg.eval.lm_eval_tasks)) if cfg.eval.lm_eval_tasks else None
    try:
        probe_sets = [load_probe_set(name).name for name in cfg.eval.probe_files]
    except ProbeError as e:
        raise ProbeError(f"eval.probe_files: {e}") from None
    if cfg.eval.judge.enabled:  # prompt sets, the judge's template and reference: its stage runs after evaluation
        judge_preflight(cfg.eval.judge)
    check_rules(cfg, load_rules(cfg.gate.rules), produced_metrics(cfg, probe_sets, index), whole_run)


def produced_metrics(cfg: RunConfig, probe_sets: list[str], index: TaskIndex | None) -> list[MetricShape]:
    """The metric names an evaluation under ``cfg`` can produce (evals.runner: perplexity, probes, lm-eval)."""
    out = []
    if cfg.eval.perplexity:
        out.append(MetricShape(("perplexity", "test"), open=False))
    if cfg.eval.probe_sampling:
        out += [MetricShape(("probes", s, smp.name)) for s in probe_sets for smp in cfg.eval.probe_sampling]
    for name in cfg.eval.lm_eval_tasks if index is not None else []:
        out.append(MetricShape(("lm_eval", name)))  # the task itself, or a group's pooled metrics
        for leaf, group in index.leaves(name).items():  # evals.lm_eval_groups.member_prefix
            out.append(MetricShape(("lm_eval", group, leaf) if group else ("lm_eval", leaf)))
    if cfg.eval.judge.enabled:  # evals.judge_metrics: judge/<set>/win_rate, and per category below it
        out += [MetricShape(("judge", set_name(spec))) for spec in cfg.eval.judge.prompt_sets]
    return list(dict.fromkeys(out))


def could_match(pattern: str, shape: MetricShape) -> bool:
    """Whether a rule's metric glob (reports.gate: ``*`` within a segment, ``**`` across) can match a name of
    ``shape``. Lenient where it cannot tell (past a ``**``): a false refusal would block a good run."""
    rule = pattern.split("/")
    for k, seg in enumerate(rule):
        if k >= len(shape.segments):
            return shape.open
        if "**" in seg:
            return fnmatch.fnmatchcase("/".join(shape.segments[k:]), seg.split("**")[0] + "*")
        if not fnmatch.fnmatchcase(shape.segments[k], seg):
            return False
    return len(rule) == len(shape.segments) and not shape.open


def check_rules(cfg: RunConfig, rules: list[GateRule], produced: list[MetricShape], whole_run: bool = False) -> None:
    """A required rule must name a metric ``cfg`` produces (and, for a whole run, an artifact ``cfg.export.gguf``
    writes).

    Raises:
        GateError: naming the rule's file and line, what the config produces, and what to change.
    """
    shown = [s.text() for s in produced if len(s.segments) <= 2 or s.segments[0] == "probes"]  # groups, not members
    what = ", ".join(shown[:12]) + (f" and {len(shown) - 12} more" if len(shown) > 12 else "") or "no metrics"
    for rule in rules:
        if rule.optional:
            continue
        shapes = produced
        if rule.artifact is not None:
            names = artifact_names(cfg.export.gguf, cfg.export.evaluate)
            if whole_run and rule.artifact not in names:
                raise GateError(
                    f"{rule.where}: rule {rule.label!r} reads exported artifact {rule.artifact!r}, which this config "
                    f"does not evaluate (export.gguf: {list(cfg.export.gguf)}, export.evaluate: "
                    f"{cfg.export.evaluate!r}: it evaluates {sorted(names) or 'none'}); export and evaluate it "
                    "(a '-llamacpp' artifact is scored with export.evaluate: llama.cpp) or set 'optional: true'"
                )
            if artifact_runtime(rule.artifact) == LLAMA_CPP:  # scored in llama.cpp: parity with the adapter too
                shapes = [*produced, *(MetricShape(tuple(m.split("/")), open=False) for m in PARITY_METRICS)]
        if not any(could_match(rule.metric, s) for s in shapes):
            raise GateError(
                f"{rule.where}: rule {rule.label!r} needs metric {rule.metric!r}, which this config never "
                f"produces (it produces {what}); add the lm-eval task, probe file or perplexity to eval, fix the "
                "name, or set 'optional: true' on the rule"
            )
