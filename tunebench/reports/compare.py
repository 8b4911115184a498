"""Base vs tuned: a pure function from two ``Results`` to a ``Comparison`` (schema ``tunebench.comparison/1``).

For every metric present in both results: base and tuned values, delta = tuned - base, the delta's
(1 - alpha) interval and a p-value from paired statistics on the per-item records:

- paired bootstrap over items (conversations, documents, samples); items whose ids all look like
  ``<prompt>#<k>`` are repeated samples of one prompt and are resampled per prompt;
- for pass/fail items, the p-value is McNemar's exact test on the discordant pairs and the interval
  Newcombe's paired score interval (the bootstrap collapses to [0, 0] when a few items all agree);
- without per-item records on both sides, an unpaired normal approximation from the two recorded
  stderrs/intervals (the row's ``method`` says so).

The verdict reads ``higher_is_better`` from the metric: ``improved`` / ``regressed`` when p < alpha,
``no significant change`` otherwise. Base and tuned must have been computed on the same inputs:
any shared fingerprint in ``Results.inputs`` that differs raises ``ComparisonError``.

Every row carries ``mde``, its minimum detectable effect at its n (paired design, two-sided alpha,
80% power, the observed variance): a metric whose mde exceeds a gate's margin cannot carry that decision.

Rows that break one metric down (``lm_eval/mmlu/<subject>/acc`` under ``lm_eval/mmlu/acc``, per-probe rows under a
probe set's pass rate) are one family of tests: they carry Benjamini-Hochberg adjusted p-values (``p_adjusted``)
and their verdicts read those, so 57 subjects at alpha = 0.05 do not turn up "regressions" by chance alone.
"""

from __future__ import annotations

import json
import math
import operator
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunebench.core import stats
from tunebench.core.errors import ComparisonError, MissingRunFile, RunFileError
from tunebench.core.io import check_json, read_json, show_json
from tunebench.core.stats import fmt, fmt_interval, fmt_p  # noqa: F401  (re-exported for render, gate, tests)
from tunebench.evals.results import Metric, Results

SCHEMA = "tunebench.comparison/1"
LEADERBOARD_SCHEMA = "tunebench.leaderboard/1"
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
    low = high = p = None
    n = min(bm.n, tm.n)
    if b_items and t_items:
        try:
            ids, b_num, b_den, t_num, t_den = stats.pair_items(b_items, t_items)
            clusters = _cluster_keys(ids)
            pr = stats.paired_bootstrap(
                b_items, t_items, bm.aggregate, n_boot, alpha, _sub_seed(seed, name), clusters=clusters
            )
        except ValueError as e:
            raise ComparisonError(f"{name}: {e}") from None
        low, high, p, n, method = _finite(pr.low), _finite(pr.high), pr.p_value, pr.n, pr.method
        if clusters:
            method = method.replace("clusters", "prompts (samples grouped per prompt)")
            details["samples"] = len(ids)
        if stats.is_binary(b_num, b_den) and stats.is_binary(t_num, t_den):
            b, c = stats.discordant(b_num, t_num)
            p = stats.mcnemar_exact(b, c)
            n = len(ids)
            details["discordant"] = {"base_only": b, "tuned_only": c}
            if not clusters:  # one pass/fail per item: a score interval, honest also at small n
                low, high = stats.paired_proportion_interval(b_num, t_num, alpha)
                method = (
                    f"McNemar exact test on {n} paired items (b={b}, c={c}); "
                    "interval: Newcombe paired score (method 10)"
                )
            else:
                method = f"McNemar exact test on {n} paired items (b={b}, c={c}); interval: {method}"
    else:
        b_se = stats.standard_error(bm.stderr, bm.ci_low, bm.ci_high)
        t_se = stats.standard_error(tm.stderr, tm.ci_low, tm.ci_high)
        if delta is not None and b_se is not None and t_se is not None:
            _, low, high, p = stats.normal_difference(base, b_se, tuned, t_se, alpha)
            method = "unpaired normal approximation from recorded stderrs (no per-item records; ignores pairing)"
        else:
            method = "no per-item records and no stderr/interval: no test possible"
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


# ----------------------------------------------------------------------------- whole results


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def _model_facts(model: dict[str, Any]) -> dict[str, Any]:
    """What must agree between base and tuned models: base weights, chat template, dtype."""
    facts: dict[str, Any] = {}
    src = model.get("base")
    if isinstance(src, dict) and src.get("identity") is not None:
        facts["model.base.identity"] = src["identity"]
    for key in ("template", "dtype"):
        if model.get(key) is not None:
            facts[f"model.{key}"] = model[key]
    return facts


def check_same_inputs(base: Results, tuned: Results, same_base: bool = True) -> dict[str, Any]:
    """Return the shared input fingerprints, or raise if base and tuned were fed different inputs.

    ``same_base=False`` drops the base-weights check only (an exported artifact has other weights than the
    adapter's base by design); inputs, template and dtype must still agree.

    Raises:
        ComparisonError: naming the first differing key and both values.
    """
    b_facts = {**{f"inputs.{k}": v for k, v in base.inputs.items()}, **_model_facts(base.model)}
    t_facts = {**{f"inputs.{k}": v for k, v in tuned.inputs.items()}, **_model_facts(tuned.model)}
    if not same_base:
        b_facts.pop("model.base.identity", None)
    for key in sorted(set(b_facts) & set(t_facts)):
        if b_facts[key] != t_facts[key]:
            raise ComparisonError(
                f"{base.label!r} and {tuned.label!r} were not evaluated on the same inputs: {key} is "
                f"{_short(b_facts[key])} for {base.label} but {_short(t_facts[key])} for {tuned.label}. "
                "Re-run both evaluations with the same data, template, probe sets and sampling."
            )
    return {k: base.inputs[k] for k in base.inputs if k in tuned.inputs}


def _parent(metric: str, names: set[str]) -> str | None:
    """The metric that ``metric`` breaks down (``a/b/X/leaf`` -> ``a/b/leaf`` when that exists), else None."""
    parts = metric.split("/")
    parent = "/".join(parts[:-2] + parts[-1:]) if len(parts) >= 3 else None
    return parent if parent in names else None


def _mark_headlines(rows: list[MetricComparison], explicit: dict[str, Any]) -> None:
    """A row is a headline unless it breaks another row down (``a/b/X/leaf`` when ``a/b/leaf`` exists)."""
    names = {r.metric for r in rows}
    for r in rows:
        r.family = _parent(r.metric, names)
        flag = explicit.get(r.metric)
        r.headline = flag if isinstance(flag, bool) else r.family is None


def _adjust_families(rows: list[MetricComparison]) -> None:
    """Benjamini-Hochberg within each family of breakdown rows; their significance and verdict follow p_adjusted."""
    families: dict[str, list[MetricComparison]] = {}
    for r in rows:
        if r.family is not None:
            families.setdefault(r.family, []).append(r)
    for members in families.values():
        for r, q in zip(members, stats.benjamini_hochberg([r.p_value for r in members]), strict=True):
            r.p_adjusted = q
            r.significant = q is not None and r.delta is not None and q < r.alpha
            r.verdict = _verdict(r.significant, r.improvement)


def _verdict(significant: bool, oriented: float | None) -> str:
    if significant and oriented:
        return IMPROVED if oriented > 0 else REGRESSED
    return UNCHANGED


@dataclass
class Comparison:
    """Every shared metric of two results, compared."""

    base_label: str
    tuned_label: str
    alpha: float
    n_boot: int
    seed: int
    rows: list[MetricComparison]
    inputs: dict[str, Any] = field(default_factory=dict)
    """Input fingerprints both sides share (checked equal)."""
    base_model: dict[str, Any] = field(default_factory=dict)
    tuned_model: dict[str, Any] = field(default_factory=dict)
    only_in_base: list[str] = field(default_factory=list)
    only_in_tuned: list[str] = field(default_factory=list)
    schema: str = SCHEMA

    def row(self, metric: str) -> MetricComparison:
        """The row of one metric. Raises KeyError listing the known metrics."""
        for r in self.rows:
            if r.metric == metric:
                return r
        raise KeyError(f"no metric {metric!r} in the comparison; known: {', '.join(r.metric for r in self.rows)}")

    def rows_in(self, group: str) -> list[MetricComparison]:
        return [r for r in self.rows if r.group == group]

    def headline_rows(self) -> list[MetricComparison]:
        return [r for r in self.rows if r.headline]

    def counts(self) -> dict[str, int]:
        """How many rows got each verdict; breakdown rows with too few samples count as ``too few samples``,
        not as a verdict (they were never judged)."""
        out = {IMPROVED: 0, REGRESSED: 0, UNCHANGED: 0, TOO_FEW: 0}
        for r in self.rows:
            key = r.verdict if r.judged else TOO_FEW
            out[key] = out.get(key, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    @classmethod
    def from_dict(
        cls, data: Any, where: str = "comparison", fix: str = "recompute it with `tunebench report RUN`"
    ) -> Comparison:
        """A Comparison from its JSON form (comparison.json), every field checked against its type.

        Raises:
            RunFileError: another schema, or a field of the wrong type (names ``where``, the field and ``fix``).
        """
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != SCHEMA:
            got = f"schema {schema!r}" if isinstance(data, dict) else f"holds {show_json(data)}"
            raise RunFileError(f"{where}: {got}, not a {SCHEMA!r} comparison; {fix}")
        out = check_json(data, cls, where, fix)
        names = {r.metric for r in out.rows}
        for r, raw in zip(out.rows, data.get("rows", []), strict=True):
            if "family" not in raw:  # written before families: still known from the names (for counts)
                r.family = _parent(r.metric, names)
        return out

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        """Read and check a comparison.json."""
        fix = f"recompute it with `tunebench report {Path(path).parent}`"
        return cls.from_dict(read_json(path, fix), str(path), fix)


def _clean(obj: Any) -> Any:
    """Non-finite floats -> None, so comparison.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def compare(
    base: Results,
    tuned: Results,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    same_base: bool = True,
    judged: Results | None = None,
) -> Comparison:
    """Compare every metric present in both results (pure: reads nothing, writes nothing).

    Args:
        base: Results of the base model.
        tuned: Results of base + adapter, computed on the same inputs.
        alpha: Significance level; intervals are (1 - alpha).
        n_boot: Bootstrap resamples per metric.
        seed: Seed of the resampling (each metric derives its own stream from it and its name).
        same_base: require both sides to share base weights (False for the adapter vs an exported artifact).
        judged: the judge stage's results (``load_judge_results``): its win rates become rows (``judged_row``).

    Returns:
        A Comparison whose rows follow the base results' metric order.

    Raises:
        ComparisonError: different input fingerprints, base model or template, or items that do not pair.
    """
    if not 0 < alpha < 0.5:
        raise ComparisonError(f"alpha must be in (0, 0.5) (got {alpha}; report.alpha)")
    if 2 / (n_boot + 1) >= alpha:  # the smallest bootstrap p-value is 2 / (n_boot + 1)
        raise ComparisonError(
            f"n_boot={n_boot} can never give p < alpha={alpha}; use at least {math.ceil(2 / alpha)} "
            "resamples (eval.bootstrap_samples; 2000 is the default)"
        )
    inputs = check_same_inputs(base, tuned, same_base)
    t_by_name = {m.name: m for m in tuned.metrics}
    rows = []
    for bm in base.metrics:
        tm = t_by_name.get(bm.name)
        if tm is None:
            continue
        b_items = base.items.get(bm.items) if bm.items else None
        t_items = tuned.items.get(tm.items) if tm.items else None
        rows.append(compare_metric(bm, tm, b_items, t_items, alpha, n_boot, seed))
    _mark_headlines(rows, {m.name: m.details.get("headline") for m in base.metrics})
    _adjust_families(rows)
    rows += judged_rows(judged, alpha)
    b_names = {m.name for m in base.metrics}
    return Comparison(
        base_label=base.label,
        tuned_label=tuned.label,
        alpha=alpha,
        n_boot=n_boot,
        seed=seed,
        rows=rows,
        inputs=inputs,
        base_model=base.model,
        tuned_model=tuned.model,
        only_in_base=[m.name for m in base.metrics if m.name not in t_by_name],
        only_in_tuned=[m.name for m in tuned.metrics if m.name not in b_names],
    )


# ----------------------------------------------------------------------------- several adapters


@dataclass
class Leaderboard:
    """Several adapters, each compared with the same base."""

    base_label: str
    alpha: float
    metrics: list[str]
    """Headline metrics shown, in order."""
    comparisons: dict[str, Comparison]
    """Adapter name -> its comparison with the base."""
    schema: str = LEADERBOARD_SCHEMA

    def rows(self) -> list[dict[str, Any]]:
        """One dict per metric: metric, base value, and per adapter its row (or None when absent)."""
        out = []
        for name in self.metrics:
            per = {a: next((r for r in c.rows if r.metric == name), None) for a, c in self.comparisons.items()}
            first = next((r for r in per.values() if r is not None), None)
            out.append(
                {
                    "metric": name,
                    "base": first.base if first else None,
                    "higher_is_better": first.higher_is_better if first else None,
                    "adapters": per,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "schema": self.schema,
                "base_label": self.base_label,
                "alpha": self.alpha,
                "metrics": self.metrics,
                "comparisons": {k: c.to_dict() for k, c in self.comparisons.items()},
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Leaderboard:
        comps = {k: Comparison.from_dict(v) for k, v in data["comparisons"].items()}
        return cls(data["base_label"], data["alpha"], data["metrics"], comps, data.get("schema", LEADERBOARD_SCHEMA))


def leaderboard(
    base: Results,
    tuned: dict[str, Results],
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
) -> Leaderboard:
    """Compare several adapters with one base.

    Args:
        base: Results of the shared base model.
        tuned: Adapter name -> its Results.
        alpha, n_boot, seed: As for ``compare``.
        metrics: Metrics to tabulate; default = every headline metric, in first-seen order.

    Raises:
        ComparisonError: an adapter evaluated on another base model or other inputs (names the adapter).
    """
    if not tuned:
        raise ValueError("leaderboard needs at least one adapter")
    comps = {}
    for name, res in tuned.items():
        try:
            comps[name] = compare(base, res, alpha, n_boot, seed)
        except ComparisonError as e:
            raise ComparisonError(f"adapter {name!r}: {e}") from None
    if metrics is None:
        seen: dict[str, None] = {}
        for c in comps.values():
            seen.update({r.metric: None for r in c.headline_rows()})
        metrics = list(seen)
    return Leaderboard(base.label, alpha, list(metrics), comps)


# ----------------------------------------------------------------------------- run folders (I/O, not pure)


def load_run_results(run_dir: str | Path) -> dict[str, Results]:
    """``{"base", "tuned"}`` Results of a run folder.

    Raises:
        MissingRunFile: no such folder, or a results file is missing (says which stage to run).
        RunFileError: a results file is damaged, of another schema or of the wrong shape (names the field).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingRunFile(f"{run_dir}: no such run folder")
    out = {}
    for side in ("base", "tuned"):
        path = run_dir / "eval" / side / "results.json"
        if not path.exists():
            raise MissingRunFile(f"{path}: missing; evaluate the {side} model first (`tunebench eval {run_dir}`)")
        out[side] = Results.load(path)
    return out


ARTIFACT_PREFIX = "gguf-"
"""eval/gguf-<type>/results.json holds an exported artifact's results (label gguf-<type>)."""


SERVED_PREFIX = "served"
"""eval/served*/results.json holds a served endpoint's results (`tunebench eval --endpoint`, label served*)."""


def load_artifact_results(run_dir: str | Path) -> dict[str, Results]:
    """Exported artifacts' Results of a run folder, by type (``{"q8_0": ...}``), and served endpoints' by label
    (``{"served": ...}``); {} when none was evaluated."""
    out = {}
    for path in sorted((Path(run_dir) / "eval").glob(f"{ARTIFACT_PREFIX}*/results.json")):
        out[path.parent.name.removeprefix(ARTIFACT_PREFIX)] = Results.load(path)
    for path in sorted((Path(run_dir) / "eval").glob(f"{SERVED_PREFIX}*/results.json")):
        out[path.parent.name] = Results.load(path)
    return out


def identical_answers(a: Results, b: Results) -> dict[str, tuple[int, int]]:
    """Per sampling: how many probe answers of ``b`` equal ``a``'s, of those both have."""
    out: dict[str, tuple[int, int]] = {}
    ta, tb = a.artifacts.get("probe_transcripts", {}), b.artifacts.get("probe_transcripts", {})
    for pset, by_sampling in ta.items():
        for sampling, rows in by_sampling.items():
            other = {r["id"]: r["output"] for r in tb.get(pset, {}).get(sampling, [])}
            pairs = [(r["output"], other[r["id"]]) for r in rows if r["id"] in other]
            equal, total = out.get(sampling, (0, 0))
            out[sampling] = (equal + sum(x == y for x, y in pairs), total + len(pairs))
    return out


@dataclass
class ServedParity:
    """A served endpoint against the in-process llama.cpp scoring of the file the server lists."""

    served: str
    artifact: str
    gguf: str
    identical: dict[str, tuple[int, int]]
    """Per sampling: (probe answers identical, answers both have)."""
    comparison: Comparison | None
    """Δ = served − in-process, paired item by item; None when the two are not comparable (``why``)."""
    why: str = ""


def served_against_artifacts(
    results: dict[str, Results], alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
) -> list[ServedParity]:
    """Each served endpoint's results (label ``served*``) against in-process llama.cpp on the same GGUF, where the
    run has scored it: the "served = evaluated" check, answers and paired metrics."""
    out = []
    for label, served in results.items():
        if not label.startswith(SERVED_PREFIX):
            continue
        name = Path(str(served.model.get("served_model", ""))).name
        for key, res in results.items():
            if (
                key.startswith(SERVED_PREFIX)
                or res.model.get("runtime") != "llama.cpp"
                or res.model.get("gguf") != name
            ):
                continue
            try:
                comp, why = compare(res, served, alpha, n_boot, seed, same_base=False), ""
            except ComparisonError as e:
                comp, why = None, str(e)
            out.append(ServedParity(label, key, name, identical_answers(res, served), comp, why))
    return out


def compare_artifacts(
    tuned: Results, artifacts: dict[str, Results], alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
) -> dict[str, Comparison]:
    """Each exported artifact against the adapter it was exported from, paired item by item.

    Rows read ``base`` = the adapter, ``tuned`` = the artifact, delta = artifact - adapter.

    Raises:
        ComparisonError: an artifact scored on other inputs, template or dtype (names the artifact).
    """
    out = {}
    for name, res in artifacts.items():
        try:
            out[name] = compare(tuned, res, alpha, n_boot, seed, same_base=False)
            out[name].rows += parity_rows(res, alpha, n_boot, seed)
            out[name].only_in_tuned = [m for m in out[name].only_in_tuned if not m.startswith("parity/")]
        except ComparisonError as e:
            raise ComparisonError(f"artifact {name!r}: {e}") from None
    return out


def parity_rows(artifact: Results, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> list[MetricComparison]:
    """Rows of the artifact's parity metrics (evals.parity), each paired with a perfect copy's value.

    ``base`` reads the reference (KL 0, agreement 1, ratio 1), so a gate rule's ``max_regression`` on
    ``parity/kl_mean`` bounds the upper end of the KL's interval.
    """
    from tunebench.evals.parity import reference_side

    rows = []
    for m in artifact.metrics:
        if m.group != "parity" or m.details.get("reference") is None:
            continue
        items = artifact.items.get(m.items) if m.items else None
        ref, ref_items = reference_side(m, items)
        row = compare_metric(ref, m, ref_items, items, alpha, n_boot, seed)
        row.headline = True
        rows.append(row)
    return rows


def run_settings(run_dir: str | Path) -> dict[str, Any]:
    """alpha, n_boot and gate rules from a run's resolved config.yaml (defaults when absent)."""

    cfg: Any = {}
    path = Path(run_dir) / "config.yaml"
    if path.exists():
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
            raise RunFileError(
                f"{path}: not a readable YAML config ({str(e).splitlines()[0]}); restore it from "
                "config.asked.yaml or re-run `tunebench run`"
            ) from None
    cfg = cfg if isinstance(cfg, dict) else {}
    section = lambda k: cfg.get(k) if isinstance(cfg.get(k), dict) else {}  # noqa: E731
    settings = {
        "name": cfg.get("name") or Path(run_dir).name,
        "alpha": section("report").get("alpha") or 0.05,
        "n_boot": section("eval").get("bootstrap_samples") or 2000,
        "gate_rules": section("gate").get("rules"),
    }
    for key, field_name, kind in (
        ("alpha", "report.alpha", (int, float)),
        ("n_boot", "eval.bootstrap_samples", (int,)),
        ("gate_rules", "gate.rules", (str, type(None))),
    ):
        if type(settings[key]) not in kind:
            raise RunFileError(
                f"{path}: {field_name} is {settings[key]!r}, not a {kind[0].__name__}; fix the value "
                "or re-run `tunebench run`"
            )
    return settings


def compare_run(run_dir: str | Path, seed: int = 0) -> Comparison:
    """Load a run folder's results and compare them with the run's own alpha and bootstrap size."""
    res, settings = load_run_results(run_dir), run_settings(run_dir)
    return compare(
        res["base"], res["tuned"], settings["alpha"], settings["n_boot"], seed, judged=load_judge_results(run_dir)
    )


def leaderboard_from_runs(run_dirs: Sequence[str | Path], seed: int = 0) -> Leaderboard:
    """``tunebench compare RUN_A RUN_B ...``: every run's adapter against the first run's base.

    Raises:
        ComparisonError: a run whose base model or evaluation inputs differ from the first run's.
    """
    if not run_dirs:
        raise ValueError("give at least one run folder")
    loaded = {Path(d): load_run_results(d) for d in run_dirs}
    first_dir, first = next(iter(loaded.items()))
    settings = run_settings(first_dir)
    tuned: dict[str, Results] = {}
    for d, res in loaded.items():
        try:
            check_same_inputs(first["base"], res["base"])
        except ComparisonError as e:
            raise ComparisonError(f"run {d} has a different base than {first_dir}: {e}") from None
        name = d.name if d.name not in tuned else str(d)
        tuned[name] = res["tuned"]
    return leaderboard(first["base"], tuned, settings["alpha"], settings["n_boot"], seed)
