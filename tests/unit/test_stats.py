"""Numerical checks of core.stats and core.matched_pairs against planted effects and reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from tunebench.core import matched_pairs, stats
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


def test_p_value_agrees_with_interval_exactly():
    """The bootstrap p inverts the interval: "excludes 0" and "p < alpha" agree on every dataset, boundary included
    (was: only where p was more than 0.01 from alpha), for means, ratios, clusters and other alphas."""
    rng = np.random.default_rng(7)
    for seed in range(60):
        n = int(rng.integers(3, 40))
        base = _items(rng.random(n), rng.integers(1, 50, size=n).astype(float))
        tuned = [{**i, "num": i["num"] + (0.02 + 0.2 * rng.standard_normal()) * i["den"]} for i in base]
        how = "exp_ratio" if seed % 2 else "mean"
        alpha = (0.05, 0.1, 0.01)[seed % 3]
        clusters = [str(k // 2) for k in range(n)] if seed % 5 == 0 else None
        r = stats.paired_bootstrap(base, tuned, how, n_boot=499, alpha=alpha, seed=seed, clusters=clusters)
        assert (r.low > 0 or r.high < 0) == (r.p_value < alpha), r


def test_interval_holds_the_equal_tailed_and_symmetric_bootstrap_t():
    """The interval is value ± q se with q the larger tail quantile of the studentized replicates."""
    rng = np.random.default_rng(9)
    reps = rng.standard_exponential(1999) - 1.0
    low, high, p = stats._invert(0.5, 0.1, reps, 0.05)
    s = np.sort(reps)
    m = 49  # 2 (49 + 1) / 2000 = 0.05: the 49th value from each end
    assert (low, high) == pytest.approx((0.5 - 0.1 * max(s[-m], -s[m - 1]), 0.5 + 0.1 * max(s[-m], -s[m - 1])))
    assert low <= 0.5 - 0.1 * s[-m] and high >= 0.5 - 0.1 * s[m - 1]  # holds the equal-tailed interval
    q = np.quantile(np.abs(reps), 0.95)
    assert low <= 0.5 - 0.1 * q and high >= 0.5 + 0.1 * q  # and the symmetric one
    assert (p < 0.05) == (low > 0 or high < 0)


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


@pytest.mark.parametrize(("b", "c"), [(10, 2), (0, 0), (5, 5), (0, 6), (3, 17), (40, 20)])
def test_mcnemar_score_test_matches_statsmodels(b, c):
    """At delta = 0 Tango's statistic is McNemar's without continuity correction (statsmodels' mcnemar,
    exact=False, correction=False), whatever the concordant cells hold."""
    from statsmodels.stats.contingency_tables import mcnemar

    for both, neither in ((0, 0), (7, 30)):
        n = b + c + both + neither
        if n == 0:
            continue
        _, _, p = matched_pairs.tango_interval(b, c, n)
        ref = 1.0 if b + c == 0 else mcnemar([[both, b], [c, neither]], exact=False, correction=False).pvalue
        assert p == pytest.approx(ref, rel=1e-12, abs=1e-15)
        assert matched_pairs.tango_interval(c, b, n)[2] == p  # symmetric


def test_tango_interval_solves_the_score_equation_with_a_numerical_constrained_mle():
    """Each end of the interval is where the score statistic, its nuisance rate maximized numerically (not by the
    closed-form root), equals the critical value; the interval is the set of deltas the score test keeps."""
    from scipy.optimize import minimize_scalar

    def numeric_t(delta0, b, c, n):  # p_c - p_b = delta0; maximize the multinomial likelihood over p_b
        def nll(pb):
            pc = pb + delta0
            return -(b * np.log(pb) + c * np.log(pc) + (n - b - c) * np.log(1 - pb - pc))

        lo, hi = max(0.0, -delta0) + 1e-12, (1 - delta0) / 2 - 1e-12
        pb = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
        return (c - b - n * delta0) / np.sqrt(n * (2 * pb + delta0 - delta0**2))

    for b, c, n in [(16, 6, 161), (7, 1, 21), (3, 9, 30), (2, 9, 20), (12, 3, 100)]:
        low, high, p = matched_pairs.tango_interval(b, c, n)
        z = scipy.stats.norm.ppf(0.975)
        assert numeric_t(low, b, c, n) == pytest.approx(z, abs=1e-5)
        assert numeric_t(high, b, c, n) == pytest.approx(-z, abs=1e-5)
        for d in np.linspace(low + 1e-3, high - 1e-3, 7):
            assert abs(numeric_t(d, b, c, n)) < z
    # Cavo et al. 2012, 6 and 16 discordant of 161 (Fagerland, Lydersen & Laake's book, and the tests of their R
    # package contingencytables): Tango -0.0621 (-0.1240 to -0.0054), McNemar asymptotic P = 0.033006
    low, high, p = matched_pairs.tango_interval(16, 6, 161)
    assert (low, high) == pytest.approx((-0.1240, -0.0054), abs=5e-5) and p == pytest.approx(0.033006, abs=5e-7)


def test_tango_interval_and_test_agree_on_every_table_to_n_30():
    """ "The interval excludes 0" is "p < alpha" on all 5,456 (b, c, n) with n <= 30, at alpha 0.05 and 0.01, and
    with a design effect; 2 of 2 improved is no longer significant (Newcombe's interval excluded 0 there, p 0.5)."""
    for n in range(1, 31):
        for b in range(n + 1):
            for c in range(n + 1 - b):
                for alpha, deff in ((0.05, 1.0), (0.01, 1.0), (0.05, 2.5)):
                    low, high, p = matched_pairs.tango_interval(b, c, n, alpha, deff)
                    assert low <= (c - b) / n <= high
                    assert (low > 0 or high < 0) == (p < alpha), (b, c, n, alpha, deff)
    low, high, p = matched_pairs.tango_interval(0, 2, 2)
    assert low < 0 < high and p > 0.05


def test_clustered_matched_pairs_are_durkalski_at_zero_and_plain_without_clusters():
    """With clusters the statistic at 0 is (c - b) / sqrt(sum_k (c_k - b_k)^2) (Durkalski et al. 2003); one pair
    per cluster gives design effect 1, the unclustered answer."""
    rng = np.random.default_rng(2)
    up = (rng.random(120) < 0.2).astype(float)
    down = ((rng.random(120) < 0.15) & (up == 0)).astype(float)
    keys = [str(k // 6) for k in range(120)]
    mp = matched_pairs.matched_pairs(up, down, keys)
    d = np.bincount(np.arange(120) // 6, weights=up - down)
    durkalski = (up.sum() - down.sum()) / np.sqrt(np.sum(d**2))
    deff = max(1.0, np.sum(d**2) / (up.sum() + down.sum()))
    assert mp.design_effect == pytest.approx(deff) and mp.units == 20
    if deff > 1:
        assert mp.p_value == pytest.approx(2 * scipy.stats.norm.sf(abs(durkalski)), rel=1e-9)
    flat = matched_pairs.matched_pairs(up, down)
    single = matched_pairs.matched_pairs(up, down, [str(k) for k in range(120)])
    assert single.design_effect == 1.0 and (single.low, single.high, single.p_value) == (
        flat.low,
        flat.high,
        flat.p_value,
    )
    assert (mp.high - mp.low) >= (flat.high - flat.low)


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
    mp = matched_pairs.matched_pairs((t == 1) & (b == 0), (b == 1) & (t == 0))
    assert (mp.b, mp.c, mp.n) == (1, 2, 5) and mp.delta == pytest.approx(0.2)


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


def test_mde_and_items_needed_use_t_at_small_n():
    """At n = 5 and sigma 1 a paired t-test finds 1.68 sigma with 80% power (noncentral t); the normal formula said
    1.25. With the row's df the MDE is (t_{0.975,4} + t_{0.8,4}) SE = 1.66 sigma, and items_needed solves the t
    equation (a simulation of the t-test at that n has 80% power)."""
    from statistics import NormalDist

    from tunebench.core.stats import detectable_effect, items_needed

    n, sd = 5, 1.0
    half = scipy.stats.t.ppf(0.975, n - 1) * sd / n**0.5  # a t-interval of the paired difference
    mde_t = detectable_effect(-half, half, df=n - 1)
    assert mde_t == pytest.approx(1.66, abs=0.01)
    rng = np.random.default_rng(1)
    draws = rng.normal(mde_t, sd, size=(20000, n))
    t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / n**0.5)
    assert abs(np.mean(t > scipy.stats.t.ppf(0.975, n - 1)) - 0.8) < 0.03  # power at the reported MDE
    z_half = NormalDist().inv_cdf(0.975) * sd / n**0.5
    assert detectable_effect(-z_half, z_half) == pytest.approx(1.25, abs=0.01)  # the normal reading, df None
    need = items_needed(n, -half, half, 0.5, df=n - 1)  # an effect of 0.5 sigma
    assert need > items_needed(n, -z_half, z_half, 0.5) == 32  # the same sigma read on the normal scale
    draws = rng.normal(0.5, sd, size=(20000, need))
    t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / need**0.5)
    assert np.mean(t > scipy.stats.t.ppf(0.975, need - 1)) >= 0.79


def test_wilson_agrees_with_closed_form_and_tango_covers_at_small_n():
    low, high = stats.wilson(3, 10)
    assert low == pytest.approx(0.10779, abs=1e-4) and high == pytest.approx(0.60322, abs=1e-4)
    # Tango's paired interval covers the true difference at about its nominal level, also at small n
    rng = np.random.default_rng(3)
    cells = np.array([0.5, 0.15, 0.05, 0.3])  # both pass, base only, tuned only, neither: true delta -0.10
    hits = 0
    for _ in range(1000):
        kind = rng.choice(4, size=30, p=cells)
        low, high, _ = matched_pairs.tango_interval(int(np.sum(kind == 1)), int(np.sum(kind == 2)), 30)
        hits += low <= -0.10 <= high
    assert 0.93 <= hits / 1000 <= 0.99
    low, high, _ = matched_pairs.tango_interval(0, 0, 3)  # three that agree: wide, not [0, 0]
    assert low < -0.4 and high > 0.4


def test_welch_matches_scipy():
    from scipy.stats import ttest_ind_from_stats

    df = stats.welch_df(0.1, 12, 0.25, 20)
    delta, low, high, p = stats.normal_difference(1.0, 0.1, 1.4, 0.25, 0.05, df)
    ref = ttest_ind_from_stats(1.4, 0.25 * 20**0.5, 20, 1.0, 0.1 * 12**0.5, 12, equal_var=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (high - low) / 2 == pytest.approx(scipy.stats.t.ppf(0.975, df) * np.hypot(0.1, 0.25), rel=1e-9)


def test_a_perplexity_interval_past_float_range_is_unbounded_not_a_crash():
    """Found by `tunebench bench stats` (skewed NLL at n = 5): one wild conversation put the log-scale end of the
    studentized interval past exp's range, and math.exp raised OverflowError. The end is +inf instead."""
    items = [{"id": str(i), "num": v, "den": 1} for i, v in enumerate([2.0, 3.0, 2.5, 300.0, 2.2])]
    ci = stats.bootstrap_ci(items, "exp_ratio", 2000, 0.05, 0)
    assert ci.high == float("inf") and 0 <= ci.low <= ci.value
