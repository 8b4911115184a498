"""Intervals and tests for metrics built from per-item records (see ``evals.results``).

Every metric is a ratio of sums over items (``mean``: sum(num)/sum(den); ``exp_ratio``:
exp(sum(num)/sum(den))), so one resampling routine serves perplexity, accuracy and pass rates:
resample items (or clusters of items) with replacement, re-sum num and den, re-aggregate.

All randomness goes through a seeded ``np.random.Generator``: the same inputs and seed give the same
interval on every machine with the same numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import stats as sps

from tunebench.core.numbers import fmt as fmt  # the one number formatter, re-exported
from tunebench.core.numbers import fmt_interval as fmt_interval
from tunebench.core.numbers import fmt_p as fmt_p

Z95 = NormalDist().inv_cdf(0.975)
"""z of a two-sided 95% interval; metric CIs in results files are 95% by schema. The one such constant."""
POWER = 0.8
"""Power of the minimum detectable effect and of the items-needed figures."""
PERCENTILE_METHOD = "linear"
"""The one ``numpy.percentile`` method of every interval (numpy's default, Hyndman-Fan type 7)."""

# Resampling draws an (n_boot, n) index matrix; chunking caps its size so large lm-eval tasks
# (tens of thousands of documents) stay within a few tens of MB.
_MAX_CELLS = 1 << 21


@dataclass(frozen=True)
class Interval:
    """A metric's value with its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    n: int
    method: str


@dataclass(frozen=True)
class PairedResult:
    """tuned - base on the same items: the difference, its interval and a two-sided p-value."""

    base: float
    tuned: float
    delta: float
    low: float
    high: float
    p_value: float
    n: int
    """Resampling units: items, or clusters when items were grouped."""
    method: str


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


def _boot_sums(columns: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Column sums over ``n_boot`` resamples (with replacement) of the last axis.

    Args:
        columns: (k, n) values; all k columns share each resample's indices (this is what pairs them).

    Returns:
        (k, n_boot) sums.
    """
    k, n = columns.shape
    out = np.empty((k, n_boot), dtype=np.float64)
    chunk = max(1, _MAX_CELLS // max(n, 1))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[:, start:stop] = columns[:, idx].sum(axis=2)
    return out


def _quantiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)], method=PERCENTILE_METHOD)
    return float(lo), float(hi)


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1 (got {n_boot})")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (got {alpha})")


def bootstrap_ci(
    items: Sequence[dict[str, Any]],
    aggregate: str = "mean",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    clusters: Sequence[str] | None = None,
) -> Interval:
    """Percentile bootstrap interval of one metric over its items.

    Args:
        items: ``{"id","num","den"}`` records.
        aggregate: ``mean`` or ``exp_ratio``.
        n_boot: Bootstrap resamples.
        alpha: 1 - coverage (0.05 gives a 95% interval).
        seed: Seed of the ``np.random.Generator``.
        clusters: Optional cluster key per item; clusters are resampled whole.

    Returns:
        The metric's value (from all items) and its percentile interval.

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
    sums = _boot_sums(np.vstack([num, den]), n_boot, np.random.default_rng(seed))
    low, high = _quantiles(aggregate_sums(sums[0], sums[1], aggregate), alpha)
    unit = "clusters" if clusters is not None else "items"
    return Interval(float(value), low, high, n, f"percentile bootstrap over {n} {unit} ({n_boot} resamples)")


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
    """Paired bootstrap of ``tuned - base`` on items matched by id.

    Each resample draws the same items (or clusters) for both sides, so per-item difficulty cancels.
    The p-value is two-sided, from the bootstrap distribution of the difference:
    ``2 * min(P*(delta <= 0), P*(delta >= 0))`` with add-one smoothing, capped at 1. It is below alpha
    essentially exactly when the percentile interval excludes 0, so the two never tell different stories.

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
    sums = _boot_sums(np.vstack(cols), n_boot, np.random.default_rng(seed))
    deltas = aggregate_sums(sums[2], sums[3], aggregate) - aggregate_sums(sums[0], sums[1], aggregate)
    low, high = _quantiles(deltas, alpha)
    finite = deltas[np.isfinite(deltas)]
    m = finite.size
    p = min(1.0, 2 * min((np.sum(finite <= 0) + 1) / (m + 1), (np.sum(finite >= 0) + 1) / (m + 1)))
    return PairedResult(
        float(b),
        float(t),
        float(t - b),
        low,
        high,
        float(p),
        n,
        f"paired bootstrap over {n} {unit} ({n_boot} resamples)",
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


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value on discordant pairs.

    Under no change each discordant pair is equally likely to go either way, so b is Binomial(b + c, 1/2):
    the exact two-sided binomial test (``scipy.stats.binomtest``) on b of b + c.

    Args:
        b: Pairs that passed on base and failed on tuned.
        c: Pairs that failed on base and passed on tuned.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0 (got b={b}, c={c})")
    if b + c == 0:
        return 1.0
    return min(1.0, float(sps.binomtest(int(b), int(b + c), 0.5).pvalue))


def paired_proportion_interval(b_num: np.ndarray, t_num: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10, 1998) of ``tuned rate - base rate`` on paired pass/fail items.

    Built from the two Wilson intervals and the pairs' correlation, it stays honest where a bootstrap
    collapses: with three items that agree, the bootstrap gives [0, 0]; this gives about ±0.56.

    Args:
        b_num: Base pass (1) / fail (0) per item.
        t_num: Tuned pass / fail for the same items, same order.
        alpha: 1 - coverage (two-sided).

    Returns:
        (low, high) of the difference in pass rates.
    """
    n = int(b_num.size)
    if n == 0:
        raise ValueError("paired_proportion_interval needs at least one item")
    z = NormalDist().inv_cdf(1 - alpha / 2)
    both = int(np.sum((b_num == 1) & (t_num == 1)))
    b, c = discordant(b_num, t_num)
    neither = n - both - b - c
    p1, p2 = (both + b) / n, (both + c) / n
    l1, u1 = wilson(both + b, n, z)
    l2, u2 = wilson(both + c, n, z)
    prod = (both + b) * (c + neither) * (both + c) * (b + neither)
    cross = both * neither - b * c  # Newcombe's continuity-corrected phi (as in Altman et al. 2000, p. 52)
    corrected = cross - n / 2 if cross > n / 2 else cross if cross < 0 else 0.0
    phi = 0.0 if prod == 0 else corrected / math.sqrt(prod)
    # for theta = p1 - p2 (base - tuned), then flipped to tuned - base
    lower_theta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper_theta = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    delta = p2 - p1
    return max(-1.0, delta - upper_theta), min(1.0, delta + lower_theta)


def detectable_effect(
    ci_low: float | None, ci_high: float | None, alpha: float = 0.05, power: float = POWER
) -> float | None:
    """Minimum detectable effect of a paired difference at its n and observed variance.

    The standard error comes from the (1 - alpha) two-sided interval of the difference,
    SE = width / (2 z_{1-alpha/2}); a true effect of (z_{1-alpha/2} + z_power) * SE is found with
    probability ``power`` by a test at level alpha (two-sided), i.e. the interval then excludes 0.

    Returns:
        The effect in the metric's units, or None without an interval.
    """
    if ci_low is None or ci_high is None or not math.isfinite(ci_high - ci_low):
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2)
    se = (ci_high - ci_low) / (2 * z)
    return (z + NormalDist().inv_cdf(power)) * se


def items_needed(
    n: int, ci_low: float, ci_high: float, distance: float, alpha: float = 0.05, power: float = POWER
) -> int | None:
    """Paired items needed for the interval to clear a margin that the observed effect lies ``distance`` from.

    Textbook sample size of a one-sample (paired) z-test: n* = ((z_{1-alpha/2} + z_power) * sigma_d / d)^2,
    where sigma_d, the per-item standard deviation of the difference, is read off the observed interval
    (sigma_d = SE * sqrt(n)) and d is the distance from the observed difference to the margin. The true
    difference is assumed to equal the observed one.

    Returns:
        n* rounded up (at least n + 1 when the interval still straddles), or None when distance is 0
        (no finite number of items separates an effect that sits on the margin).
    """
    if distance <= 0 or n < 1 or not math.isfinite(ci_high - ci_low):
        return None
    z = NormalDist().inv_cdf(1 - alpha / 2)
    sigma = (ci_high - ci_low) / (2 * z) * math.sqrt(n)
    if sigma == 0:
        return n
    return max(n + 1, math.ceil(((z + NormalDist().inv_cdf(power)) * sigma / distance) ** 2))


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (step-up, false discovery rate) of one family of tests.

    ``adjusted[i] < alpha`` holds for exactly the tests the BH procedure rejects at FDR alpha. Among 57 MMLU
    subjects a couple fall below an uncorrected 0.05 by chance alone; adjusted, they do only on real evidence.

    Args:
        p_values: The family's raw p-values; None (no test) stays None and does not count towards the family.

    Returns:
        Adjusted p-values in the input order: min over k >= rank of p_(k) * m / k, capped at 1.
    """
    known = [(p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    m = len(known)
    running = 1.0
    for rank, (p, i) in reversed(list(enumerate(sorted(known), start=1))):
        running = min(running, p * m / rank)
        out[i] = running
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, family-wise error rate) of one family of tests.

    ``adjusted[i] < alpha`` holds for exactly the tests Holm's procedure rejects at FWER alpha: the chance that
    any rejection in the family is false stays below alpha, where BH bounds only the share of false ones. A sweep
    that calls a configuration worse than its best must not do so by chance in any of its comparisons.

    Args:
        p_values: The family's raw p-values; None (no test) stays None and does not count towards the family.

    Returns:
        Adjusted p-values in the input order: max over k <= rank of p_(k) * (m - k + 1), capped at 1.
    """
    known = [(p, i) for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    m = len(known)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(known), start=1):
        running = max(running, min(1.0, p * (m - rank + 1)))
        out[i] = running
    return out


def is_binary(num: np.ndarray, den: np.ndarray) -> bool:
    """True when every item is a single pass/fail (den 1, num 0 or 1)."""
    return bool(num.size) and bool(np.all(den == 1)) and bool(np.all((num == 0) | (num == 1)))


def discordant(b_num: np.ndarray, t_num: np.ndarray) -> tuple[int, int]:
    """(passed on base only, passed on tuned only) for paired binary items."""
    return int(np.sum((b_num == 1) & (t_num == 0))), int(np.sum((b_num == 0) & (t_num == 1)))


def normal_difference(
    base: float, base_se: float, tuned: float, tuned_se: float, alpha: float = 0.05
) -> tuple[float, float, float, float]:
    """Unpaired normal approximation of ``tuned - base`` from two standard errors.

    Ignores the pairing (both sides saw the same items), so the interval is wider than a paired one:
    conservative, used only when per-item records are missing.

    Returns:
        (delta, low, high, two-sided p-value).
    """
    delta = tuned - base
    se = math.hypot(base_se, tuned_se)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    if se == 0:
        return delta, delta, delta, (1.0 if delta == 0 else 0.0)
    p = 2 * (1 - NormalDist().cdf(abs(delta) / se))
    return delta, delta - z * se, delta + z * se, p


def standard_error(stderr: float | None, ci_low: float | None, ci_high: float | None) -> float | None:
    """A metric's standard error: its stderr, else its 95% interval's width / (2 * 1.96), else None."""
    if stderr is not None and math.isfinite(stderr):
        return float(stderr)
    if ci_low is not None and ci_high is not None and math.isfinite(ci_high - ci_low):
        return (ci_high - ci_low) / (2 * Z95)
    return None
