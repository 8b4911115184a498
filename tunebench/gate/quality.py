"""Quality assertions that decide exactly as the release gate does, for tests and scripts over a run folder.

Each assertion is one gate rule judged by ``gate.verdict`` on the run's comparison (the same intervals, the
same margins, the same verdicts); it passes only on the gate's ``pass``. An inconclusive metric fails with
the paired items that would conclude (``core.stats.items_needed``, as the gate prints it), and a metric
name that matches nothing fails too: no assertion passes on no evidence.

    gate = QualityGate(run_dir, compare_run(run_dir))
    gate.assert_non_inferior("perplexity/test", rel=0.05)     # at most 5% of base worse
    gate.assert_superior("lm_eval/*/acc", 0.02)               # at least 2 points better, every matching task
    gate.assert_passed()                                      # the run's gate rules (or a rules file)

The pytest plugin (``gate.pytest_plugin``) hands one of these to tests as the ``tunebench_gate`` fixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunebench.compare.comparison import Comparison
from tunebench.compare.rows import PASS, SKIPPED, GateRow, describe_row
from tunebench.compare.rule import glob_to_regex, parse_rule
from tunebench.core.runtimes import artifact_eval_command
from tunebench.gate.verdict import GateVerdict, artifact_comparisons, evaluate_gate, judge_run


def verdict_failure(verdict: GateVerdict, what: str, source: str | None = None) -> str:
    """Assertion message for a verdict that is not a pass: the outcome, then every row that did not pass.

    An inconclusive row's reason carries the paired items that would conclude, as the gate prints it.
    """
    judged = [r for r in verdict.rows if r.status != SKIPPED]
    bad = [r for r in judged if r.status != PASS]
    head = f"{what} {verdict.status.upper()}" + (f" (rules: {source})" if source else "")
    if verdict.reason:
        return f"{head}: {verdict.reason}\n" + "\n".join(f"  - {describe_row(r)}" for r in verdict.rows)
    return f"{head}: {len(bad)} of {len(judged)} rows did not pass\n" + "\n".join(f"  - {describe_row(r)}" for r in bad)


@dataclass
class QualityGate:
    """Gate-rule assertions over one run's comparison (base vs tuned, at the run's alpha and bootstrap size)."""

    run_dir: Path
    comparison: Comparison
    """The run's comparison as ``compare_run`` / ``gate.judge_run`` compute it (seed ``seed``)."""
    rules: str | Path | None = None
    """Rules file or shipped gate name for ``assert_passed()``; None = the run config's gate.rules, else the default."""
    seed: int = 0
    _artifacts: dict[str, Comparison] | None = field(default=None, init=False, repr=False)

    def assert_non_inferior(
        self,
        metric: str,
        margin: float | None = None,
        *,
        rel: float | None = None,
        direction: str = "auto",
        artifact: str | None = None,
    ) -> list[GateRow]:
        """Fail unless the interval of the change excludes a regression larger than the margin.

        The gate's ``max_regression`` (``rel``: ``max_regression_rel``, a share of |base|) rule on every metric
        that ``metric`` (a name or a gate glob) matches.

        Args:
            metric: Metric name or glob (``*`` one path segment, ``**`` any depth).
            margin: Largest tolerated regression in the metric's units (0.02 = 2 points of accuracy).
            rel: Largest tolerated regression as a share of the base value (0.05 = 5%).
            direction: ``auto`` (the metric's higher_is_better), ``higher`` or ``lower``.
            artifact: Judge an exported artifact (GGUF type, e.g. ``q8_0``) against the adapter instead.

        Returns:
            The gate rows, all ``pass``.

        Raises:
            AssertionError: a row failed or was inconclusive (with the items needed), or nothing matched.
            TypeError: neither margin nor rel given. GateError: an invalid value (negative, not a number).
        """
        __tracebackhide__ = True
        if margin is None and rel is None:
            raise TypeError("assert_non_inferior needs a margin: margin=0.02 (metric units) or rel=0.05 (of base)")
        return self._assert_rule(
            "assert_non_inferior", metric, direction, artifact, max_regression=margin, max_regression_rel=rel
        )

    def assert_superior(
        self,
        metric: str,
        t: float | None = None,
        *,
        rel: float | None = None,
        direction: str = "auto",
        artifact: str | None = None,
    ) -> list[GateRow]:
        """Fail unless the interval's worse end still improves by ``t`` (default 0: a significant improvement).

        The gate's ``min_improvement`` (``rel``: ``min_improvement_rel``) rule; arguments, return value and
        errors as in ``assert_non_inferior``.
        """
        __tracebackhide__ = True
        if t is None and rel is None:
            t = 0.0
        return self._assert_rule(
            "assert_superior", metric, direction, artifact, min_improvement=t, min_improvement_rel=rel
        )

    def verdict(self, rules: str | Path | None = None) -> GateVerdict:
        """The gate's verdict on this run, as ``tunebench gate`` decides it (``rules`` overrides ``self.rules``).

        Raises:
            GateError, ComparisonError, OSError: invalid rules or results.
        """
        return judge_run(self.run_dir, rules or self.rules, self.seed, self.comparison)

    def assert_passed(self, rules: str | Path | None = None) -> GateVerdict:
        """Fail unless the gate passes; the message lists every rule row that failed or was inconclusive.

        Args:
            rules: Rules file or shipped gate name; default ``self.rules``, else the run's own gate rules.

        Returns:
            The passing verdict.

        Raises:
            AssertionError: the gate failed or was inconclusive (also when no rule matched any metric).
        """
        __tracebackhide__ = True
        verdict = self.verdict(rules)
        if verdict.status != PASS:
            raise AssertionError(verdict_failure(verdict, "gate", verdict.rules_source))
        return verdict

    def _assert_rule(
        self, what: str, metric: str, direction: str, artifact: str | None, **thresholds: float | None
    ) -> list[GateRow]:
        __tracebackhide__ = True
        spec = {
            "metric": metric,
            "direction": direction,
            "artifact": artifact,
            **{k: v for k, v in thresholds.items() if v is not None},
        }
        what = f"{what}({metric!r})"
        rule = parse_rule(spec, what)
        artifacts = self._artifact_comparisons() if artifact is not None else {}
        if artifact is not None and artifact not in artifacts:
            raise AssertionError(
                f"{what}: artifact {artifact!r} was not evaluated in {self.run_dir} (evaluated: "
                f"{', '.join(artifacts) or 'none'}); `{artifact_eval_command(artifact, 'RUN')}`"
            )
        rows = artifacts[artifact].rows if artifact is not None else self.comparison.rows
        if not any(glob_to_regex(metric).match(r.metric) for r in rows):  # here: the gate's hint is for rules files
            raise AssertionError(
                f"{what}: no compared metric matches {metric!r}; nothing was checked "
                f"(known: {', '.join(r.metric for r in rows) or 'none'})"
            )
        verdict = evaluate_gate(self.comparison, [rule], artifacts)
        if verdict.status != PASS:
            raise AssertionError(verdict_failure(verdict, what))
        return verdict.rows

    def _artifact_comparisons(self) -> dict[str, Comparison]:
        if self._artifacts is None:
            self._artifacts = artifact_comparisons(self.run_dir, seed=self.seed)
        return self._artifacts
