"""Release gate: rules over a Comparison decide, on confidence bounds, whether an adapter may ship.

Rules files (YAML: ``metric`` globs, thresholds, ``artifact``, ``optional``) are read by ``gate.rules``,
whose docstring shows one; each rule is a ``compare.rule.GateRule``, and one rule on one row is judged by
``compare.rows.judge``.

Improvement I is delta oriented so that positive is better; [lo, hi] is the comparison's two-sided
(1 - alpha) interval of I (95% by default: each bound is a one-sided 97.5% bound). Each threshold sets a
margin M on the improvement scale and has three verdicts:

- ``max_regression: m`` (non-inferiority, M = -m): pass when lo >= -m (the evidence excludes a regression
  larger than m), fail when hi < -m (a regression larger than m is established), else inconclusive.
- ``min_improvement: t`` (superiority, M = t): pass when lo > t (an improvement above t), fail when hi <= t, else
  inconclusive; ``min_improvement: 0`` passes exactly when the row's verdict is "improved" (interval and p come
  from one method, ``compare.rows``).
- ``_rel`` variants scale the margin by |base| (0.02 = 2% of the base value).

A row with fewer paired units than ``report.min_n`` (the report flags it "too few samples") makes any rule on it
inconclusive, pass or fail, with the units a verdict needs.

A rule with several thresholds fails if one fails, else is inconclusive if one is. An inconclusive row
says how many paired items would conclude at the observed variance with 80% power
(``core.stats.items_needed``). A metric without an interval is inconclusive: no rule passes on no evidence.
Nor does a gate: when every rule was skipped (optional rules that matched no metric), nothing was checked and
the verdict is inconclusive, with that reason.

Exit codes of ``gate_main``: 0 every rule that matched a metric passed (and at least one did; the others were
skipped), 1 a rule failed, 3 no rule failed but some were inconclusive, or none matched any metric, 2 invalid
input (missing results or metric, mismatched inputs, bad rules file).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

from tunebench.compare.comparison import Comparison, compare
from tunebench.compare.rows import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    SKIPPED,
    GateRow,
    MetricComparison,
    judge,
    load_judge_results,
)
from tunebench.compare.rule import GateRule, glob_to_regex, parse_rule
from tunebench.compare.runs import compare_artifacts, load_artifact_results, load_run_results, run_settings
from tunebench.core.errors import (
    EXIT_GATE_FAILED,
    EXIT_GATE_INCONCLUSIVE,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    GateError,
    InvalidInput,
)
from tunebench.core.io import atomic_write_json, short
from tunebench.core.numbers import fmt
from tunebench.core.runtimes import artifact_eval_command, artifact_quant
from tunebench.evals.results import Results
from tunebench.gate.rules import load_rules, resolve_rules_path

SCHEMA = "tunebench.gate/2"
NOTHING_CHECKED = "no rule matched any metric: nothing was checked"


@dataclass
class GateVerdict:
    """All rule rows and the overall outcome."""

    passed: bool
    rows: list[GateRow]
    alpha: float | None
    rules_source: str | None = None
    status: str = "pass"
    """pass | fail | inconclusive | invalid"""
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    schema: str = SCHEMA
    reason: str | None = None
    """Why the gate as a whole is inconclusive when no single row says so (NOTHING_CHECKED); else None."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 3 inconclusive, 2 invalid (core.errors)."""
        return {PASS: EXIT_OK, FAIL: EXIT_GATE_FAILED, INCONCLUSIVE: EXIT_GATE_INCONCLUSIVE}.get(
            self.status, EXIT_INVALID_INPUT
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateVerdict:
        rows = [GateRow(**r) for r in data.get("rows", [])]
        return cls(rows=rows, **{k: v for k, v in data.items() if k != "rows"})


# ----------------------------------------------------------------------------- evaluation


def _artifact_rows(rule: GateRule, artifacts: dict[str, Comparison] | None) -> list[MetricComparison] | GateRow:
    """The rows an ``artifact:`` rule reads, or its skipped row when the artifact was not evaluated (optional rule).

    Raises:
        GateError: a non-optional rule on an artifact the run has not evaluated (says how to evaluate it).
    """
    if rule.artifact in (artifacts or {}):
        return artifacts[rule.artifact].rows
    if rule.optional:
        return GateRow(
            rule.label,
            rule.metric,
            "skipped",
            f"artifact {rule.artifact} not evaluated (optional rule)",
            rule.threshold_text(),
        )
    known = ", ".join(artifacts or {}) or "none"
    raise GateError(
        f"{rule.where}: rule reads artifact {rule.artifact!r}, which this run has not evaluated "
        f"(evaluated: {known}); `tunebench export RUN --gguf --quant {artifact_quant(rule.artifact)}` then "
        f"`{artifact_eval_command(rule.artifact, 'RUN')}`"
    )


def _rule_rows(rule: GateRule, comparison: Comparison, artifacts: dict[str, Comparison] | None) -> list[GateRow]:
    """One rule on every metric it matches (a skipped row when an optional rule matches none).

    Raises:
        GateError: a non-optional rule matching no metric, or reading an artifact that was not evaluated.
    """
    rx = glob_to_regex(rule.metric)
    source_rows = comparison.rows
    if rule.artifact is not None:
        source_rows = _artifact_rows(rule, artifacts)
        if isinstance(source_rows, GateRow):
            return [source_rows]
    matched = [r for r in source_rows if rx.match(r.metric)]
    if not matched:
        if rule.optional:
            return [
                GateRow(rule.label, rule.metric, "skipped", "no metric matches (optional rule)", rule.threshold_text())
            ]
        known = ", ".join(r.metric for r in comparison.rows) or "none"
        raise GateError(
            f"{rule.where}: no compared metric matches {short(rule.metric)} (known: {known}); "
            "fix the name, or set 'optional: true' if the metric may be absent"
        )
    rows = []
    for r in matched:
        row = judge(rule, r)
        if rule.artifact is not None:  # base/tuned columns hold adapter/artifact values
            row.metric = f"{r.metric} [{rule.artifact} vs adapter]"
        rows.append(row)
    return rows


def evaluate_gate(
    comparison: Comparison,
    rules: list[GateRule] | list[dict[str, Any]] | str | Path | None,
    artifacts: dict[str, Comparison] | None = None,
) -> GateVerdict:
    """Apply rules to a comparison.

    Args:
        comparison: Base vs tuned comparison.
        rules: Parsed rules, rule mappings, a rules file path / shipped name, or None for the default.
        artifacts: exported type -> adapter vs artifact comparison, read by rules that set ``artifact``.

    Returns:
        GateVerdict: status fail when a rule failed, else inconclusive when one was or when no rule judged
        any metric (all skipped: ``reason`` says nothing was checked), else pass; passed is status == pass.

    Raises:
        GateError: invalid rules, or a non-optional rule matching no metric.
    """
    source = None
    if rules is None or isinstance(rules, (str, Path)):
        source = str(resolve_rules_path(rules))
        rules = load_rules(rules)
    parsed = [r if isinstance(r, GateRule) else parse_rule(r, f"rule {k + 1}") for k, r in enumerate(rules)]
    rows = [row for rule in parsed for row in _rule_rows(rule, comparison, artifacts)]
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, INCONCLUSIVE, SKIPPED)}
    status = FAIL if counts[FAIL] else INCONCLUSIVE if counts[INCONCLUSIVE] else PASS
    reason = None
    if not counts[PASS] and status == PASS:  # every rule skipped: no evidence was looked at, so no pass
        status, reason = INCONCLUSIVE, NOTHING_CHECKED
    return GateVerdict(
        passed=status == PASS,
        rows=rows,
        alpha=comparison.alpha,
        rules_source=source,
        status=status,
        counts=counts,
        reason=reason,
    )


def format_verdict(verdict: GateVerdict) -> str:
    """Plain-text table for the terminal."""
    body = [
        [
            r.status.upper(),
            r.rule,
            r.metric,
            fmt(r.base),
            fmt(r.tuned),
            fmt(r.delta, True),
            f"[{fmt(r.ci_low, True)}, {fmt(r.ci_high, True)}]" if r.ci_low is not None else "n/a",
            r.threshold,
            r.reason,
        ]
        for r in verdict.rows
    ]
    word = {PASS: "PASSED", FAIL: "FAILED", INCONCLUSIVE: "INCONCLUSIVE"}.get(verdict.status, verdict.status.upper())
    tally = ", ".join(f"{verdict.counts.get(s, 0)} {s}" for s in (PASS, FAIL, INCONCLUSIVE, SKIPPED))
    setting = f"two-sided {100 * (1 - verdict.alpha):g}% intervals; rules: {verdict.rules_source or 'inline'}"
    head = (
        f"gate {word}: {verdict.reason} ({tally}; {setting})" if verdict.reason else f"gate {word}: {tally} ({setting})"
    )
    return (
        head
        + "\n"
        + tabulate(
            body,
            headers=["Status", "Rule", "Metric", "Base", "Tuned", "Δ", "CI of Δ", "Threshold", "Reason"],
            tablefmt="simple",
            disable_numparse=True,
        )
    )


def artifact_comparisons(run_dir: str | Path, tuned: Results | None = None, seed: int = 0) -> dict[str, Comparison]:
    """Each evaluated export of a run (eval/gguf-*/) against its adapter, at the run's alpha and bootstrap size.

    Raises:
        ComparisonError: an artifact scored on other inputs; RunFileError: damaged results.
    """
    settings = run_settings(run_dir)
    tuned = tuned if tuned is not None else load_run_results(run_dir)["tuned"]
    return compare_artifacts(
        tuned, load_artifact_results(run_dir), settings["alpha"], settings["n_boot"], seed, settings["min_n"]
    )


def judge_run(
    run_dir: str | Path,
    rules_path: str | Path | None = None,
    seed: int = 0,
    comparison: Comparison | None = None,
    artifacts: dict[str, Comparison] | None = None,
) -> GateVerdict:
    """What ``gate_main`` decides for a run folder, without printing or writing anything.

    Args:
        run_dir: Run folder with ``eval/base/results.json`` and ``eval/tuned/results.json``.
        rules_path: Rules YAML or shipped gate name; default: the run config's ``gate.rules``, else
            ``configs/gates/default.yaml``.
        seed: Bootstrap seed (the pipeline's comparison uses 0 too).
        comparison: The run's base vs tuned comparison at its own alpha, bootstrap size and ``seed``, when
            the caller already holds it (the pytest plugin's session fixture, the pipeline's ``finish``); computed
            here otherwise.
        artifacts: Every evaluated export's comparison against the adapter, as ``artifact_comparisons`` computes
            it (the same settings and ``seed``), when the caller already holds them (``finish``); computed here
            otherwise, and only when a rule reads an artifact.

    Raises:
        InvalidInput: invalid rules (GateError), results that do not compare (ComparisonError), missing or
            damaged results or config (MissingRunFile, RunFileError); ``gate_main`` maps these, and only these,
            to exit code 2.
    """
    settings = run_settings(run_dir)
    path = resolve_rules_path(rules_path or settings["gate_rules"])
    rules = load_rules(path)
    results = load_run_results(run_dir) if comparison is None else None
    if comparison is None:
        comparison = compare(
            results["base"],
            results["tuned"],
            settings["alpha"],
            settings["n_boot"],
            seed,
            judged=load_judge_results(run_dir),
            min_n=settings["min_n"],
        )
    if artifacts is None:
        artifacts = {}
        if any(r.artifact for r in rules):
            artifacts = artifact_comparisons(run_dir, results["tuned"] if results else None, seed)
    verdict = evaluate_gate(comparison, rules, artifacts)
    verdict.rules_source = str(path)
    return verdict


def gate_main(
    run_dir: str | Path,
    rules_path: str | Path | None = None,
    out_path: str | Path | None = None,
    seed: int = 0,
    stream: TextIO | None = None,
) -> int:
    """Judge a run folder (``judge_run``), print the table and write the verdict atomically.

    Args:
        run_dir: Run folder with ``eval/base/results.json`` and ``eval/tuned/results.json``.
        rules_path: Rules YAML or shipped gate name; default: the run config's ``gate.rules``, else
            ``configs/gates/default.yaml``.
        out_path: Where to write the verdict; default ``<run_dir>/gate.json`` (``verdict_path`` names the file for
            rules other than the run's own).
        seed: Bootstrap seed (the pipeline's comparison uses 0 too).
        stream: Where to print (default stdout; errors go to stderr).

    Returns:
        0 passed, 1 a rule failed, 3 inconclusive (no rule failed, some could not conclude, or no rule
        matched any metric), 2 invalid input: then nothing is written, and a verdict already there stays as it was.
    """
    stream = stream or sys.stdout
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path else run_dir / "gate.json"
    try:
        verdict = judge_run(run_dir, rules_path, seed)
    except InvalidInput as e:  # only what the readers and rules raise on purpose: a bug keeps its traceback
        print(f"gate: invalid input: {e}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    write_verdict(verdict, out, stream)
    return verdict.exit_code


def write_verdict(verdict: GateVerdict, out: Path, stream: TextIO) -> None:
    """Print the verdict's table to ``stream`` and write it to ``out`` atomically."""
    print(format_verdict(verdict), file=stream)
    atomic_write_json(out, verdict.to_dict())
    print(f"wrote {out}", file=stream)
