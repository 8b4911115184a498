"""Matched pairs: the difference of two paired proportions, its interval and its test, from one score statistic.

A pass/fail item seen by base and tuned, or a judged prompt (tuned preferred, tie, base preferred), is one matched
pair. With b pairs that favour base only (passed on base only; base preferred), c that favour tuned only and n pairs
in all, the change is delta = (c - b) / n. Concordant pairs (both passed, both failed; ties) count in n only.

- **Interval:** Tango's score interval (Tango 1998): every delta0 whose score statistic T(delta0), with the
  nuisance discordance rate at its constrained maximum likelihood, stays within the normal critical value.
  Recommended for paired proportions by Fagerland, Lydersen & Laake (2014).
- **Test:** T(0) = (c - b) / sqrt(b + c), McNemar's (1947) statistic without continuity correction, the
  asymptotic test Fagerland, Lydersen & Laake (2013) found closer to the nominal level than the exact conditional
  one. The interval is the set of deltas this test does not reject, so "the interval excludes 0" holds exactly when
  "p < alpha" does (the exact McNemar test disagreed with Newcombe's interval in 20 of 574 small tables).
- **Clusters** (a prompt's repeated samples; an MT-Bench question's two turns): Rao & Scott's (1992) design effect
  d = sum_k (c_k - b_k)^2 / (b + c) over clusters k, floored at 1, divides the counts, i.e. multiplies the critical
  value by sqrt(d). At delta0 = 0 the statistic is then Durkalski et al.'s (2003) clustered McNemar test
  (c - b) / sqrt(sum_k (c_k - b_k)^2). Without clusters (one pair per cluster) d is exactly 1.

Pure functions of counts; no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy.optimize import brentq

_EDGE = 1e-12
"""The score statistic is evaluated on [-1 + _EDGE, 1 - _EDGE]: at +-1 its variance can vanish."""


@dataclass(frozen=True)
class MatchedPairs:
    """delta = (c - b) / n with its score interval and test."""

    delta: float
    low: float
    high: float
    p_value: float
    b: int
    """Pairs favouring base only."""
    c: int
    """Pairs favouring tuned only."""
    n: int
    """Pairs (samples)."""
    units: int
    """Independent units: clusters when pairs were grouped, else pairs."""
    design_effect: float
    """Rao-Scott design effect of the clustering (1 without clusters)."""
    method: str


def score_statistic(delta0: float, b: float, c: float, n: float) -> float:
    """Tango's (1998) score statistic of H0: delta = delta0 for delta = (c - b) / n.

    T = (c - b - n delta0) / sqrt(n (2 q + delta0 (1 - delta0))), q the constrained maximum likelihood estimate of
    the base-only rate (the root of a quadratic). Decreasing in delta0; T(0) = (c - b) / sqrt(b + c).
    """
    a2 = 2 * n
    b1 = -b - c + (2 * n - c + b) * delta0
    c0 = -b * delta0 * (1 - delta0)
    q = (math.sqrt(max(b1 * b1 - 4 * a2 * c0, 0.0)) - b1) / (2 * a2)
    num = c - b - n * delta0
    var = n * (2 * q + delta0 * (1 - delta0))
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _lower(b: float, c: float, n: float, crit: float, excluded: bool) -> float:
    """The interval's lower end: the delta0 below the estimate where T(delta0) = crit, on the side of 0 the test
    chose (``excluded``: p < alpha), so interval and test cannot disagree by rounding."""
    delta = (c - b) / n

    def f(d: float) -> float:
        return score_statistic(d, b, c, n) - crit

    if excluded and delta > 0:  # the test rejects 0 upwards: the end lies between 0 and the estimate
        return brentq(f, 0.0, delta, xtol=1e-14) if f(0.0) > 0 else math.nextafter(0.0, 1.0)
    top = min(0.0, delta)
    if f(-1 + _EDGE) <= 0:
        return -1.0
    if f(top) > 0:  # the test kept 0 where the statistic, rounded, crossed: 0 stays inside
        return top
    return brentq(f, -1 + _EDGE, top, xtol=1e-14)


def tango_interval(
    b: float, c: float, n: float, alpha: float = 0.05, design_effect: float = 1.0
) -> tuple[float, float, float]:
    """Tango's score interval of delta = (c - b) / n and the two-sided p of T(0), consistent by construction.

    Args:
        b: Pairs favouring base only.
        c: Pairs favouring tuned only.
        n: Pairs.
        alpha: 1 - coverage.
        design_effect: Rao-Scott design effect (>= 1): the critical value and T(0) are scaled by its square root.

    Returns:
        (low, high, p): the interval excludes 0 exactly when p < alpha.

    Raises:
        ValueError: n < 1, negative counts or b + c > n.
    """
    if n < 1 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"matched pairs need 0 <= b, c and b + c <= n >= 1 (got b={b}, c={c}, n={n})")
    crit = NormalDist().inv_cdf(1 - alpha / 2) * math.sqrt(design_effect)
    t0 = (c - b) / math.sqrt(b + c) if b + c else 0.0
    p = math.erfc(abs(t0) / math.sqrt(2 * design_effect))
    excluded = p < alpha
    # T(delta0; b, c) = -T(-delta0; c, b): the upper end is the mirrored lower end
    return _lower(b, c, n, crit, excluded), -_lower(c, b, n, crit, excluded), min(1.0, p)


def design_effect(b_per_cluster: np.ndarray, c_per_cluster: np.ndarray) -> float:
    """Rao & Scott's (1992) design effect of clustered matched pairs: sum_k (c_k - b_k)^2 / (b + c), floored at 1.

    The ratio of the clustered (Durkalski et al. 2003) to the binomial variance of c - b under no change. Floored at
    1: a clustered sample never counts as more evidence than as many independent pairs.
    """
    disc = float(np.sum(b_per_cluster) + np.sum(c_per_cluster))
    if disc == 0:
        return 1.0
    return max(1.0, float(np.sum((c_per_cluster - b_per_cluster) ** 2)) / disc)


def matched_pairs(
    favours_tuned: np.ndarray,
    favours_base: np.ndarray,
    clusters: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> MatchedPairs:
    """Score interval and test of delta = (c - b) / n for matched pairs, clustered when ``clusters`` is given.

    Args:
        favours_tuned: 1 where the pair favours tuned only (passed on tuned only; tuned preferred), else 0.
        favours_base: 1 where the pair favours base only; never 1 together with ``favours_tuned``.
        clusters: Optional cluster key per pair (repeated samples of one prompt; turns of one question).
        alpha: 1 - coverage.

    Raises:
        ValueError: no pairs, arrays of different lengths, or a pair favouring both sides.
    """
    up = np.asarray(favours_tuned, dtype=np.float64)
    down = np.asarray(favours_base, dtype=np.float64)
    if up.size == 0 or up.shape != down.shape or np.any(up * down):
        raise ValueError("matched_pairs needs as many pairs on both sides, each favouring at most one side")
    n, b, c = int(up.size), int(down.sum()), int(up.sum())
    deff, units = 1.0, n
    if clusters is not None:
        if len(clusters) != n:
            raise ValueError(f"{len(clusters)} cluster keys for {n} pairs: give one key per pair")
        _, inverse = np.unique(np.asarray(list(clusters), dtype=str), return_inverse=True)
        units = int(inverse.max()) + 1
        deff = design_effect(np.bincount(inverse, weights=down), np.bincount(inverse, weights=up))
    low, high, p = tango_interval(b, c, n, alpha, deff)
    method = f"Tango score interval and McNemar score test on {n} pairs (b={b}, c={c})"
    if clusters is not None:
        method += f"; clustered by {units} units (Rao-Scott design effect {deff:.3g}; Durkalski test)"
    return MatchedPairs((c - b) / n, low, high, p, b, c, n, units, deff, method)
