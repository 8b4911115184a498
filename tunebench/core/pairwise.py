"""Statistics of pairwise judgments: tuned vs base on the same prompts, one score per prompt.

A judged prompt scores +1 (tuned's answer preferred), 0 (tie) or -1 (base's preferred). The win rate is
(wins + ties/2) / n, i.e. the mean of (score + 1) / 2, so 0.5 means "as good as base" and a gate rule reads the
change as win_rate - 0.5:

- interval: paired percentile bootstrap over prompts, clustered by question (an MT-Bench question's two turns
  share one cluster: they are not independent evidence);
- p-value: exact two-sided sign test on wins vs losses (ties carry no sign);
- MDE: ``core.stats.detectable_effect`` of the interval (80% power, two-sided alpha);
- length-controlled win rate (AlpacaEval 2's idea): a logistic regression of the preference on the standardized
  length difference, read at zero difference, with its bootstrap interval over the same clusters.

Pure functions over arrays; randomness through a seeded ``np.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from tunebench.core.stats import _quantiles, detectable_effect

RIDGE = 1e-3
"""L2 penalty of the length-controlled fit: keeps it finite when every prompt goes one way (separation)."""
NEWTON_STEPS = 30


@dataclass(frozen=True)
class WinRate:
    """Win rate of tuned over base with its interval, sign test and detectable effect."""

    value: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    n: int
    """Judged prompts."""
    clusters: int
    """Resampling units (questions)."""
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
    method: str


def scores_of(wins: int, ties: int, losses: int) -> np.ndarray:
    """A score array with the given counts (+1, 0, -1), for tests and planted examples."""
    return np.array([1.0] * wins + [0.0] * ties + [-1.0] * losses)


def _cluster_index(clusters: Sequence[str] | None, n: int) -> tuple[np.ndarray, int]:
    if clusters is None:
        return np.arange(n), n
    if len(clusters) != n:
        raise ValueError(f"{len(clusters)} cluster keys for {n} scores: give one key per judged prompt")
    _, inverse = np.unique(np.asarray(list(clusters), dtype=str), return_inverse=True)
    return inverse.reshape(-1), int(inverse.max()) + 1


def _resample_weights(inverse: np.ndarray, k: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) weights: how often each prompt's cluster was drawn in each resample of k clusters."""
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    return counts[:, inverse]


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test of wins vs losses (ties dropped); 1.0 when there is no decided prompt."""
    if wins + losses == 0:
        return 1.0
    return min(1.0, float(sps.binomtest(int(wins), int(wins + losses), 0.5).pvalue))


def win_rate(
    scores: Sequence[float] | np.ndarray,
    clusters: Sequence[str] | None = None,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> WinRate:
    """Win rate of tuned over base, with a clustered paired bootstrap interval, a sign test and the MDE.

    Args:
        scores: +1 / 0 / -1 per judged prompt.
        clusters: Optional question key per prompt; a question's prompts are resampled together.
        n_boot: Bootstrap resamples.
        alpha: 1 - coverage of the interval.
        seed: Seed of the resampling.

    Raises:
        ValueError: no scores, or a score outside {-1, 0, 1}.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("win_rate needs at least one judged prompt")
    if not np.all(np.isin(s, (-1.0, 0.0, 1.0))):
        raise ValueError("scores must be +1 (tuned preferred), 0 (tie) or -1 (base preferred)")
    inverse, k = _cluster_index(clusters, s.size)
    pref = (s + 1) / 2
    w = _resample_weights(inverse, k, n_boot, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (w @ pref) / w.sum(axis=1)
    low, high = _quantiles(boot, alpha)
    wins, ties, losses = int(np.sum(s == 1)), int(np.sum(s == 0)), int(np.sum(s == -1))
    unit = "questions" if clusters is not None else "prompts"
    return WinRate(
        value=float(pref.mean()),
        low=low,
        high=high,
        wins=wins,
        ties=ties,
        losses=losses,
        n=int(s.size),
        clusters=k,
        p_value=sign_test(wins, losses),
        mde=detectable_effect(low, high, alpha),
        method=f"paired percentile bootstrap over {k} {unit} ({n_boot} resamples); p: exact sign test "
        f"({wins} wins vs {losses} losses, {ties} ties)",
    )


def _logistic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted logistic regression of y (in [0, 1]) on [1, x], one fit per row of ``w``, by Newton's method.

    Args:
        x: (n,) feature.
        y: (n,) targets; 0.5 (a tie) contributes half a success, as AlpacaEval counts ties.
        w: (B, n) weights per fit.

    Returns:
        (B, 2) intercept and slope.
    """
    beta = np.zeros((w.shape[0], 2))
    for _ in range(NEWTON_STEPS):
        eta = beta[:, :1] + beta[:, 1:] * x[None, :]
        p = 1.0 / (1.0 + np.exp(-eta))
        r = w * (y[None, :] - p)
        g0 = r.sum(axis=1) - RIDGE * beta[:, 0]
        g1 = (r * x).sum(axis=1) - RIDGE * beta[:, 1]
        v = w * p * (1 - p)
        h00 = v.sum(axis=1) + RIDGE
        h01 = (v * x).sum(axis=1)
        h11 = (v * x * x).sum(axis=1) + RIDGE
        det = h00 * h11 - h01 * h01
        step0 = (h11 * g0 - h01 * g1) / det
        step1 = (h00 * g1 - h01 * g0) / det
        beta[:, 0] += step0
        beta[:, 1] += step1
        if np.max(np.abs(np.concatenate([step0, step1]))) < 1e-10:
            break
    return beta


def length_controlled(
    scores: Sequence[float] | np.ndarray,
    tuned_lengths: Sequence[float],
    base_lengths: Sequence[float],
    clusters: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> LengthControlled:
    """Length-controlled win rate: the fitted preference for tuned at zero length difference.

    The feature is tanh((len_tuned - len_base) / sd) with sd the standard deviation of the differences (AlpacaEval
    2 standardizes the same way), so a judge that only prefers the longer answer gets a slope and a rate near 0.5.

    Args:
        scores: +1 / 0 / -1 per judged prompt.
        tuned_lengths, base_lengths: answer lengths (tokens or characters, the same unit on both sides).
        clusters: Optional question key per prompt.
        n_boot: Bootstrap resamples (each one refits).
        alpha: 1 - coverage.
        seed: Seed of the resampling.
    """
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(tuned_lengths, dtype=np.float64) - np.asarray(base_lengths, dtype=np.float64)
    if not s.size == d.size > 0:
        raise ValueError(f"length_controlled needs one length pair per score ({s.size} scores, {d.size} pairs)")
    sd = float(d.std())
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    y = (s + 1) / 2
    inverse, k = _cluster_index(clusters, s.size)
    beta = _logistic_fit(x, y, np.ones((1, s.size)))[0]
    boot = _logistic_fit(x, y, _resample_weights(inverse, k, n_boot, np.random.default_rng(seed + 1)))
    low, high = _quantiles(1.0 / (1.0 + np.exp(-boot[:, 0])), alpha)
    return LengthControlled(
        value=float(1.0 / (1.0 + np.exp(-beta[0]))),
        low=low,
        high=high,
        slope=float(beta[1]),
        method=f"logistic regression of the preference on tanh(length difference / sd), read at 0; "
        f"bootstrap over {k} {'questions' if clusters is not None else 'prompts'} ({n_boot} refits)",
    )
