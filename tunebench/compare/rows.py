"""One metric, base vs tuned: a ``MetricComparison`` row from two ``Metric`` records and their per-item records.

The row's delta = tuned - base, its (1 - alpha) interval and its p-value come from one method, so "the interval
excludes 0" holds exactly when "p < alpha" does, and the release gate (which reads the interval) and the verdict
(which reads p) cannot disagree:

- pass/fail items: ``core.matched_pairs``, Tango's score interval with McNemar's score test; items whose ids all look
  like ``<prompt>#<k>`` are repeated samples of one prompt, clustered by prompt (Rao-Scott design effect, Durkalski's
  clustered McNemar test) and counted as prompts;
- other items (perplexity, mean scores): ``core.stats.paired_bootstrap``, a studentized bootstrap over items (or
  prompts) with the p-value that inverts it;
- without per-item records on both sides, an unpaired interval and test from the two recorded stderrs/intervals
  (Welch's t; the row's ``method`` says so).

The verdict reads ``higher_is_better`` from the metric: ``improved`` / ``regressed`` when p < alpha,
``no significant change`` otherwise, and ``too few samples`` below ``min_n`` paired units (``report.min_n``, also read
by the gate, which calls such a rule inconclusive). Every row carries ``mde``, its minimum detectable effect at its n
(paired design, two-sided alpha, 80% power, the observed variance; Student's t for a bootstrap row): a metric whose
mde exceeds a gate's margin cannot carry that decision. A pairwise judge's win rate is already paired: ``judged_row``
reads its length-controlled rate as the row, the raw rate beside it.

One gate rule (``compare.rule``) on one row is decided here too (``judge``, ``GateRow``: the release gate's semantics
are in ``gate.verdict``), so a row's ``assert_not_regressed`` and the gate decide with one function and this module
imports nothing above its floor.
"""

from __future__ import annotations

import math
import operator
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.compare.rule import GateRule, parse_rule
from tunebench.core import stats
from tunebench.core.errors import ComparisonError
from tunebench.core.matched_pairs import matched_pairs
from tunebench.core.numbers import fmt, fmt_interval, fmt_p
from tunebench.core.pairwise import explained_by_length
from tunebench.evals.results import Metric, Results

IMPROVED, REGRESSED, UNCHANGED = "improved", "regressed", "no significant change"
TOO_FEW = "too few samples"
FEW_SAMPLES = 10
"""Default of ``report.min_n``: rows with fewer paired units are flagged, not judged (a few samples are noise), and a
gate rule on them is inconclusive."""
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
    min_n: int = FEW_SAMPLES
    """Fewest paired units a verdict needs (``report.min_n``): below it the row is ``too few samples``."""
    df: float | None = None
    """Degrees of freedom of a t-type interval (a bootstrap row: units - 1); None for score and likelihood
    intervals, read on the normal scale. The MDE and the gate's items needed use it."""
    ci_alpha: float | None = None
    """1 - coverage of ci_low/ci_high when it is not ``alpha``: a breakdown family's false-coverage-rate adjusted
    interval (``core.multiplicity.fcr_alpha``), which excludes 0 exactly when the adjusted p is below alpha."""

    @property
    def judged(self) -> bool:
        """False for a row with fewer paired units than ``min_n``: flagged, not judged, and inconclusive at the gate."""
        return self.n >= self.min_n

    @property
    def interval_alpha(self) -> float:
        """1 - coverage of the row's interval of delta."""
        return self.alpha if self.ci_alpha is None else self.ci_alpha

    @property
    def improvement(self) -> float | None:
        """Delta oriented so that positive is better."""
        if self.delta is None:
            return None
        return self.delta if self.higher_is_better else -self.delta

    def describe(self) -> str:
        """One line with both values, the delta, its interval, p and n."""
        level = f"{100 * (1 - self.interval_alpha):g}%"
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

        The release gate's non-inferiority rule judged on this row (``judge`` below): "not significantly
        worse" is no evidence of "not worse", so an inconclusive row fails too, with the paired items that
        would conclude. The default margin 0 asks the interval's worse end to be no regression at all.

        Args:
            max_regression: Tolerated regression in the metric's units, or a share of |base| when ``rel``.
            rel: Read ``max_regression`` as a share of the base value (0.05 = 5%).
        """
        __tracebackhide__ = True  # pytest reports the test's line
        assert_rule_on_row(
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
    """Prompt of each ``prompt#k`` sample id, when some prompt has several samples; else None (one sample per prompt,
    ids of another shape, or samples of a single prompt, as a per-probe row is: every item is its own unit, and the
    row's inference is about that one prompt)."""
    keys = {}
    for i in ids:
        m = _SAMPLE_ID.match(i)
        if not m:
            return None
        keys[i] = m.group("unit")
    return keys if 1 < len(set(keys.values())) < len(ids) else None


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
    df: float | None = None


def _paired_stats(
    bm: Metric,
    b_items: list[dict[str, Any]],
    t_items: list[dict[str, Any]],
    alpha: float,
    n_boot: int,
    seed: int,
    details: dict[str, Any],
) -> _Stats:
    """Matched pairs for pass/fail items, else a paired studentized bootstrap; per prompt for ``prompt#k`` samples.

    Records the samples and discordant pairs in ``details``.
    """
    name = bm.name
    try:
        ids, b_num, b_den, t_num, t_den = stats.pair_items(b_items, t_items)
        clusters = _cluster_keys(ids)
        if clusters:
            details["samples"] = len(ids)
        if stats.is_binary(b_num, b_den) and stats.is_binary(t_num, t_den):
            keys = [clusters[i] for i in ids] if clusters else None
            mp = matched_pairs((t_num == 1) & (b_num == 0), (b_num == 1) & (t_num == 0), keys, alpha)
            details["discordant"] = {"base_only": mp.b, "tuned_only": mp.c}
            if clusters:
                details["design_effect"] = mp.design_effect
            method = mp.method.replace("units", "prompts (samples grouped per prompt)")
            return _Stats(_finite(mp.low), _finite(mp.high), mp.p_value, mp.units, method)
        pr = stats.paired_bootstrap(
            b_items, t_items, bm.aggregate, n_boot, alpha, _sub_seed(seed, name), clusters=clusters
        )
    except ValueError as e:
        raise ComparisonError(f"{name}: {e}") from None
    method = pr.method.replace("clusters", "prompts (samples grouped per prompt)") if clusters else pr.method
    return _Stats(_finite(pr.low), _finite(pr.high), _finite(pr.p_value), pr.n, method, pr.n - 1 if pr.n > 1 else None)


def _unpaired_stats(bm: Metric, tm: Metric, alpha: float) -> _Stats:
    """Without per-item records on both sides: Welch's interval and test from the recorded stderrs, when there are."""
    base, tuned = _finite(bm.value), _finite(tm.value)
    b_se = stats.standard_error(bm.stderr, bm.ci_low, bm.ci_high)
    t_se = stats.standard_error(tm.stderr, tm.ci_low, tm.ci_high)
    if base is not None and tuned is not None and b_se is not None and t_se is not None:
        df = stats.welch_df(b_se, bm.n, t_se, tm.n)
        _, low, high, p = stats.normal_difference(base, b_se, tuned, t_se, alpha, df)
        method = (
            "unpaired Welch interval and test from recorded stderrs (no per-item records; ignores pairing)"
            if df is not None
            else "unpaired normal approximation from recorded stderrs (no per-item records; ignores pairing)"
        )
        return _Stats(low, high, p, min(bm.n, tm.n), method, df)
    return _Stats(None, None, None, min(bm.n, tm.n), "no per-item records and no stderr/interval: no test possible")


def compare_metric(
    bm: Metric,
    tm: Metric,
    b_items: list[dict[str, Any]] | None,
    t_items: list[dict[str, Any]] | None,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    min_n: int = FEW_SAMPLES,
) -> MetricComparison:
    """Compare one metric (see the module docstring for the methods); below ``min_n`` paired units the verdict is
    ``too few samples``.

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
    row = MetricComparison(
        metric=name,
        group=bm.group or name.split("/", 1)[0],
        unit="prompts" if "samples" in details else bm.unit,  # n counts prompts once samples are grouped
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
        verdict=UNCHANGED,
        n=n,
        method=method,
        alpha=alpha,
        n_base=bm.n,
        n_tuned=tm.n,
        base_ci=_metric_ci(bm),
        tuned_ci=_metric_ci(tm),
        details=details,
        mde=stats.detectable_effect(low, high, alpha, df=st.df),
        min_n=min_n,
        df=st.df,
    )
    row.verdict = verdict_of(row)
    return row


def verdict_of(r: MetricComparison) -> str:
    """``too few samples`` below min_n units, else improved / regressed when significant, else no significant change.

    The direction is the side of 0 the interval lies on (the one the gate reads), the delta's sign without one.
    """
    if not r.judged:
        return TOO_FEW
    if not r.significant or r.delta is None:
        return UNCHANGED
    side = r.delta
    if r.ci_low is not None and r.ci_high is not None and (r.ci_low > 0 or r.ci_high < 0):
        side = r.ci_low if r.ci_low > 0 else r.ci_high
    if side == 0:
        return UNCHANGED
    return IMPROVED if (side > 0) == r.higher_is_better else REGRESSED


# ----------------------------------------------------------------------------- judged (one-sided paired) metrics

JUDGE_DIR = "judge"
"""eval/judge/results.json holds the pairwise judge's metrics (label judge; evals.judge)."""


def _judged_reading(m: Metric) -> tuple[str, float | None, list[float | None], float | None]:
    """(what the row reads, its value, interval, p): the length-controlled win rate when the judge stage recorded its
    test, else (results written before it) the raw win rate."""
    d = m.details
    lc_ci = d.get("lc_ci") or [None, None]
    if d.get("lc_p_value") is not None and _finite(d.get("lc_win_rate")) is not None and None not in lc_ci:
        return "length-controlled win rate", _finite(d["lc_win_rate"]), list(lc_ci), _finite(d["lc_p_value"])
    return "raw win rate", _finite(m.value), [m.ci_low, m.ci_high], _finite(d.get("p_value"))


def judged_row(m: Metric, alpha: float = 0.05, min_n: int = FEW_SAMPLES) -> MetricComparison:
    """A judge's win rate as a comparison row: base 0.5 (no preference), tuned the rate, delta rate - 0.5.

    A judge compares tuned with base on each prompt, so its metric is already paired; gate rules read the row like
    any other (``min_improvement`` over 0.5, ``max_regression`` below it). The row reads the **length-controlled**
    win rate (``core.pairwise.length_controlled``: the preference at equal answer lengths, with its interval and the
    test that inverts it), so a preference that length alone explains neither reads "improved" nor passes a gate; the
    raw win rate, its interval and p stay in ``details`` (``raw_win_rate``, ``raw_ci``, ``raw_p_value``) and in the
    report, with ``explained_by_length`` set when the raw rate differs from 0.5 and the controlled one does not. The
    row's n is the judged questions (a question's turns are one unit). An invalid metric (too many unparseable
    judgments, an unreliable judge) has no interval: the gate reads it as inconclusive and says why.
    """
    d = dict(m.details)
    reads, value, ci, p = _judged_reading(m)
    valid = bool(d.get("valid", True)) and value is not None and None not in ci
    delta = value - 0.5 if value is not None else None
    low, high = (ci[0] - 0.5, ci[1] - 0.5) if valid else (None, None)
    p = p if valid else None
    raw_p = _finite(d.get("p_value"))
    d.update(
        reads=reads,
        raw_win_rate=_finite(m.value),
        raw_ci=_metric_ci(m),
        raw_p_value=raw_p,
        explained_by_length=bool(
            valid and reads.startswith("length") and raw_p is not None and explained_by_length(raw_p, p, alpha)
        ),
    )
    method = (
        f"pairwise judge, both orders; {reads}: "
        + (d.get("lc_method") if reads.startswith("length") else m.ci_method or "interval as recorded")
        if valid
        else f"judge metric invalid: {d.get('invalid_reason') or 'no interval'}"
    )
    row = MetricComparison(
        metric=m.name,
        group="judge",
        unit="judged questions",
        higher_is_better=True,
        aggregate="mean",
        base=0.5,
        tuned=value,
        delta=delta,
        rel_delta=None,
        ci_low=low,
        ci_high=high,
        p_value=p,
        significant=p is not None and p < alpha,
        verdict=INVALID,
        n=int(d.get("clusters") or m.n),
        method=str(method),
        alpha=alpha,
        n_base=m.n,
        n_tuned=m.n,
        tuned_ci=[ci[0], ci[1]] if valid else None,
        headline=d.get("headline", True) is not False,
        details=d,
        mde=stats.detectable_effect(low, high, alpha) if valid else None,
        min_n=min_n,
    )
    if valid:
        row.verdict = verdict_of(row)
    return row


def judged_rows(judged: Results | None, alpha: float = 0.05, min_n: int = FEW_SAMPLES) -> list[MetricComparison]:
    """Rows of every paired judge metric in ``judged`` (none when the run has no judge stage)."""
    if judged is None:
        return []
    return [judged_row(m, alpha, min_n) for m in judged.metrics if m.details.get("paired")]


def load_judge_results(run_dir: str | Path) -> Results | None:
    """A run's judge results (eval/judge/results.json), or None without a judge stage."""
    path = Path(run_dir) / "eval" / JUDGE_DIR / "results.json"
    return Results.load(path) if path.exists() else None


# ----------------------------------------------------------------------------- a gate rule on one row

MAX_ITEMS_SHOWN = 10**7
"""Beyond this many items the observed change sits on the margin for any practical purpose."""
PASS, FAIL, INCONCLUSIVE, SKIPPED = "pass", "fail", "inconclusive", "skipped"


@dataclass
class GateRow:
    """The verdict of one rule on one metric."""

    rule: str
    metric: str
    status: str
    """pass | fail | inconclusive | skipped"""
    reason: str
    threshold: str
    base: float | None = None
    tuned: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int | None = None
    """Paired units the interval rests on."""
    mde: float | None = None
    """The metric's minimum detectable effect at n (see MetricComparison.mde)."""
    items_needed: int | None = None
    """Inconclusive rows: paired items that would conclude at the observed variance (80% power)."""
    delta_margins: list[float] = field(default_factory=list)
    """Each threshold's margin on the scale of delta (tuned - base), as the report's forest plot draws it."""


def _oriented_interval(rule: GateRule, r: MetricComparison) -> tuple[float, float, float] | None:
    """(improvement, low, high) with positive = better under the rule's direction; None without an interval."""
    hib = r.higher_is_better if rule.direction == "auto" else rule.direction == "higher"
    if r.delta is None or r.ci_low is None or r.ci_high is None:
        return None
    return (r.delta, r.ci_low, r.ci_high) if hib else (-r.delta, -r.ci_high, -r.ci_low)


def judge(rule: GateRule, r: MetricComparison) -> GateRow:
    """One rule on one compared metric: pass, fail or inconclusive from the interval of the change.

    See ``gate.verdict``'s docstring for the semantics. The one place verdicts are decided; new rule kinds add a
    field to GateRule and a branch here.
    """
    row = GateRow(
        rule=rule.label,
        metric=r.metric,
        status=PASS,
        reason="",
        threshold=rule.threshold_text(),
        base=r.base,
        tuned=r.tuned,
        delta=r.delta,
        ci_low=r.ci_low,
        ci_high=r.ci_high,
        p_value=r.p_value,
        n=r.n,
        mde=r.mde,
    )
    if r.details.get("paired") and r.ci_low is None:  # a judge metric marked invalid (judged_row says why)
        row.status, row.reason = INCONCLUSIVE, f"{r.method}: cannot conclude"
        return row
    if r.delta is None or r.base is None:
        row.status, row.reason = FAIL, "no value on one side: cannot judge"
        return row
    oriented = _oriented_interval(rule, r)
    if oriented is None:
        row.status, row.reason = INCONCLUSIVE, f"no interval of the change ({r.method}): cannot conclude"
        return row
    imp, lo, hi = oriented
    level = f"{100 * (1 - r.interval_alpha):g}%"
    # the reason quotes the interval of delta itself, as the report's CI column does, with the margin on that scale
    hib = r.higher_is_better if rule.direction == "auto" else rule.direction == "higher"
    bounds = f"{level} interval of Δ {fmt_interval(r.ci_low, r.ci_high)}" + ("" if hib else " (lower is better)")
    verdicts, reasons, needed = [], [], []
    for key, threshold, margin in rule.margins(r.base):
        kind = "improvement" if key.startswith("min_") else "regression"
        want = f"{threshold * 100:g}% of base" if key.endswith("_rel") else f"{threshold:g}"
        row.delta_margins.append(margin if hib else -margin)
        worse = f"(Δ {'<' if hib else '>'} {fmt(row.delta_margins[-1], True)})"  # the side the rule rejects
        # non-inferiority claims I >= -m, superiority I > t: pass when every value in the interval satisfies the
        # claim, fail when none does (so min_improvement: 0 passes exactly when the row's verdict is "improved")
        superior = kind == "improvement"
        if lo > margin or (not superior and lo >= margin):
            verdicts.append(PASS)
            reasons.append(
                f"{bounds} excludes "
                + (f"an improvement of {want} or less" if superior else f"a regression beyond {want}")
                + f" {worse}"
            )
        elif hi < margin or (superior and hi <= margin):
            verdicts.append(FAIL)
            reasons.append(
                f"{bounds} lies entirely "
                f"{'at or below an improvement of' if superior else 'beyond a regression of'} {want} {worse}"
            )
        else:
            verdicts.append(INCONCLUSIVE)
            more = stats.items_needed(r.n, lo, hi, abs(imp - margin), r.interval_alpha, df=r.df)
            if more is not None and more > MAX_ITEMS_SHOWN:  # the change sits almost on the margin
                more = None
            if more is not None:
                needed.append(more)
            hint = (
                ""  # a row under min_n says what a verdict needs in one place (_too_few)
                if not r.judged
                else f"; about {more} paired items would conclude (have {r.n}; observed variance, 80% power)"
                if more is not None
                else "; the observed change sits on the margin"
            )
            reasons.append(f"{bounds} straddles the {kind} margin {want} {worse}{hint}")
    row.status = FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS
    row.reason = "; ".join(reasons)
    row.items_needed = max(needed) if row.status == INCONCLUSIVE and needed else None
    if not r.judged:  # the report flags the row: no verdict, pass or fail, rests on it
        _too_few(row, r, needed if row.status == INCONCLUSIVE else [])
    return row


def _too_few(row: GateRow, r: MetricComparison, needed: list[int]) -> None:
    """Make a rule on a row with fewer than ``min_n`` paired units inconclusive, with the items a verdict needs."""
    need = max([r.min_n, *needed])
    row.status = INCONCLUSIVE
    row.items_needed = need
    row.reason = (
        f"too few samples: n={r.n} < report.min_n={r.min_n}, no verdict here nor in the report; about {need} paired "
        f"items would conclude (have {r.n}); {row.reason}"
    )


def describe_row(row: GateRow) -> str:
    """One gate row for an assertion message: status, metric, threshold, values, the gate's reason."""
    values = (
        f"base {fmt(row.base)} -> tuned {fmt(row.tuned)}, Δ {fmt(row.delta, True)}; " if row.base is not None else ""
    )
    return f"{row.status.upper()} {row.metric} ({row.threshold}): {values}{row.reason}"


def assert_rule_on_row(row: MetricComparison, what: str, **thresholds: float) -> GateRow:
    """One gate rule (thresholds as in a rules file) judged on one compared metric; fail unless it passes.

    Raises:
        AssertionError: the rule failed or was inconclusive; the message has the gate's reason and the row.
    """
    __tracebackhide__ = True  # pytest reports the test's line: the message says the rest
    judged = judge(parse_rule({"metric": row.metric, **thresholds}, what), row)
    if judged.status != PASS:
        raise AssertionError(f"{what}: {describe_row(judged)}. {row.describe()}")
    return judged
