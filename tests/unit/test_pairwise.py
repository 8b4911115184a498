"""Win rate, sign test and length-controlled win rate on planted verdicts of known outcome."""

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
    lc = length_controlled(s, tuned_len, base_len, n_boot=300)
    assert raw.value > 0.7
    assert abs(lc.value - 0.5) < 0.08
    assert lc.low < 0.5 < lc.high
    assert lc.slope > 1


def test_length_control_keeps_a_real_win_at_equal_lengths():
    rng = np.random.default_rng(2)
    n = 400
    lengths = rng.integers(50, 150, size=n).astype(float)
    s = np.where(rng.random(n) < 0.8, 1.0, -1.0)
    lc = length_controlled(s, lengths + rng.normal(0, 5, n), lengths, n_boot=300)
    assert lc.value == pytest.approx(0.8, abs=0.05) and lc.low > 0.5


def test_length_control_stays_finite_when_every_prompt_goes_one_way():
    lc = length_controlled(np.ones(20), np.arange(20.0) + 5, np.arange(20.0), n_boot=50)
    assert 0.9 < lc.value <= 1.0 and np.isfinite(lc.low)


def test_sign_test_without_decided_prompts_is_one():
    assert pairwise.sign_test(0, 0) == 1.0
    assert win_rate(scores_of(0, 10, 0)).p_value == 1.0
