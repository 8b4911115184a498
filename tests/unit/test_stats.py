"""Numerical checks of reports.stats against planted effects and reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from tunebench.core import stats
from tunebench.evals.results import aggregate


def _items(num, den=None, prefix="i"):
    den = np.ones(len(num)) if den is None else den
    return [
        {"id": f"{prefix}{k}", "num": float(n), "den": float(d)} for k, (n, d) in enumerate(zip(num, den, strict=True))
    ]


def _ppl_items(rng, n=80, shift=0.0):
    tokens = rng.integers(20, 300, size=n)
    nll = 2.0 + 0.5 * rng.standard_normal(n)
    return tokens, nll, _items((nll + shift) * tokens, tokens, prefix="conv")


def test_exp_ratio_is_exp_of_summed_nll_over_tokens():
    rng = np.random.default_rng(0)
    tokens, nll, items = _ppl_items(rng)
    expected = math.exp(float(np.sum(nll * tokens)) / float(np.sum(tokens)))
    assert stats.aggregate_sums(
        sum(i["num"] for i in items), sum(i["den"] for i in items), "exp_ratio"
    ) == pytest.approx(expected, rel=1e-12)
    assert aggregate(items, "exp_ratio") == pytest.approx(expected, rel=1e-12)
    # The bootstrap's point value is the same aggregate, not a mean of per-item perplexities.
    assert stats.bootstrap_ci(items, "exp_ratio", n_boot=50).value == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(float(np.mean(np.exp(nll))), rel=1e-3)


def test_aggregate_rejects_unknown_and_gives_nan_on_zero_den():
    with pytest.raises(ValueError, match="unknown aggregate"):
        stats.aggregate_sums(1.0, 1.0, "median")
    assert math.isnan(stats.aggregate_sums(1.0, 0.0, "mean"))


def test_bootstrap_ci_brackets_value_is_seeded_and_close_to_wilson():
    rng = np.random.default_rng(1)
    passes = (rng.random(400) < 0.3).astype(float)
    items = _items(passes)
    a = stats.bootstrap_ci(items, "mean", n_boot=2000, alpha=0.05, seed=3)
    b = stats.bootstrap_ci(items, "mean", n_boot=2000, alpha=0.05, seed=3)
    assert a == b
    assert a.low < a.value < a.high and a.n == 400
    lo, hi = stats.wilson(int(passes.sum()), len(passes))
    assert a.low == pytest.approx(lo, abs=0.015) and a.high == pytest.approx(hi, abs=0.015)


def test_bootstrap_chunking_does_not_change_the_draws(monkeypatch):
    items = _items(np.random.default_rng(2).random(50))
    whole = stats.bootstrap_ci(items, "mean", n_boot=300, seed=9)
    monkeypatch.setattr(stats, "_MAX_CELLS", 50 * 7)  # 7 resamples per chunk
    assert stats.bootstrap_ci(items, "mean", n_boot=300, seed=9) == whole


def test_paired_bootstrap_detects_planted_improvement():
    rng = np.random.default_rng(4)
    tokens, nll, base = _ppl_items(rng)
    # Tuned lowers every conversation's NLL by 0.05 nats/token, plus noise far larger between conversations.
    tuned = _items((nll - 0.05 + 0.02 * rng.standard_normal(len(nll))) * tokens, tokens, prefix="conv")
    r = stats.paired_bootstrap(base, tuned, "exp_ratio", n_boot=2000, alpha=0.05, seed=0)
    assert r.delta < 0 and r.high < 0, r
    assert r.p_value < 0.01
    assert r.delta == pytest.approx(aggregate(tuned, "exp_ratio") - aggregate(base, "exp_ratio"))
    # Unpaired intervals of the two values overlap: pairing is what makes the effect visible.
    b_ci = stats.bootstrap_ci(base, "exp_ratio", seed=0)
    t_ci = stats.bootstrap_ci(tuned, "exp_ratio", seed=0)
    assert t_ci.high > b_ci.low


def test_paired_bootstrap_identical_inputs_give_zero_and_p_one():
    items = _items(np.random.default_rng(5).random(60))
    r = stats.paired_bootstrap(items, [dict(i) for i in items], "mean", n_boot=500, seed=0)
    assert r.delta == 0 and r.low == 0 and r.high == 0
    assert r.p_value == pytest.approx(1.0)


def test_paired_bootstrap_matches_items_by_id_not_position():
    rng = np.random.default_rng(6)
    base = _items(rng.random(40))
    tuned = _items(rng.random(40))
    shuffled = [tuned[k] for k in rng.permutation(40)]
    assert stats.paired_bootstrap(base, shuffled, n_boot=300, seed=1) == stats.paired_bootstrap(
        base, tuned, n_boot=300, seed=1
    )


def test_paired_bootstrap_refuses_different_or_repeated_ids():
    base = _items([1, 0, 1])
    with pytest.raises(ValueError, match="same ids.*1 only in base.*i2.*1 only in tuned.*x9"):
        stats.paired_bootstrap(base, base[:2] + [{"id": "x9", "num": 1, "den": 1}])
    with pytest.raises(ValueError, match="repeat ids"):
        stats.paired_bootstrap(base + [base[0]], base + [base[0]])
    with pytest.raises(ValueError, match="needs items"):
        stats.paired_bootstrap([], [])


def test_p_value_agrees_with_interval():
    rng = np.random.default_rng(7)
    for seed in range(12):
        base = _items(rng.random(30))
        tuned = [{**i, "num": i["num"] + 0.08 * rng.standard_normal()} for i in base]
        r = stats.paired_bootstrap(base, tuned, n_boot=1000, alpha=0.05, seed=seed)
        excludes_zero = r.low > 0 or r.high < 0
        if abs(r.p_value - 0.05) > 0.01:  # the smoothing term only matters at the boundary
            assert (r.p_value < 0.05) == excludes_zero, r


def test_cluster_bootstrap_resamples_prompts_whole():
    # 10 prompts x 4 identical samples: treating samples as independent overstates n by 4x.
    per_prompt = np.repeat(np.random.default_rng(8).integers(0, 2, size=10), 4).astype(float)
    ids = [f"p{k // 4}#{k % 4}" for k in range(40)]
    base = [{"id": i, "num": 0.0, "den": 1.0} for i in ids]
    tuned = [{"id": i, "num": v, "den": 1.0} for i, v in zip(ids, per_prompt, strict=True)]
    keys = {i: i.split("#")[0] for i in ids}
    flat = stats.paired_bootstrap(base, tuned, n_boot=2000, seed=0)
    grouped = stats.paired_bootstrap(base, tuned, n_boot=2000, seed=0, clusters=keys)
    assert grouped.n == 10 and flat.n == 40
    assert grouped.delta == flat.delta
    assert (grouped.high - grouped.low) > 1.5 * (flat.high - flat.low)


@pytest.mark.parametrize(("b", "c", "expected"), [(10, 2, 0.0385742), (0, 0, 1.0), (5, 5, 1.0), (0, 6, 0.03125)])
def test_mcnemar_exact_known_values(b, c, expected):
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, abs=1e-6)


def test_mcnemar_exact_matches_scipy_binomtest_and_is_symmetric():
    for b in range(0, 25, 3):
        for c in range(0, 25, 4):
            if b + c:
                ref = scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue
                assert stats.mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9)
            assert stats.mcnemar_exact(b, c) == stats.mcnemar_exact(c, b)
    assert 0 < stats.mcnemar_exact(600, 500) < 0.01  # large counts stay exact (integer arithmetic)


def test_wilson_matches_reference():
    assert stats.wilson(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    for k, n in [(0, 7), (3, 7), (7, 7), (41, 120)]:
        ref = scipy.stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert stats.wilson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-4)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.wilson(3, 2)


def test_normal_difference_and_standard_error():
    delta, lo, hi, p = stats.normal_difference(0.50, 0.03, 0.60, 0.04, alpha=0.05)
    assert delta == pytest.approx(0.10)
    assert (lo, hi) == pytest.approx((0.10 - 1.959964 * 0.05, 0.10 + 1.959964 * 0.05), abs=1e-6)
    assert p == pytest.approx(2 * (1 - scipy.stats.norm.cdf(2.0)), abs=1e-9)
    assert stats.standard_error(None, 0.4, 0.6) == pytest.approx(0.1 / 1.959964, rel=1e-6)
    assert stats.standard_error(0.02, 0.4, 0.6) == 0.02
    assert stats.standard_error(None, None, None) is None


def test_binary_detection_and_discordant_counts():
    b = np.array([1, 1, 0, 0, 1.0])
    t = np.array([1, 0, 1, 1, 1.0])
    assert stats.is_binary(b, np.ones(5)) and not stats.is_binary(b * 0.5, np.ones(5))
    assert stats.discordant(b, t) == (1, 2)


def test_items_needed_matches_the_textbook_formula_and_a_simulation():
    # paired differences with sd 1, observed mean 0.1 above a non-inferiority margin of -0.1 (distance 0.2)
    from statistics import NormalDist

    from tunebench.core.stats import Z95, detectable_effect, items_needed

    n, sd, true_diff, margin = 50, 1.0, 0.1, -0.1
    half = Z95 * sd / n**0.5
    need = items_needed(n, true_diff - half, true_diff + half, true_diff - margin)
    textbook = ((Z95 + NormalDist().inv_cdf(0.8)) * sd / 0.2) ** 2  # 196.2
    assert need == int(np.ceil(textbook)) == 197
    # simulation: with `need` items, the interval's lower bound clears the margin in ~80% of runs
    rng = np.random.default_rng(0)
    draws = rng.normal(true_diff, sd, size=(4000, need))
    lower = draws.mean(axis=1) - Z95 * draws.std(axis=1, ddof=1) / need**0.5
    assert abs(np.mean(lower > margin) - 0.8) < 0.03
    # the minimum detectable effect at n is (z + z_0.8) * SE
    assert detectable_effect(-half, half) == pytest.approx((Z95 + NormalDist().inv_cdf(0.8)) * sd / n**0.5)


def test_wilson_and_mcnemar_agree_with_closed_forms():
    from tunebench.core.stats import mcnemar_exact, paired_proportion_interval, wilson

    low, high = wilson(3, 10)
    assert low == pytest.approx(0.10779, abs=1e-4) and high == pytest.approx(0.60322, abs=1e-4)
    assert mcnemar_exact(4, 14) == pytest.approx(2 * sum(math.comb(18, i) for i in range(5)) / 2**18)
    # Newcombe's paired interval covers the true difference at about its nominal level, also at small n
    rng = np.random.default_rng(3)
    cells = np.array([0.5, 0.15, 0.05, 0.3])  # both pass, base only, tuned only, neither: true delta -0.10
    hits = 0
    for _ in range(1000):
        kind = rng.choice(4, size=30, p=cells)
        low, high = paired_proportion_interval((kind <= 1).astype(int), ((kind == 0) | (kind == 2)).astype(int))
        hits += low <= -0.10 <= high
    assert 0.93 <= hits / 1000 <= 0.99
    low, high = paired_proportion_interval(np.ones(3), np.ones(3))  # three that agree: wide, not [0, 0]
    assert low < -0.4 and high > 0.4
