"""Intervals and tests for metrics built from per-item records (see ``evals.results``).

Every metric is a ratio of sums over items (``mean``: sum(num)/sum(den); ``exp_ratio``:
exp(sum(num)/sum(den))), so one resampling routine serves perplexity, accuracy and pass rates:
resample items (or clusters of items) with replacement, re-sum num and den, re-aggregate.

The interval is a studentized bootstrap (bootstrap-t; Efron & Tibshirani 1993, ch. 12; Hall 1988): each resample's
estimate is divided by its own standard error (the delta-method linearization of the ratio), and the interval is
the estimate ± the larger tail quantile of those ratios times the standard error (``_invert``). That keeps the
coverage at or above 94% from n = 5 for normal, skewed and token-weighted items, where the percentile bootstrap
covered 83% at n = 5 (``reports/published/2026-12-06-cpu-stats-calibration.md``). The p-value inverts the same
interval, so "the interval excludes 0" holds exactly when "p < alpha" does. Pass/fail items use
``core.matched_pairs`` instead.

All randomness goes through a seeded ``np.random.Generator``: the same inputs and seed give the same
interval on every machine with the same numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import stats as sps

Z95 = NormalDist().inv_cdf(0.975)
"""z of a two-sided 95% interval; metric CIs in results files are 95% by schema. The one such constant."""
POWER = 0.8
"""Power of the minimum detectable effect and of the items-needed figures."""

# Resampling draws an (n_boot, n) index matrix and gathers the columns along it; chunking caps its size so large
# lm-eval tasks (tens of thousands of documents) stay within a few tens of MB.
_MAX_CELLS = 1 << 20


@dataclass(frozen=True)
class Interval:
    """A metric's value with its studentized bootstrap interval."""

    value: float
    low: float
    high: float
    n: int
    method: str


@dataclass(frozen=True)
class PairedResult:
    """tuned - base on the same items: the difference, its interval and a two-sided p-value from one method."""

    base: float
    tuned: float
    delta: float
    low: float
    high: float
    p_value: float
    n: int
    """Resampling units: items, or clusters when items were grouped."""
    method: str
    se: float = float("nan")
    """Standard error of delta (delta-method linearization over the units)."""


def item_arrays(items: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Split ``{"id","num","den"}`` records into ids and float arrays.

    Raises:
        ValueError: a record lacks ``num`` or ``den``.
    """
    try:
        num = np.fromiter((float(i["num"]) for i in items), dtype=np.float64, count=len(items))
        den = np.fromiter((float(i["den"]) for i in items), dtype=np.float64, count=len(items))
    except KeyError as e:
        raise ValueError(f"per-item record without {e.args[0]!r}: items must be {{'id', 'num', 'den'}}") from None
    ids = [str(i.get("id", k)) for k, i in enumerate(items)]
    return ids, num, den


def aggregate_sums(num: np.ndarray | float, den: np.ndarray | float, how: str) -> np.ndarray | float:
    """Aggregate summed num/den (scalars or arrays of replicates) the way ``evals.results.aggregate`` does.

    Args:
        num: Sum of ``num`` over items (or one sum per bootstrap replicate).
        den: Sum of ``den`` over items, same shape as ``num``.
        how: ``mean`` or ``exp_ratio``.

    Returns:
        sum(num)/sum(den), exponentiated for ``exp_ratio``; NaN where den is 0.
    """
    if how not in ("mean", "exp_ratio"):
        raise ValueError(f"unknown aggregate {how!r}; expected 'mean' or 'exp_ratio'")
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
    out = np.exp(ratio) if how == "exp_ratio" else ratio
    return float(out) if out.ndim == 0 else out


def cluster_sums(keys: Sequence[str], *columns: np.ndarray) -> tuple[int, list[np.ndarray]]:
    """Sum each column within clusters (repeated samples of one prompt are resampled together).

    Returns:
        (number of clusters, summed columns in first-appearance order of the keys).
    """
    _, first, inverse = np.unique(np.asarray(list(keys), dtype=str), return_index=True, return_inverse=True)
    # np.unique sorts keys; remap to first-appearance order so results don't depend on id spelling.
    order = np.argsort(np.argsort(first))
    inverse = order[inverse]
    k = len(first)
    return k, [np.bincount(inverse, weights=c, minlength=k) for c in columns]


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (got {n_boot})")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")


# A statistic maps the columns' sums over n units to (value, coefficients): the value's linearization (delta
# method) gives each unit the influence sum_j coef_j x_j, whose spread over the units is the value's standard error.
Statistic = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _ratio(how: str, log_scale: bool = False) -> Statistic:
    """sum(num)/sum(den) over columns (num, den), exponentiated for ``exp_ratio`` unless ``log_scale``."""
    exponentiate = how == "exp_ratio" and not log_scale

    def stat(sums: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = sums[0] / sums[1]
            value = np.exp(r) if exponentiate else r
            a = (value if exponentiate else 1.0) * n / sums[1]  # d value / d num_i, scaled to one unit
        return value, np.vstack([a, -a * r])

    return stat


def _ratio_difference(how: str) -> Statistic:
    """tuned - base of ``_ratio`` over columns (base num, base den, tuned num, tuned den)."""
    one = _ratio(how)

    def stat(sums: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        base, c_base = one(sums[0:2], n)
        tuned, c_tuned = one(sums[2:4], n)
        return tuned - base, np.vstack([-c_base, c_tuned])

    return stat


def _value_and_se(x: np.ndarray, stat: Statistic) -> tuple[np.ndarray, np.ndarray]:
    """(k, c, n) columns of c samples of n units -> each sample's value and its delta-method standard error."""
    n = x.shape[2]
    value, coef = stat(x.sum(axis=2), n)
    if n < 2:
        return value, np.full_like(value, np.nan)
    with np.errstate(invalid="ignore"):
        influence = np.einsum("kc,kcn->cn", coef, x)
        centred = influence - influence.mean(axis=1, keepdims=True)
        return value, np.sqrt(np.sum(centred**2, axis=1) / (n * (n - 1)))


def _studentized(columns: np.ndarray, stat: Statistic, n_boot: int, seed: int) -> tuple[float, float, np.ndarray]:
    """The statistic, its standard error, and bootstrap-t replicates (value* - value) / se* over resampled units.

    All columns share each resample's indices (this is what pairs base and tuned). Replicates of 0/0 (a resample
    whose units are all alike and equal the estimate) carry no information and are dropped; ±inf are kept.
    """
    value, se = (float(v[0]) for v in _value_and_se(columns[:, None, :], stat))
    k, n = columns.shape
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, _MAX_CELLS // max(n, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        v, s = _value_and_se(columns[:, idx], stat)
        with np.errstate(divide="ignore", invalid="ignore"):
            reps[start:stop] = (v - value) / s
    return value, se, reps[~np.isnan(reps)]


def _bootstrap_p(count: int, replicates: int) -> float:
    """Two-sided bootstrap p from the smaller tail count, with add-one smoothing: 2 (count + 1) / (B + 1), capped."""
    return min(1.0, 2 * (count + 1) / (replicates + 1))


def _invert(value: float, se: float, reps: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Studentized bootstrap interval ``value ± q se`` and the p-value that inverts it.

    q is the larger of the two tail quantiles of the replicates, |T*_(alpha/2)| and T*_(1-alpha/2): the smallest
    symmetric interval that holds the equal-tailed bootstrap-t interval (Efron & Tibshirani 1993, ch. 12) and so
    also Hall's (1988) symmetric one. The equal-tailed interval alone covered 88% at n = 10 for token-weighted,
    skewed perplexities; this one at least 94% (``tunebench bench stats``).

    The p-value of theta0 is ``_bootstrap_p`` of the larger count of replicates at or beyond +-|value - theta0| / se,
    and q is the order statistic where that p crosses alpha, so 0 lies outside the interval exactly when p < alpha,
    with no rounding between the two (Hall & Wilson 1991: test with the pivot of the interval).

    Returns:
        (low, high, p of theta0 = 0); the ends are infinite when the resamples are too few to reach alpha, and
        (value, value, 1 or 0) when every unit has the same influence (se 0).
    """
    if not math.isfinite(se):
        return float("nan"), float("nan"), float("nan")
    if se == 0:
        return value, value, 1.0 if value == 0 else 0.0
    b = int(reps.size)
    t0 = abs(value / se)
    p = _bootstrap_p(max(int(np.sum(reps >= t0)), int(np.sum(reps <= -t0))), b)
    m = max(0, math.ceil(alpha * (b + 1) / 2) - 2)
    while _bootstrap_p(m, b) < alpha:  # the fewest replicates per tail that keep p >= alpha, by the same arithmetic
        m += 1
    if m == 0:
        return float("-inf"), float("inf"), p
    s = np.sort(reps)
    q = max(float(s[b - m]), -float(s[m - 1]))
    return value - se * q, value + se * q, p


def bootstrap_ci(
    items: Sequence[dict[str, Any]],
    aggregate: str = "mean",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    clusters: Sequence[str] | None = None,
) -> Interval:
    """Studentized bootstrap (bootstrap-t) interval of one metric over its items (Efron & Tibshirani 1993, ch. 12).

    ``exp_ratio`` is studentized on the log scale (the mean NLL) and its ends exponentiated.

    Args:
        items: ``{"id","num","den"}`` records.
        aggregate: ``mean`` or ``exp_ratio``.
        n_boot: Bootstrap resamples.
        alpha: 1 - coverage (0.05 gives a 95% interval).
        seed: Seed of the ``np.random.Generator``.
        clusters: Optional cluster key per item; clusters are resampled whole.

    Returns:
        The metric's value (from all items) and its interval (NaN ends with a single unit).

    Raises:
        ValueError: no items, or bad n_boot/alpha.
    """
    _check(n_boot, alpha)
    if not items:
        raise ValueError("bootstrap_ci needs at least one item")
    _, num, den = item_arrays(items)
    n = len(items)
    if clusters is not None:
        n, (num, den) = cluster_sums(clusters, num, den)
    value = aggregate_sums(num.sum(), den.sum(), aggregate)
    centre, se, reps = _studentized(np.vstack([num, den]), _ratio(aggregate, log_scale=True), n_boot, seed)
    low, high, _ = _invert(centre, se, reps, alpha)
    if aggregate == "exp_ratio":  # a log-scale end past float range (a few wild units) is an unbounded end, not a crash
        low, high = _exp(low), _exp(high)
    unit = "clusters" if clusters is not None else "items"
    return Interval(float(value), low, high, n, f"studentized bootstrap over {n} {unit} ({n_boot} resamples)")


def _exp(x: float) -> float:
    """``math.exp`` that gives inf past float range (and keeps NaN)."""
    return math.inf if x > 709.0 else math.exp(x)


def pair_items(
    base_items: Sequence[dict[str, Any]], tuned_items: Sequence[dict[str, Any]]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Align two item lists by id.

    Returns:
        (ids in base order, base num, base den, tuned num, tuned den).

    Raises:
        ValueError: duplicated ids, or id sets that differ (with counts and examples of each side's extras).
    """
    b_ids, b_num, b_den = item_arrays(base_items)
    t_ids, t_num, t_den = item_arrays(tuned_items)
    for side, ids in (("base", b_ids), ("tuned", t_ids)):
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise ValueError(f"{side} items repeat ids (e.g. {dup}); paired statistics need unique ids")
    if set(b_ids) != set(t_ids):
        only_b = sorted(set(b_ids) - set(t_ids))
        only_t = sorted(set(t_ids) - set(b_ids))
        raise ValueError(
            f"base and tuned items do not cover the same ids: {len(only_b)} only in base (e.g. {only_b[:3]}), "
            f"{len(only_t)} only in tuned (e.g. {only_t[:3]}); evaluate both on the same items"
        )
    pos = {i: k for k, i in enumerate(t_ids)}
    order = np.fromiter((pos[i] for i in b_ids), dtype=np.int64, count=len(b_ids))
    return b_ids, b_num, b_den, t_num[order], t_den[order]


def paired_bootstrap(
    base_items: Sequence[dict[str, Any]],
    tuned_items: Sequence[dict[str, Any]],
    aggregate: str = "mean",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    clusters: Sequence[str] | dict[str, str] | None = None,
) -> PairedResult:
    """Paired studentized bootstrap of ``tuned - base`` on items matched by id, with the p-value that inverts it.

    Each resample draws the same items (or clusters) for both sides, so per-item difficulty cancels; each resample's
    difference is divided by its own delta-method standard error (bootstrap-t; Efron & Tibshirani 1993, ch. 12). The
    p-value inverts that interval (``_invert``): it is below alpha exactly when the interval excludes 0.

    Args:
        base_items: Base model's ``{"id","num","den"}`` records.
        tuned_items: Tuned model's records; must hold exactly the same ids.
        aggregate: ``mean`` or ``exp_ratio``.
        n_boot: Bootstrap resamples.
        alpha: 1 - coverage of the interval.
        seed: Seed of the ``np.random.Generator``.
        clusters: Optional cluster key per base item (list in base order, or id -> key mapping);
            clusters are resampled whole.

    Returns:
        A PairedResult; delta is computed from all items.

    Raises:
        ValueError: empty inputs, id sets that differ, or bad n_boot/alpha.
    """
    _check(n_boot, alpha)
    if not base_items or not tuned_items:
        raise ValueError("paired_bootstrap needs items on both sides")
    ids, b_num, b_den, t_num, t_den = pair_items(base_items, tuned_items)
    cols = [b_num, b_den, t_num, t_den]
    n, unit = len(ids), "items"
    if clusters is not None:
        keys = [clusters[i] for i in ids] if isinstance(clusters, dict) else list(clusters)
        n, cols = cluster_sums(keys, *cols)
        unit = "clusters"
    b = aggregate_sums(cols[0].sum(), cols[1].sum(), aggregate)
    t = aggregate_sums(cols[2].sum(), cols[3].sum(), aggregate)
    delta, se, reps = _studentized(np.vstack(cols), _ratio_difference(aggregate), n_boot, seed)
    low, high, p = _invert(delta, se, reps, alpha)
    return PairedResult(
        float(b),
        float(t),
        float(t - b),
        low,
        high,
        p,
        n,
        f"paired studentized bootstrap over {n} {unit} ({n_boot} resamples); p inverts the interval",
        se,
    )


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (``scipy.stats.binomtest(...).proportion_ci``).

    Args:
        k: Successes.
        n: Trials.
        z: Normal quantile of the two-sided interval (Z95 gives 95%).

    Raises:
        ValueError: n < 1 or k outside [0, n].
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n >= 1 (got k={k}, n={n})")
    level = 2 * NormalDist().cdf(z) - 1
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def _quantile(q: float, df: float | None) -> float:
    """Normal quantile, or Student's t with ``df`` degrees of freedom when given."""
    return NormalDist().inv_cdf(q) if df is None else float(sps.t.ppf(q, float(df)))


def detectable_effect(
    ci_low: float | None,
    ci_high: float | None,
    alpha: float = 0.05,
    power: float = POWER,
    df: float | None = None,
) -> float | None:
    """Minimum detectable effect of a paired difference at its n and observed variance.

    The standard error comes from the (1 - alpha) two-sided interval of the difference, SE = width / (2 q_{1-alpha/2});
    a true effect of (q_{1-alpha/2} + q_power) * SE is found with probability ``power`` by a two-sided test at level
    alpha. q is Student's t with ``df`` degrees of freedom for a t-type interval at small n (at n = 5 and sigma 1 the
    effect is 1.66 sigma, where z would say 1.25), the normal quantile for a score or likelihood interval (df None).

    Returns:
        The effect in the metric's units, or None without a finite interval.
    """
    if ci_low is None or ci_high is None or not math.isfinite(ci_high - ci_low):
        return None
    crit = _quantile(1 - alpha / 2, df)
    return (crit + _quantile(power, df)) * (ci_high - ci_low) / (2 * crit)


def items_needed(
    n: int,
    ci_low: float,
    ci_high: float,
    distance: float,
    alpha: float = 0.05,
    power: float = POWER,
    df: float | None = None,
) -> int | None:
    """Paired units needed for the interval to clear a margin that the observed effect lies ``distance`` from.

    Sample size of a one-sample (paired) test: n* = ((q_{1-alpha/2} + q_power) * sigma_d / d)^2, where sigma_d, the
    per-unit standard deviation of the difference, is read off the observed interval (sigma_d = SE * sqrt(n), SE as
    in ``detectable_effect``) and d is the distance from the observed difference to the margin. With ``df`` (a
    t-type interval) q is Student's t at n* - 1 degrees of freedom, solved by fixed-point iteration from the normal
    answer; otherwise the normal quantile. The true difference is assumed to equal the observed one.

    Returns:
        n* rounded up (at least n + 1 when the interval still straddles), or None when distance is 0
        (no finite number of items separates an effect that sits on the margin).
    """
    if distance <= 0 or n < 1 or not math.isfinite(ci_high - ci_low):
        return None
    sigma = (ci_high - ci_low) / (2 * _quantile(1 - alpha / 2, df)) * math.sqrt(n)
    if sigma == 0:
        return n

    def enough(dof: float | None) -> int:
        q = _quantile(1 - alpha / 2, dof) + _quantile(power, dof)
        return max(n + 1, math.ceil((q * sigma / distance) ** 2))

    need = enough(None)
    for _ in range(50 if df is not None else 0):  # t at n* - 1 df: step up until n* units suffice
        more = enough(need - 1)
        if more <= need:
            break
        need = more
    return need


def is_binary(num: np.ndarray, den: np.ndarray) -> bool:
    """True when every item is a single pass/fail (den 1, num 0 or 1)."""
    return bool(num.size) and bool(np.all(den == 1)) and bool(np.all((num == 0) | (num == 1)))


def welch_df(base_se: float, n_base: int, tuned_se: float, n_tuned: int) -> float | None:
    """Welch-Satterthwaite degrees of freedom of a difference of two means from their standard errors (Welch 1947).

    None (read as normal) when a side has fewer than 2 items or both standard errors are 0.
    """
    if n_base < 2 or n_tuned < 2:
        return None
    den = base_se**4 / (n_base - 1) + tuned_se**4 / (n_tuned - 1)
    return (base_se**2 + tuned_se**2) ** 2 / den if den > 0 else None


def normal_difference(
    base: float, base_se: float, tuned: float, tuned_se: float, alpha: float = 0.05, df: float | None = None
) -> tuple[float, float, float, float]:
    """Unpaired interval and test of ``tuned - base`` from two standard errors: normal, or Student's t with ``df``.

    Ignores the pairing (both sides saw the same items), so the interval is wider than a paired one:
    conservative, used only when per-item records are missing. Interval and p come from one statistic, so the
    interval excludes 0 exactly when p < alpha.

    Returns:
        (delta, low, high, two-sided p-value).
    """
    delta = tuned - base
    se = math.hypot(base_se, tuned_se)
    if se == 0:
        return delta, delta, delta, (1.0 if delta == 0 else 0.0)
    crit = _quantile(1 - alpha / 2, df)
    stat = abs(delta) / se
    p = 2 * (NormalDist().cdf(-stat) if df is None else float(sps.t.sf(stat, df)))
    if (p < alpha) != (stat > crit):  # the two roundings disagree only on the boundary: let p decide
        crit = stat * (1 + 1e-12) if p >= alpha else stat * (1 - 1e-12)
    return delta, delta - crit * se, delta + crit * se, p


def standard_error(stderr: float | None, ci_low: float | None, ci_high: float | None) -> float | None:
    """A metric's standard error: its stderr, else its 95% interval's width / (2 * 1.96), else None."""
    if stderr is not None and math.isfinite(stderr):
        return float(stderr)
    if ci_low is not None and ci_high is not None and math.isfinite(ci_high - ci_low):
        return (ci_high - ci_low) / (2 * Z95)
    return None
