"""One metric, base vs tuned: a ``MetricComparison`` row from two ``Metric`` records and their per-item records.

The row's delta = tuned - base, its (1 - alpha) interval and a p-value come from paired statistics:

- paired bootstrap over items (conversations, documents, samples); items whose ids all look like
  ``<prompt>#<k>`` are repeated samples of one prompt and are resampled per prompt;
- for pass/fail items, the p-value is McNemar's exact test on the discordant pairs and the interval
  Newcombe's paired score interval (the bootstrap collapses to [0, 0] when a few items all agree);
- without per-item records on both sides, an unpaired normal approximation from the two recorded
  stderrs/intervals (the row's ``method`` says so).

The verdict reads ``higher_is_better`` from the metric: ``improved`` / ``regressed`` when p < alpha,
``no significant change`` otherwise. Every row carries ``mde``, its minimum detectable effect at its n (paired
design, two-sided alpha, 80% power, the observed variance): a metric whose mde exceeds a gate's margin cannot carry
that decision. A pairwise judge's win rate is already paired and one-sided: ``judged_row`` reads it as a row.
"""

from __future__ import annotations

import math
import operator
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.core import stats
from tunebench.core.errors import ComparisonError
from tunebench.core.stats import fmt, fmt_interval, fmt_p
from tunebench.evals.results import Metric, Results

IMPROVED, REGRESSED, UNCHANGED = "improved", "regressed", "no significant change"
TOO_FEW = "too few samples"
FEW_SAMPLES = 10
"""Breakdown rows (one probe, one subject) with fewer paired units are flagged, not judged: a few samples are noise."""
INVALID = "invalid judge metric"
"""Verdict of a judge row whose metric cannot be read (too many unparseable judgments, an unreliable judge)."""
_SAMPLE_ID = re.compile(r"^(?P<unit>.+)#\d+$")


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


# ----------------------------------------------------------------------------- one metric


@dataclass
class MetricComparison:
    """One metric, base vs tuned, with paired statistics and assertion helpers for quality tests."""

    metric: str
    group: str
    unit: str
    higher_is_better: bool
    aggregate: str
    base: float | None
    tuned: float | None
    delta: float | None
    """tuned - base."""
    rel_delta: float | None
    """delta / |base| (None when base is 0)."""
    ci_low: float | None
    ci_high: float | None
    """(1 - alpha) interval of delta."""
    p_value: float | None
    significant: bool
    """p_value < alpha."""
    verdict: str
    n: int
    """Paired units the statistics rest on (items, or prompts when samples were grouped)."""
    method: str
    alpha: float = 0.05
    n_base: int = 0
    n_tuned: int = 0
    base_ci: list[float] | None = None
    tuned_ci: list[float] | None = None
    headline: bool = False
    """Key metric for the report's headline table (not a per-probe breakdown)."""
    details: dict[str, Any] = field(default_factory=dict)
    mde: float | None = None
    """Minimum detectable effect at this n (paired, two-sided alpha, 80% power), in the metric's units."""
    p_adjusted: float | None = None
    """Benjamini-Hochberg adjusted p within the row's family (breakdown rows only; the verdict reads it)."""
    family: str | None = None
    """The metric this row breaks down (``lm_eval/mmlu/acc`` for a subject); None for a top-level row."""

    @property
    def judged(self) -> bool:
        """False for a breakdown row with too few samples to judge (see FEW_SAMPLES)."""
        return self.family is None or self.n >= FEW_SAMPLES

    @property
    def improvement(self) -> float | None:
        """Delta oriented so that positive is better."""
        if self.delta is None:
            return None
        return self.delta if self.higher_is_better else -self.delta

    def describe(self) -> str:
        """One line with both values, the delta, its interval, p and n."""
        level = f"{100 * (1 - self.alpha):g}%"
        rel = f" ({self.rel_delta * 100:+.1f}%)" if self.rel_delta is not None else ""
        better = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.metric}: base {fmt(self.base)} -> tuned {fmt(self.tuned)}, delta {fmt(self.delta, True)}{rel}, "
            f"{level} CI {fmt_interval(self.ci_low, self.ci_high)}, p={fmt_p(self.p_value)}, "
            f"n={self.n} {self.unit}; {better} is better; verdict: {self.verdict} [{self.method}]"
        )

    def assert_improved(self) -> MetricComparison:
        """Fail unless tuned is significantly better than base."""
        if self.verdict != IMPROVED:
            raise AssertionError(f"expected a significant improvement, got '{self.verdict}'. {self.describe()}")
        return self

    def assert_not_regressed(self, max_regression: float = 0.0, *, rel: bool = False) -> MetricComparison:
        """Fail unless the interval of the change excludes a regression larger than ``max_regression``.

        The release gate's non-inferiority rule judged on this row (reports.gate.judge): "not significantly
        worse" is no evidence of "not worse", so an inconclusive row fails too, with the paired items that
        would conclude. The default margin 0 asks the interval's worse end to be no regression at all.

        Args:
            max_regression: Tolerated regression in the metric's units, or a share of |base| when ``rel``.
            rel: Read ``max_regression`` as a share of the base value (0.05 = 5%).
        """
        __tracebackhide__ = True  # pytest reports the test's line
        # quality -> gate -> this module: imported at module level, the three would import in a cycle
        from tunebench.reports import quality

        quality.assert_rule_on_row(
            self, "assert_not_regressed", **{"max_regression_rel" if rel else "max_regression": max_regression}
        )
        return self

    def assert_value(self, op: str, x: float, side: str = "tuned") -> MetricComparison:
        """Fail unless ``<side value> <op> x`` (side: tuned | base | delta; op: < <= > >= == !=)."""
        ops = {
            "<": operator.lt,
            "<=": operator.le,
            ">": operator.gt,
            ">=": operator.ge,
            "==": operator.eq,
            "!=": operator.ne,
        }
        if op not in ops:
            raise ValueError(f"unknown operator {op!r}; use one of {', '.join(ops)}")
        if side not in ("tuned", "base", "delta"):
            raise ValueError(f"side must be 'tuned', 'base' or 'delta' (got {side!r})")
        value = getattr(self, side)
        if value is None or not ops[op](value, x):
            raise AssertionError(f"expected {side} {op} {fmt(x)}, got {fmt(value)}. {self.describe()}")
        return self


def _cluster_keys(ids: list[str]) -> dict[str, str] | None:
    """Prompt of each ``prompt#k`` sample id, when grouping gives 2..n-1 clusters; else None."""
    keys = {}
    for i in ids:
        m = _SAMPLE_ID.match(i)
        if not m:
            return None
        keys[i] = m.group("unit")
    return keys if 2 <= len(set(keys.values())) < len(ids) else None


def _sub_seed(seed: int, name: str) -> int:
    # Per-metric stream: a metric's interval does not change when other metrics are added or reordered.
    return (seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**32)


def _metric_ci(m: Metric) -> list[float] | None:
    return [m.ci_low, m.ci_high] if m.ci_low is not None and m.ci_high is not None else None


@dataclass
class _Stats:
    """The statistics of one row: the delta's interval, its p-value, the paired units and how they were got."""

    low: float | None
    high: float | None
    p: float | None
    n: int
    method: str


def _paired_stats(
    bm: Metric,
    b_items: list[dict[str, Any]],
    t_items: list[dict[str, Any]],
    alpha: float,
    n_boot: int,
    seed: int,
    details: dict[str, Any],
) -> _Stats:
    """Paired bootstrap over the items (per prompt for ``prompt#k`` samples); McNemar for pass/fail items.

    Records the samples and discordant pairs in ``details``.
    """
    name = bm.name
    try:
        ids, b_num, b_den, t_num, t_den = stats.pair_items(b_items, t_items)
        clusters = _cluster_keys(ids)
        pr = stats.paired_bootstrap(
            b_items, t_items, bm.aggregate, n_boot, alpha, _sub_seed(seed, name), clusters=clusters
        )
    except ValueError as e:
        raise ComparisonError(f"{name}: {e}") from None
    out = _Stats(_finite(pr.low), _finite(pr.high), pr.p_value, pr.n, pr.method)
    if clusters:
        out.method = out.method.replace("clusters", "prompts (samples grouped per prompt)")
        details["samples"] = len(ids)
    if stats.is_binary(b_num, b_den) and stats.is_binary(t_num, t_den):
        b, c = stats.discordant(b_num, t_num)
        out.p = stats.mcnemar_exact(b, c)
        out.n = len(ids)
        details["discordant"] = {"base_only": b, "tuned_only": c}
        if not clusters:  # one pass/fail per item: a score interval, honest also at small n
            out.low, out.high = stats.paired_proportion_interval(b_num, t_num, alpha)
            out.method = (
                f"McNemar exact test on {out.n} paired items (b={b}, c={c}); "
                "interval: Newcombe paired score (method 10)"
            )
        else:
            out.method = f"McNemar exact test on {out.n} paired items (b={b}, c={c}); interval: {out.method}"
    return out


def _unpaired_stats(bm: Metric, tm: Metric, alpha: float) -> _Stats:
    """Without per-item records on both sides: a normal approximation from the recorded stderrs, when there are."""
    base, tuned = _finite(bm.value), _finite(tm.value)
    b_se = stats.standard_error(bm.stderr, bm.ci_low, bm.ci_high)
    t_se = stats.standard_error(tm.stderr, tm.ci_low, tm.ci_high)
    if base is not None and tuned is not None and b_se is not None and t_se is not None:
        _, low, high, p = stats.normal_difference(base, b_se, tuned, t_se, alpha)
        method = "unpaired normal approximation from recorded stderrs (no per-item records; ignores pairing)"
        return _Stats(low, high, p, min(bm.n, tm.n), method)
    return _Stats(None, None, None, min(bm.n, tm.n), "no per-item records and no stderr/interval: no test possible")


def compare_metric(
    bm: Metric,
    tm: Metric,
    b_items: list[dict[str, Any]] | None,
    t_items: list[dict[str, Any]] | None,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> MetricComparison:
    """Compare one metric (see the module docstring for the methods).

    Raises:
        ComparisonError: items that do not pair up (different ids), or disagreeing metric definitions.
    """
    name = bm.name
    if bm.higher_is_better != tm.higher_is_better or bm.aggregate != tm.aggregate:
        raise ComparisonError(
            f"{name}: base and tuned define the metric differently (higher_is_better {bm.higher_is_better} vs "
            f"{tm.higher_is_better}, aggregate {bm.aggregate!r} vs {tm.aggregate!r}); re-run both evaluations"
        )
    base, tuned = _finite(bm.value), _finite(tm.value)
    delta = tuned - base if base is not None and tuned is not None else None
    details: dict[str, Any] = {}
    if isinstance(bm.details.get("documents_in_task"), int):  # what a larger eval.lm_eval_limit could reach
        details["documents_in_task"] = bm.details["documents_in_task"]
    if b_items and t_items:
        st = _paired_stats(bm, b_items, t_items, alpha, n_boot, seed, details)
    else:
        st = _unpaired_stats(bm, tm, alpha)
    low, high, p, n, method = st.low, st.high, st.p, st.n, st.method
    significant = p is not None and delta is not None and p < alpha
    oriented = None if delta is None else (delta if bm.higher_is_better else -delta)
    verdict = _verdict(significant, oriented)
    return MetricComparison(
        metric=name,
        group=bm.group or name.split("/", 1)[0],
        unit=bm.unit,
        higher_is_better=bm.higher_is_better,
        aggregate=bm.aggregate,
        base=base,
        tuned=tuned,
        delta=delta,
        rel_delta=delta / abs(base) if delta is not None and base else None,
        ci_low=low,
        ci_high=high,
        p_value=_finite(p) if p is not None else None,
        significant=significant,
        verdict=verdict,
        n=n,
        method=method,
        alpha=alpha,
        n_base=bm.n,
        n_tuned=tm.n,
        base_ci=_metric_ci(bm),
        tuned_ci=_metric_ci(tm),
        details=details,
        mde=stats.detectable_effect(low, high, alpha),
    )


def _verdict(significant: bool, oriented: float | None) -> str:
    if significant and oriented:
        return IMPROVED if oriented > 0 else REGRESSED
    return UNCHANGED


# ----------------------------------------------------------------------------- judged (one-sided paired) metrics

JUDGE_DIR = "judge"
"""eval/judge/results.json holds the pairwise judge's metrics (label judge; evals.judge)."""


def judged_row(m: Metric, alpha: float = 0.05) -> MetricComparison:
    """A judge's win rate as a comparison row: base 0.5 (no preference), tuned the win rate, delta win_rate - 0.5.

    A judge compares tuned with base on each prompt, so its metric is already paired and one-sided; the row carries
    the judge stage's clustered bootstrap interval (shifted by 0.5), its sign-test p and its MDE, and gate rules
    read it like any row (``min_improvement`` over 0.5, ``max_regression`` below it). An invalid metric (too many
    unparseable judgments, an unreliable judge) has no interval: the gate reads it as inconclusive and says why.
    """
    d = m.details
    value = _finite(m.value)
    valid = bool(d.get("valid", True)) and value is not None and m.ci_low is not None and m.ci_high is not None
    delta = value - 0.5 if value is not None else None
    low = m.ci_low - 0.5 if valid else None
    high = m.ci_high - 0.5 if valid else None
    p = _finite(d.get("p_value")) if valid and d.get("p_value") is not None else None
    significant = p is not None and p < alpha and low is not None and (low > 0 or high < 0)
    verdict = (IMPROVED if delta and delta > 0 else REGRESSED) if significant else UNCHANGED if valid else INVALID
    method = (
        f"pairwise judge, both orders; {m.ci_method}"
        if valid
        else f"judge metric invalid: {d.get('invalid_reason') or 'no interval'}"
    )
    return MetricComparison(
        metric=m.name,
        group="judge",
        unit=m.unit,
        higher_is_better=True,
        aggregate="mean",
        base=0.5,
        tuned=value,
        delta=delta,
        rel_delta=None,
        ci_low=low,
        ci_high=high,
        p_value=p,
        significant=significant,
        verdict=verdict,
        n=m.n,
        method=method,
        alpha=alpha,
        n_base=m.n,
        n_tuned=m.n,
        tuned_ci=_metric_ci(m),
        headline=d.get("headline", True) is not False,
        details=dict(d),
        mde=_finite(d["mde"]) if valid and d.get("mde") is not None else None,
    )


def judged_rows(judged: Results | None, alpha: float = 0.05) -> list[MetricComparison]:
    """Rows of every paired judge metric in ``judged`` (none when the run has no judge stage)."""
    if judged is None:
        return []
    return [judged_row(m, alpha) for m in judged.metrics if m.details.get("paired")]


def load_judge_results(run_dir: str | Path) -> Results | None:
    """A run's judge results (eval/judge/results.json), or None without a judge stage."""
    path = Path(run_dir) / "eval" / JUDGE_DIR / "results.json"
    return Results.load(path) if path.exists() else None
