"""Simulated evaluations of known truth for ``tunebench bench stats``: data generators, and the suite's own
intervals and decisions on them.

Every decision goes through the code a run uses: a row from ``compare.rows.compare_metric`` (or ``judged_row`` on
a metric built by ``evals.judge.metrics``) and the gate's decision on it (``compare.rows.judge``); every interval
through the function the row calls. Each figure is a share of simulated datasets with a Wilson interval and its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as sps

from tunebench.compare.rows import IMPROVED, REGRESSED, compare_metric, judge, judged_row
from tunebench.compare.rule import parse_rule
from tunebench.core import matched_pairs, pairwise, stats
from tunebench.evals.judge import metrics as judge_metrics
from tunebench.evals.results import Metric

ALPHA = 0.05
Pairs = tuple[list[dict[str, Any]], list[dict[str, Any]]]
"""Base and tuned per-item records (``{"id", "num", "den"}``) of one simulated metric."""


def figure(hits: int, datasets: int, seed: int) -> dict[str, Any]:
    """A simulated share with its 95% Wilson interval (binomial) and the seed that reproduces it."""
    low, high = stats.wilson(hits, datasets)
    return {"rate": hits / datasets, "low": low, "high": high, "hits": hits, "datasets": datasets, "seed": seed}


# ----------------------------------------------------------------------------- data of known truth


def records(base: np.ndarray, tuned: np.ndarray, den: np.ndarray | None = None, ids: list[str] | None = None) -> Pairs:
    """Base and tuned ``{"id", "num", "den"}`` records of the given values (den 1 unless given; ids 0, 1, ...)."""
    den = np.ones_like(base) if den is None else den
    ids = ids or [str(k) for k in range(base.size)]
    b = [{"id": i, "num": float(v), "den": float(d)} for i, v, d in zip(ids, base, den, strict=True)]
    t = [{"id": i, "num": float(v), "den": float(d)} for i, v, d in zip(ids, tuned, den, strict=True)]
    return b, t


def pass_fail(rng: np.random.Generator, n: int, cells: tuple[float, float, float, float]) -> Pairs:
    """n paired pass/fail items; ``cells`` = P(both pass, base only, tuned only, neither)."""
    kind = rng.choice(4, size=n, p=cells)
    return records((kind <= 1).astype(float), ((kind == 0) | (kind == 2)).astype(float))


def beta_rates(rng: np.random.Generator, k: int, mean: float, icc: float) -> np.ndarray:
    """k per-prompt pass probabilities with the given mean, whose samples' intra-prompt correlation is ``icc``."""
    if icc <= 0:
        return np.full(k, mean)
    scale = 1 / icc - 1
    return rng.beta(mean * scale, (1 - mean) * scale, size=k)


def clustered_pass_fail(
    rng: np.random.Generator, prompts: int, samples: int, icc: float, base_mean: float = 0.5, tuned_mean: float = 0.5
) -> Pairs:
    """``prompts`` x ``samples`` paired pass/fail samples (ids ``prompt#k``). Each prompt draws its base and its
    tuned pass probability independently from Beta laws of intra-prompt correlation ``icc``, so the per-sample
    difference has intra-prompt correlation ``icc`` too: with equal means there is no change on average, yet every
    prompt may change (the case where McNemar over samples called 25% of no-change datasets significant)."""
    p = beta_rates(rng, prompts, base_mean, icc)[:, None]
    q = beta_rates(rng, prompts, tuned_mean, icc)[:, None]
    base = (rng.random((prompts, samples)) < p).astype(float).ravel()
    tuned = (rng.random((prompts, samples)) < q).astype(float).ravel()
    return records(base, tuned, ids=[f"p{k}#{j}" for k in range(prompts) for j in range(samples)])


def mean_scores(rng: np.random.Generator, n: int, shift: float, shape: str) -> Pairs:
    """n paired scores: tuned = base + shift + noise, the noise normal or skewed (exponential - 1), both sd 1."""
    base = rng.normal(5.0, 2.0, size=n)
    noise = rng.standard_normal(n) if shape == "normal" else rng.exponential(1.0, size=n) - 1.0
    return records(base, base + shift + noise)


def perplexity_items(
    rng: np.random.Generator, n: int, shift: float, shape: str, capped: bool = True
) -> tuple[Pairs, float, float]:
    """n conversations' summed NLL and tokens, base and tuned; tuned's per-token NLL is base's + shift + noise.

    Tokens are lognormal, capped at 1024 as ``data.max_length`` caps them in a run (the published SmolLM2 run: 2 to
    968 tokens, median 539) or, ``capped=False``, uncapped (a stress case: a few conversations carry most tokens).
    ``shape`` "normal": per-token NLL normal, noise normal; "skewed": NLL gamma (skewness 2), noise exponential.
    Tokens are independent of the NLL, so the population perplexities are exp(2) and exp(2 + shift).

    Returns:
        The records, base's true perplexity and the true change of perplexity.
    """
    if capped:
        tokens = np.clip(np.round(rng.lognormal(6.0, 0.9, size=n)), 8, 1024)
    else:
        tokens = np.maximum(8, np.round(rng.lognormal(4.5, 0.8, size=n)))
    if shape == "normal":
        nll, noise = rng.normal(2.0, 0.5, size=n), rng.standard_normal(n)
    else:
        nll, noise = rng.gamma(1.0, 0.5, size=n) + 1.5, rng.exponential(1.0, n) - 1.0
    tuned = nll + shift + 0.3 * noise
    return records(nll * tokens, tuned * tokens, tokens), math.exp(2.0), math.exp(2.0 + shift) - math.exp(2.0)


def judge_scores(rng: np.random.Generator, questions: int, p: tuple[float, float, float], icc: float) -> np.ndarray:
    """Two turns per question, each +1 / 0 / -1 with probabilities ``p``; with probability ``icc`` the second turn
    repeats the first (turns of one question are alike)."""
    first = rng.choice([1.0, 0.0, -1.0], size=questions, p=p)
    second = np.where(rng.random(questions) < icc, first, rng.choice([1.0, 0.0, -1.0], size=questions, p=p))
    return np.column_stack([first, second]).ravel()


def length_judged(
    rng: np.random.Generator, n: int, theta: float, slope: float, longer: float = 40.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n judged prompts where tuned answers run ``longer`` tokens longer on average (sd 40) and the judge prefers
    tuned with log-odds theta + slope * tanh(difference / 40): sigmoid(theta) is the true length-controlled rate.

    Returns (scores, tuned lengths, base lengths).
    """
    base = rng.integers(50, 150, size=n).astype(float)
    tuned = np.maximum(1.0, base + rng.normal(longer, 40.0, size=n))
    p = 1 / (1 + np.exp(-(theta + slope * np.tanh((tuned - base) / 40.0))))
    return np.where(rng.random(n) < p, 1.0, -1.0), tuned, base


# ----------------------------------------------------------------------------- the suite's decisions

_RULES = (
    parse_rule({"metric": "*", "min_improvement": 0}, "bench stats"),
    parse_rule({"metric": "*", "max_regression": 0}, "bench stats"),
)


def decisions(row: Any) -> tuple[bool, bool]:
    """(the row's verdict claims a change, the gate claims one): ``min_improvement: 0`` passes or
    ``max_regression: 0`` fails, i.e. the gate established an improvement or a regression."""
    verdict = row.verdict in (IMPROVED, REGRESSED)
    up, down = (judge(rule, row) for rule in _RULES)
    return verdict, up.status == "pass" or down.status == "fail"


def _aggregate(items: list[dict[str, Any]], how: str) -> float:
    return float(stats.aggregate_sums(sum(i["num"] for i in items), sum(i["den"] for i in items), how))


def metric_row(pairs: Pairs, aggregate: str = "mean", n_boot: int = 2000, seed: int = 0) -> Any:
    """The comparison row of one simulated metric (``compare.rows.compare_metric``), as a run computes it."""
    b, t = pairs
    bm, tm = (
        Metric("sim/metric", float(_aggregate(items, aggregate)), True, len(items), aggregate=aggregate)
        for items in (b, t)
    )
    return compare_metric(bm, tm, b, t, ALPHA, n_boot, seed, min_n=2)


def judged_metric_row(scores: np.ndarray, tuned_len: np.ndarray, base_len: np.ndarray, clusters: list[str]) -> Any:
    """The judged row (length-controlled win rate) of simulated verdicts, through ``evals.judge.metrics``."""
    records = [
        {
            "id": str(k),
            "score": int(s),
            "cluster": c,
            "tuned_tokens": float(tl),
            "base_tokens": float(bl),
            "consistent": True,
            "score_base_first": int(s),
            "score_tuned_first": int(s),
        }
        for k, (s, c, tl, bl) in enumerate(zip(scores, clusters, tuned_len, base_len, strict=True))
    ]
    metric, _ = judge_metrics.win_rate_metric("judge/sim/win_rate", records, ALPHA)
    return judged_row(metric, ALPHA, min_n=2)


def rejection_share(
    make_row: Callable[[np.random.Generator, int], Any], datasets: int, seed: int
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Share of datasets whose row verdict claims a change, share whose gate does, and datasets where they differ."""
    rng = np.random.default_rng(seed)
    verdicts = gates = differ = 0
    for k in range(datasets):
        v, g = decisions(make_row(rng, k))
        verdicts, gates, differ = verdicts + v, gates + g, differ + (v != g)
    return figure(verdicts, datasets, seed), figure(gates, datasets, seed), differ


def naive_mcnemar_share(pairs_of: Callable[[np.random.Generator], Pairs], datasets: int, seed: int) -> dict[str, Any]:
    """Share of datasets where the exact McNemar test over every sample (clusters ignored; the method before issue
    35) gives p < alpha: the reference the clustered test replaces."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(datasets):
        b, t = pairs_of(rng)
        bb = np.array([i["num"] for i in b])
        tt = np.array([i["num"] for i in t])
        down, up = int(np.sum((bb == 1) & (tt == 0))), int(np.sum((bb == 0) & (tt == 1)))
        hits += down + up > 0 and sps.binomtest(up, down + up, 0.5).pvalue < ALPHA
    return figure(hits, datasets, seed)


def covered(
    interval_of: Callable[[np.random.Generator], tuple[float, float, float]], datasets: int, seed: int
) -> dict[str, Any]:
    """Share of datasets whose interval holds the truth; ``interval_of`` returns (low, high, truth)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(datasets):
        low, high, truth = interval_of(rng)
        hits += bool(low <= truth <= high)
    return figure(hits, datasets, seed)


def tango_of(pairs: Pairs, clusters: list[str] | None = None) -> tuple[float, float]:
    """The matched-pairs interval a pass/fail row carries (``core.matched_pairs``)."""
    b = np.array([i["num"] for i in pairs[0]])
    t = np.array([i["num"] for i in pairs[1]])
    mp = matched_pairs.matched_pairs((t == 1) & (b == 0), (b == 1) & (t == 0), clusters, ALPHA)
    return mp.low, mp.high


def lc_interval(scores: np.ndarray, tuned: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    lc = pairwise.length_controlled(scores, tuned, base, alpha=ALPHA)
    return lc.low, lc.high


# ----------------------------------------------------------------------------- one dataset's interval and its truth

Case = Callable[[np.random.Generator, int], tuple[float, float, float]]
"""A dataset of n units drawn from ``rng``, and the (low, high, truth) of the interval method under test."""


def bootstrap_seed(rng: np.random.Generator) -> int:
    """A bootstrap seed drawn from the dataset's stream (so each figure is reproduced by its seed alone)."""
    return int(rng.integers(2**31))


def boot_mean(shape: str, n_boot: int) -> Case:
    """Paired studentized bootstrap of a mean score; true change 0.3."""

    def one(rng: np.random.Generator, n: int) -> tuple[float, float, float]:
        pr = stats.paired_bootstrap(*mean_scores(rng, n, 0.3, shape), "mean", n_boot, ALPHA, bootstrap_seed(rng))
        return pr.low, pr.high, 0.3

    return one


def boot_ppl(shape: str, paired: bool, n_boot: int, capped: bool = True) -> Case:
    """Studentized bootstrap of perplexity: the paired change (true shift -0.1 nats/token) or one model's value."""

    def one(rng: np.random.Generator, n: int) -> tuple[float, float, float]:
        (b, t), truth_b, truth_d = perplexity_items(rng, n, -0.1, shape, capped)
        if paired:
            pr = stats.paired_bootstrap(b, t, "exp_ratio", n_boot, ALPHA, bootstrap_seed(rng))
            return pr.low, pr.high, truth_d
        ci = stats.bootstrap_ci(b, "exp_ratio", n_boot, ALPHA, bootstrap_seed(rng))
        return ci.low, ci.high, truth_b

    return one


def tango_case(cells: tuple[float, float, float, float]) -> Case:
    """Tango's interval of independent pass/fail pairs; ``cells`` = P(both pass, base only, tuned only, neither)."""
    return lambda rng, n: (*tango_of(pass_fail(rng, n, cells)), cells[2] - cells[1])


def clustered_case(base: float, tuned: float) -> Case:
    """Tango's interval with the Rao-Scott design effect: n prompts x 4 samples, ICC 0.3."""

    def one(rng: np.random.Generator, n: int) -> tuple[float, float, float]:
        pairs = clustered_pass_fail(rng, n, 4, 0.3, base, tuned)
        return (*tango_of(pairs, [i["id"].split("#")[0] for i in pairs[0]]), tuned - base)

    return one


def win_case(win: float, tie: float, loss: float) -> Case:
    """The raw win rate's interval on n independent verdicts."""

    def one(rng: np.random.Generator, n: int) -> tuple[float, float, float]:
        wr = pairwise.win_rate(rng.choice([1.0, 0.0, -1.0], size=n, p=(win, tie, loss)), alpha=ALPHA)
        return wr.low, wr.high, 0.5 + (win - loss) / 2

    return one


def lc_case(rate: float, slope: float) -> Case:
    """The length-controlled win rate's interval; the truth is the preference at equal lengths."""
    theta = math.log(rate / (1 - rate))
    return lambda rng, n: (*lc_interval(*length_judged(rng, n, theta, slope)), rate)


def wilson_case(p: float) -> Case:
    """Wilson's interval of one model's pass rate over n independent samples."""
    return lambda rng, n: (*stats.wilson(int(rng.binomial(n, p)), n), p)


def welch_case(shape: str) -> Case:
    """Welch's interval from two recorded standard errors (no per-item records); true change 0.3."""

    def one(rng: np.random.Generator, n: int) -> tuple[float, float, float]:
        draw = (lambda: rng.normal(0, 1, n)) if shape == "normal" else (lambda: rng.exponential(1, n) - 1)
        b, t = draw(), draw() + 0.3
        se_b, se_t = b.std(ddof=1) / math.sqrt(n), t.std(ddof=1) / math.sqrt(n)
        df = stats.welch_df(se_b, n, se_t, n)
        _, low, high, _ = stats.normal_difference(b.mean(), se_b, t.mean(), se_t, ALPHA, df)
        return low, high, 0.3

    return one
