"""Win rate, its score test and the length-controlled win rate on planted verdicts of known outcome."""

from __future__ import annotations

import numpy as np
import pytest

from tunebench.core import pairwise
from tunebench.core.pairwise import length_controlled, scores_of, win_rate


def test_clear_win_excludes_half_and_is_significant():
    r = win_rate(scores_of(70, 20, 10))
    assert r.value == pytest.approx((70 + 10) / 100)
    assert r.low > 0.5 and r.p_value < 0.001
    assert (r.wins, r.ties, r.losses, r.n) == (70, 20, 10, 100)


def test_clear_loss_lies_below_half():
    r = win_rate(scores_of(8, 12, 60))
    assert r.high < 0.5 and r.p_value < 0.001


def test_true_tie_with_large_n_is_within_five_points():
    rng = np.random.default_rng(1)
    s = rng.choice([-1.0, 0.0, 1.0], size=1200, p=[0.3, 0.4, 0.3])
    r = win_rate(s)
    assert abs(r.value - 0.5) < 0.02
    assert r.low > 0.45 and r.high < 0.55  # non-inferiority at a 5-point margin holds
    assert r.p_value > 0.05
    assert r.mde is not None and r.mde < 0.05


def test_tiny_n_is_inconclusive():
    r = win_rate(scores_of(3, 0, 1))
    assert r.low < 0.5 < r.high or r.low <= 0.45
    assert r.p_value > 0.05
    assert r.mde is not None and r.mde > 0.1


def test_clusters_widen_the_interval_when_turns_agree():
    # two turns of one question always agree: clustering halves the independent evidence
    base = scores_of(30, 0, 20)
    s = np.repeat(base, 2)
    keys = [str(k // 2) for k in range(s.size)]
    flat, grouped = win_rate(s), win_rate(s, clusters=keys)
    assert grouped.clusters == 50 and flat.clusters == 100
    assert (grouped.high - grouped.low) > 1.2 * (flat.high - flat.low)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="scores must be"):
        win_rate([2.0])
    with pytest.raises(ValueError, match="at least one"):
        win_rate([])


def test_length_only_preference_is_removed_by_length_control():
    rng = np.random.default_rng(0)
    n = 600
    base_len = rng.integers(50, 150, size=n).astype(float)
    # tuned is usually longer, and the judge prefers whichever answer is longer (noisy), nothing else
    tuned_len = base_len + rng.normal(40, 40, size=n)
    d = tuned_len - base_len
    p_tuned = 1 / (1 + np.exp(-3 * np.tanh(d / d.std())))
    s = np.where(rng.random(n) < p_tuned, 1.0, -1.0)
    raw = win_rate(s)
    lc = length_controlled(s, tuned_len, base_len)
    assert raw.value > 0.7
    assert abs(lc.value - 0.5) < 0.08
    assert lc.low < 0.5 < lc.high
    assert lc.slope > 1


def test_length_control_keeps_a_real_win_at_equal_lengths():
    rng = np.random.default_rng(2)
    n = 400
    lengths = rng.integers(50, 150, size=n).astype(float)
    s = np.where(rng.random(n) < 0.8, 1.0, -1.0)
    lc = length_controlled(s, lengths + rng.normal(0, 5, n), lengths)
    assert lc.value == pytest.approx(0.8, abs=0.05) and lc.low > 0.5


def test_length_control_stays_finite_when_every_prompt_goes_one_way():
    lc = length_controlled(np.ones(20), np.arange(20.0) + 5, np.arange(20.0))
    assert 0.9 < lc.value <= 1.0 and np.isfinite(lc.low)


def test_no_decided_prompt_gives_p_one():
    # all ties: no discordant pair, so the score test has nothing against 0.5 (was: the exact sign test's 1.0)
    r = win_rate(scores_of(0, 10, 0))
    assert r.p_value == 1.0 and r.value == 0.5 and r.low < 0.5 < r.high


def test_win_rate_is_the_matched_pairs_score_interval_and_mcnemar_test():
    """Wins and losses are the discordant pairs, ties concordant: p is statsmodels' uncorrected McNemar test, and
    the interval (Tango's, halved) excludes 0.5 exactly when p < 0.05, over every (wins, ties, losses) to n = 30."""
    from statsmodels.stats.contingency_tables import mcnemar

    r = win_rate(scores_of(70, 20, 10))
    assert r.p_value == pytest.approx(mcnemar([[10, 10], [70, 10]], exact=False, correction=False).pvalue, rel=1e-12)
    for n in range(1, 31):
        for w in range(n + 1):
            for lo in range(n + 1 - w):
                wr = win_rate(scores_of(w, n - w - lo, lo))
                assert (wr.low > 0.5 or wr.high < 0.5) == (wr.p_value < 0.05), (w, n - w - lo, lo)


def test_planted_length_only_preference_is_flagged_and_not_a_win():
    """The issue's planted set: the longer answer wins 299 of 300. The raw rate reads a clear win; the
    length-controlled rate (Firth, profile interval) holds 0.5, so the judged row is no change and a gate rule that
    asks for any improvement does not pass; the preference is flagged as explained by length."""
    from tunebench.compare.rows import judged_row
    from tunebench.evals.results import Metric
    from tunebench.gate.verdict import evaluate_gate

    rng = np.random.default_rng(0)
    base_len = rng.integers(50, 150, size=300).astype(float)
    tuned_len = base_len + rng.normal(40, 40, size=300)
    s = np.where(tuned_len > base_len, 1.0, -1.0)
    s[int(rng.integers(300))] *= -1  # the one prompt where the longer answer lost
    raw, lc = win_rate(s), length_controlled(s, tuned_len, base_len)
    assert raw.value > 0.8 and raw.low > 0.5 and raw.p_value < 1e-10
    assert lc.low < 0.5 < lc.high and lc.p_value > 0.05 and lc.slope > 5
    assert pairwise.explained_by_length(raw, lc)
    details = {
        "paired": "win_rate",
        "p_value": raw.p_value,
        "mde": raw.mde,
        "lc_win_rate": lc.value,
        "lc_ci": [lc.low, lc.high],
        "lc_p_value": lc.p_value,
        "lc_method": lc.method,
        "valid": True,
    }
    m = Metric("judge/heldout/win_rate", raw.value, True, raw.n, ci_low=raw.low, ci_high=raw.high, details=details)
    row = judged_row(m)
    assert row.verdict == "no significant change" and row.details["explained_by_length"]
    assert row.tuned == lc.value and row.details["raw_win_rate"] == raw.value
    gate = evaluate_gate(_one_row(row), [{"metric": "judge/*/win_rate", "min_improvement": 0}])
    assert gate.status != "pass"


def _one_row(row):
    from tunebench.compare.comparison import Comparison

    return Comparison("base", "tuned", 0.05, 2000, 0, [row])


def test_firth_matches_its_closed_form_and_maximum_likelihood():
    """Without a length term Firth's estimate is (k + 1/2) / (n + 1) (Jeffreys); with a length term and no
    separation it is close to the unpenalized maximum likelihood (statsmodels' Logit) at large n."""
    import statsmodels.api as sm

    s = scores_of(13, 4, 3)
    lc = length_controlled(s, np.full(20, 50.0), np.full(20, 40.0))  # equal differences: intercept only
    assert lc.value == pytest.approx((13 + 4 / 2 + 0.5) / (20 + 1), abs=1e-6) and lc.slope == 0
    rng = np.random.default_rng(5)
    d = rng.normal(20, 30, size=3000)
    x = np.tanh(d / d.std())
    s = np.where(rng.random(3000) < 1 / (1 + np.exp(-(0.4 + 1.2 * x))), 1.0, -1.0)
    lc = length_controlled(s, d + 100, np.full(3000, 100.0))
    ml = sm.Logit((s + 1) / 2, sm.add_constant(x)).fit(disp=0).params
    assert lc.value == pytest.approx(1 / (1 + np.exp(-ml[0])), abs=2e-3) and lc.slope == pytest.approx(ml[1], abs=0.02)


def test_length_controlled_interval_and_test_agree_and_clusters_widen():
    rng = np.random.default_rng(8)
    for _ in range(25):
        n = int(rng.integers(10, 60))
        d = rng.normal(10, 30, size=n)
        s = rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.3, 0.2, 0.5])
        lc = length_controlled(s, d + 100, np.full(n, 100.0))
        assert (lc.low > 0.5 or lc.high < 0.5) == (lc.p_value < 0.05)
    s = np.repeat(scores_of(40, 10, 20), 2)  # two turns of each question agree
    d = np.repeat(rng.normal(0, 30, size=70), 2)
    flat = length_controlled(s, d + 100, np.full(140, 100.0))
    grouped = length_controlled(s, d + 100, np.full(140, 100.0), clusters=[str(k // 2) for k in range(140)])
    assert grouped.design_effect > 1.5 and (grouped.high - grouped.low) > 1.2 * (flat.high - flat.low)
