"""Statistics of pairwise judgments: tuned vs base on the same prompts, one score per prompt.

A judged prompt scores +1 (tuned's answer preferred), 0 (tie) or -1 (base's preferred). The win rate is
(wins + ties/2) / n, i.e. the mean of (score + 1) / 2, so 0.5 means "as good as base" and a gate rule reads the
change as win_rate - 0.5:

- win rate: a judged prompt is a matched pair (a win favours tuned, a loss base, a tie neither), so
  win_rate - 0.5 = (wins - losses) / (2 n) gets ``core.matched_pairs``' score interval and test, clustered by
  question (an MT-Bench question's two turns share one cluster: they are not independent evidence);
- MDE: ``core.stats.detectable_effect`` of the interval (80% power, two-sided alpha);
- length-controlled win rate (AlpacaEval 2's idea, Dubois et al. 2024): a logistic regression of the preference on
  the standardized length difference, read at zero difference, fitted with Firth's penalty (Firth 1993) so it stays
  finite when the longer answer always wins (separation), with a profile penalized-likelihood interval and the
  likelihood-ratio test of 0.5 that it inverts (Heinze & Schemper 2002); clusters scale both by a design effect.

Pure functions over arrays, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit

from tunebench.core.matched_pairs import matched_pairs
from tunebench.core.stats import detectable_effect

THETA_BOUND = 10.0
"""Log-odds searched for the length-controlled rate: beyond +-10 (a rate within 5e-5 of 0 or 1) the end is 0 or 1."""
SLOPE_BOUND = 50.0
"""Log-odds per unit of tanh(length difference / sd) searched for the length slope (|x| <= 1: 50 is a step)."""
_XTOL = 1e-8
"""Tolerance of the ends on the log-odds scale (a rate to about 2e-9)."""
_STEP_TOL = 1e-8
"""Newton stops when a step moves less: the profile value is then off by about its square."""
NEWTON_STEPS = 60


@dataclass(frozen=True)
class WinRate:
    """Win rate of tuned over base with its interval, score test and detectable effect."""

    value: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    n: int
    """Judged prompts."""
    clusters: int
    """Independent units (questions)."""
    p_value: float
    mde: float | None
    """Smallest true change of the win rate (vs 0.5) found with 80% power at this n and variance."""
    method: str


@dataclass(frozen=True)
class LengthControlled:
    """The win rate a judge would give at equal answer lengths (AlpacaEval 2's length control)."""

    value: float
    low: float
    high: float
    slope: float
    """Log-odds of preferring tuned per unit of standardized length difference (tuned - base)."""
    p_value: float
    """Likelihood-ratio test of a length-controlled rate of 0.5; below alpha exactly when the interval excludes it."""
    design_effect: float
    method: str


def scores_of(wins: int, ties: int, losses: int) -> np.ndarray:
    """A score array with the given counts (+1, 0, -1), for tests and planted examples."""
    return np.array([1.0] * wins + [0.0] * ties + [-1.0] * losses)


def _scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("a win rate needs at least one judged prompt")
    if not np.all(np.isin(s, (-1.0, 0.0, 1.0))):
        raise ValueError("scores must be +1 (tuned preferred), 0 (tie) or -1 (base preferred)")
    return s


def win_rate(
    scores: Sequence[float] | np.ndarray, clusters: Sequence[str] | None = None, alpha: float = 0.05
) -> WinRate:
    """Win rate of tuned over base, with its matched-pairs score interval and test, clustered by question.

    Args:
        scores: +1 / 0 / -1 per judged prompt.
        clusters: Optional question key per prompt; a question's prompts count as one unit of evidence.
        alpha: 1 - coverage of the interval.

    Raises:
        ValueError: no scores, a score outside {-1, 0, 1}, or one cluster key too many or too few.
    """
    s = _scores(scores)
    mp = matched_pairs(s == 1, s == -1, clusters, alpha)
    low, high = 0.5 + mp.low / 2, 0.5 + mp.high / 2
    wins, ties, losses = mp.c, int(np.sum(s == 0)), mp.b
    unit = "questions" if clusters is not None else "prompts"
    return WinRate(
        value=0.5 + mp.delta / 2,
        low=low,
        high=high,
        wins=wins,
        ties=ties,
        losses=losses,
        n=mp.n,
        clusters=mp.units,
        p_value=mp.p_value,
        mde=detectable_effect(low, high, alpha),
        method=f"Tango score interval and McNemar score test over {mp.units} {unit} ({wins} wins, {losses} losses, "
        f"{ties} ties" + (f"; Rao-Scott design effect {mp.design_effect:.3g})" if clusters is not None else ")"),
    )


def _penalized_loglik(theta: float, slope: float, x: np.ndarray | None, y: np.ndarray) -> float:
    """Firth's (1993) penalized log-likelihood of logit P(tuned preferred) = theta + slope x: the binomial
    log-likelihood (a tie counts half a win) plus half the log-determinant of the Fisher information."""
    eta = theta + (0.0 if x is None else slope * x)
    loglik = -float(np.sum(y * np.logaddexp(0.0, -eta) + (1 - y) * np.logaddexp(0.0, eta)))
    w = expit(eta) * expit(-eta)
    if x is None:
        det = float(w.sum())
    else:
        wx = w * x
        det = float(w.sum() * np.dot(wx, x) - wx.sum() ** 2)
    return loglik + 0.5 * math.log(det) if det > 0 else -math.inf


def _newton(theta: float, slope: float, x: np.ndarray | None, y: np.ndarray, fit_theta: bool) -> tuple[float, float]:
    """Maximize the penalized log-likelihood by Newton steps on Firth's modified score (Heinze & Schemper 2002):
    over the slope at a fixed intercept (a profile point), or over both (``fit_theta``; the intercept alone without
    a length term). Step-halving keeps every step uphill.

    Returns:
        (theta, slope); NaN when the steps do not settle (the caller falls back to a bracketing search).
    """
    value = _penalized_loglik(theta, slope, x, y)
    xs = np.zeros_like(y) if x is None else x
    for _ in range(NEWTON_STEPS):
        p = expit(theta + slope * xs)
        w = p * (1 - p)
        s0, s1, s2 = float(w.sum()), float(np.dot(w, xs)), float(np.dot(w * xs, xs))
        det = s0 * s2 - s1 * s1 if x is not None else s0
        if det <= 0:
            break
        h = w * ((s2 - 2 * s1 * xs + s0 * xs * xs) / det if x is not None else 1 / s0)  # hat values
        r = y - p + h * (0.5 - p)
        g0, g1 = float(r.sum()), float(np.dot(r, xs))
        if x is None:
            d0, d1 = g0 / s0, 0.0
        elif fit_theta:
            d0, d1 = (s2 * g0 - s1 * g1) / det, (s0 * g1 - s1 * g0) / det
        else:
            d0, d1 = 0.0, g1 / s2
        if max(abs(d0), abs(d1)) < _STEP_TOL:
            return theta, slope
        t, new = 1.0, _penalized_loglik(theta + d0, slope + d1, x, y)
        while new < value - 1e-12 * abs(value) and t > 1e-8:  # uphill, up to rounding at the top
            t /= 2
            new = _penalized_loglik(theta + t * d0, slope + t * d1, x, y)
        theta, slope, value = theta + t * d0, slope + t * d1, new
        if max(abs(t * d0), abs(t * d1)) < _STEP_TOL:
            return theta, slope
    return math.nan, math.nan


def _profile(theta: float, x: np.ndarray | None, y: np.ndarray, start: float = 0.0) -> tuple[float, float]:
    """(penalized log-likelihood maximized over the slope at this intercept, that slope)."""
    if x is None:
        return _penalized_loglik(theta, 0.0, None, y), 0.0
    _, slope = _newton(theta, start, x, y, fit_theta=False)
    if not abs(slope) < SLOPE_BOUND:  # no settled Newton point: a bracketing search cannot miss it
        res = minimize_scalar(
            lambda b: -_penalized_loglik(theta, b, x, y),
            bounds=(-SLOPE_BOUND, SLOPE_BOUND),
            method="bounded",
            options={"xatol": _XTOL},
        )
        slope = float(res.x)
    return _penalized_loglik(theta, slope, x, y), slope


def _design_effect(theta: float, slope: float, x: np.ndarray | None, y: np.ndarray, clusters: Sequence[str]) -> float:
    """Cluster-robust (sandwich) over model-based variance of the intercept, floored at 1 (Rao & Scott 1984)."""
    xs = np.zeros_like(y) if x is None else x
    design = np.column_stack([np.ones_like(y), xs]) if x is not None else np.ones((y.size, 1))
    p = expit(theta + slope * xs)
    info = design.T @ (design * (p * (1 - p))[:, None])
    _, inverse = np.unique(np.asarray(list(clusters), dtype=str), return_inverse=True)
    k = int(inverse.max()) + 1
    if k < 2:
        return 1.0
    scores = np.zeros((k, design.shape[1]))
    np.add.at(scores, inverse.reshape(-1), design * (y - p)[:, None])
    bread = np.linalg.pinv(info)
    robust = bread @ (scores.T @ scores * k / (k - 1)) @ bread
    return max(1.0, float(robust[0, 0] / bread[0, 0])) if bread[0, 0] > 0 else 1.0


def _lower_end(lr, estimate: float, crit: float, excluded: bool) -> float:
    """The intercept below the estimate where the scaled likelihood ratio reaches ``crit``, on the side of 0 the test
    chose (``excluded``), so the interval cannot disagree with the p-value by rounding."""

    def f(t: float) -> float:
        return lr(t) - crit

    if excluded and estimate > 0:
        return brentq(f, 0.0, estimate, xtol=_XTOL) if f(0.0) > 0 else math.nextafter(0.0, 1.0)
    top = min(0.0, estimate)
    if f(-THETA_BOUND) <= 0:
        return -math.inf
    if f(top) > 0:
        return top
    return brentq(f, -THETA_BOUND, top, xtol=_XTOL)


def length_controlled(
    scores: Sequence[float] | np.ndarray,
    tuned_lengths: Sequence[float],
    base_lengths: Sequence[float],
    clusters: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> LengthControlled:
    """Length-controlled win rate: the fitted preference for tuned at zero length difference, with its interval and
    the test of 0.5 that the interval inverts.

    The model is AlpacaEval 2's (Dubois et al. 2024) without the instruction term: logit P(tuned preferred) =
    theta + slope * tanh((len_tuned - len_base) / sd), sd the standard deviation of the differences; the rate is
    sigmoid(theta). Fitted by Firth's penalized likelihood (Firth 1993), which stays finite when the longer answer
    always wins (a fixed ridge set the answer there); the interval is the profile penalized-likelihood interval of
    theta and p the penalized likelihood-ratio test of theta = 0 (Heinze & Schemper 2002). With clusters the ratio
    is divided by the intercept's design effect (cluster-robust over model variance, at least 1). A judge that only
    prefers the longer answer gets a rate near 0.5 with an interval that says how little is known at equal lengths.

    Args:
        scores: +1 / 0 / -1 per judged prompt.
        tuned_lengths, base_lengths: answer lengths (tokens or characters, the same unit on both sides).
        clusters: Optional question key per prompt.
        alpha: 1 - coverage.

    Raises:
        ValueError: no scores, a bad score, or not one length pair per score.
    """
    s = _scores(scores)
    d = np.asarray(tuned_lengths, dtype=np.float64) - np.asarray(base_lengths, dtype=np.float64)
    if d.shape != s.shape:
        raise ValueError(f"length_controlled needs one length pair per score ({s.size} scores, {d.size} pairs)")
    sd = float(d.std())
    x = np.tanh(d / sd) if sd > 0 else None  # equal differences throughout: nothing to control, intercept only
    y = (s + 1) / 2
    theta, slope = _newton(0.0, 0.0, x, y, fit_theta=True)
    if not (abs(theta) < THETA_BOUND and abs(slope) < SLOPE_BOUND):  # not settled: maximize the profile instead
        res = minimize_scalar(
            lambda t: -_profile(t, x, y)[0],
            bounds=(-THETA_BOUND, THETA_BOUND),
            method="bounded",
            options={"xatol": _XTOL},
        )
        theta = float(res.x)
    top, slope = _profile(theta, x, y, slope if math.isfinite(slope) else 0.0)
    deff = _design_effect(theta, slope, x, y, clusters) if clusters is not None else 1.0

    def lr(t: float) -> float:
        return 2 * (top - _profile(t, x, y, slope)[0]) / deff

    crit = NormalDist().inv_cdf(1 - alpha / 2) ** 2
    p = math.erfc(math.sqrt(max(lr(0.0), 0.0) / 2))
    low = _lower_end(lr, theta, crit, p < alpha)
    high = -_lower_end(lambda t: lr(-t), -theta, crit, p < alpha)
    unit = "questions" if clusters is not None else "prompts"
    return LengthControlled(
        value=float(expit(theta)),
        low=float(expit(low)),
        high=float(expit(high)),
        slope=slope,
        p_value=min(1.0, p),
        design_effect=deff,
        method="Firth logistic regression of the preference on tanh(length difference / sd), read at 0; profile "
        f"penalized-likelihood interval and likelihood-ratio test over {s.size} prompts"
        + (f" in {len(set(clusters))} {unit} (design effect {deff:.3g})" if clusters is not None else ""),
    )


def explained_by_length(raw: WinRate | float, lc: LengthControlled | float, alpha: float = 0.05) -> bool:
    """True when the raw win rate differs from 0.5 (p < alpha) and the length-controlled rate does not: a
    preference that the answers' lengths explain. Takes the results or their p-values."""
    raw_p = raw.p_value if isinstance(raw, WinRate) else raw
    lc_p = lc.p_value if isinstance(lc, LengthControlled) else lc
    return raw_p < alpha <= lc_p
