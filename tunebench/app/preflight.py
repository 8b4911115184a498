"""Checks a config can pass or fail before any model loads: a typo must cost seconds, not a training run.

``tunebench config`` and the start of ``run``, ``train``, ``eval`` and ``data`` call ``preflight``: lm-eval task
names (lm-eval's task index, cached), probe files (parsed as evaluation will), the judge's prompt sets and template,
the contamination n-gram length
(against the limit ``evals.contamination`` enforces) and the gate rules against the metrics this config can
produce (each registered evaluation family's, evals.families). It lives in the application layer because it asks
evals and reports; core validates types and ranges.
"""

from __future__ import annotations

import fnmatch
import logging

from tunebench.compare.rule import GateRule
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError, GateError, ProbeError
from tunebench.core.runtimes import artifact_names, artifact_runtime
from tunebench.evals.contamination import MIN_SHINGLE_WORDS
from tunebench.evals.families import MetricShape, artifact_metrics, produced_metrics
from tunebench.evals.judge.stage import preflight as judge_preflight
from tunebench.evals.lm_eval.index import check_task_names
from tunebench.evals.probes.sets import load_probe_set
from tunebench.gate.rules import load_rules

log = logging.getLogger(__name__)


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
    if cfg.eval.lm_eval_tasks:
        check_task_names(list(cfg.eval.lm_eval_tasks))
    try:
        for name in cfg.eval.probe_files:
            load_probe_set(name)
    except ProbeError as e:
        raise ProbeError(f"eval.probe_files: {e}") from None
    if cfg.eval.judge.enabled:  # prompt sets, the judge's template and reference: its stage runs after evaluation
        judge_preflight(cfg.eval.judge)
    check_rules(cfg, load_rules(cfg.gate.rules), produced_metrics(cfg.eval), whole_run)


def could_match(pattern: str, shape: MetricShape) -> bool:
    """Whether a rule's metric glob (gate.verdict: ``*`` within a segment, ``**`` across) can match a name of
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
            shapes = [*produced, *artifact_metrics(cfg.eval, artifact_runtime(rule.artifact))]  # llama.cpp: parity
        if not any(could_match(rule.metric, s) for s in shapes):
            raise GateError(
                f"{rule.where}: rule {rule.label!r} needs metric {rule.metric!r}, which this config never "
                f"produces (it produces {what}); add the lm-eval task, probe file or perplexity to eval, fix the "
                "name, or set 'optional: true' on the rule"
            )
