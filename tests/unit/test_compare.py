"""tunebench.compare.runs on synthetic base/tuned Results.

Verdicts, methods, refusals, JSON round-trip, leaderboard."""

from __future__ import annotations

import copy
import json

import pytest
import synthetic  # tests/fixtures/synthetic.py (on sys.path via conftest)

from tunebench.compare.comparison import Comparison, Leaderboard, compare, leaderboard
from tunebench.compare.runs import compare_run, leaderboard_from_runs
from tunebench.core import matched_pairs
from tunebench.core.errors import ComparisonError
from tunebench.core.multiplicity import benjamini_hochberg, holm
from tunebench.evals.results import Metric, Results


@pytest.fixture(scope="module")
def improved() -> Comparison:
    return compare(*synthetic.make_pair("improved"))


def test_improvement_verdicts_methods_and_intervals(improved):
    ppl = improved.row("perplexity/test")
    assert ppl.verdict == "improved" and ppl.delta < 0 and ppl.ci_high < 0 and ppl.p_value < 0.01
    assert ppl.n == 60 and ppl.unit == "conversations" and "paired studentized bootstrap over 60 items" in ppl.method
    assert ppl.df == 59  # a t-type interval: the MDE and the gate's items needed read Student's t
    assert ppl.rel_delta == pytest.approx(ppl.delta / ppl.base)
    # Every metric carries n and an interval of its delta.
    for r in improved.rows:
        assert r.n > 0 and r.ci_low is not None and r.ci_high is not None and r.p_value is not None, r
        assert r.ci_low <= r.delta + 1e-12 and r.delta <= r.ci_high + 1e-12, r


def test_binary_items_use_mcnemar_and_samples_group_by_prompt(improved):
    """Pass/fail rows: Tango's interval with the McNemar score test it inverts (statsmodels' uncorrected McNemar);
    a probe's repeated samples are clustered by prompt, and the row counts prompts, not samples."""
    from statsmodels.stats.contingency_tables import mcnemar

    acc = improved.row("lm_eval/tunebench_facts_mc/acc")
    b, c = acc.details["discordant"]["base_only"], acc.details["discordant"]["tuned_only"]
    assert acc.method.startswith("Tango score interval and McNemar score test")
    assert acc.p_value == pytest.approx(mcnemar([[20, b], [c, 19]], exact=False, correction=False).pvalue, rel=1e-12)
    assert acc.df is None  # a score interval: read on the normal scale
    seed = improved.row("probes/default/seed/pass_rate")
    assert "clustered by 5 prompts (samples grouped per prompt" in seed.method and seed.details["samples"] == 15
    assert seed.n == 5 and seed.details["design_effect"] >= 1


def test_missing_items_fall_back_to_unpaired_welch_and_say_so(improved):
    """Without items: Welch's t from the two recorded stderrs (equal stderrs and n = 40 each: 78 df), not z."""
    from scipy.stats import t, ttest_ind_from_stats

    em = improved.row("lm_eval/tunebench_arith_gen/exact_match")
    assert em.method.startswith("unpaired Welch interval and test")
    se = 0.068 * 2**0.5
    q = t.ppf(0.975, 78)
    assert em.df == pytest.approx(78)
    assert (em.ci_low, em.ci_high) == pytest.approx((em.delta - q * se, em.delta + q * se), abs=1e-5)
    sd = 0.068 * 40**0.5  # stderr * sqrt(n): the reference test from the same summary statistics
    ref = ttest_ind_from_stats(em.tuned, sd, 40, em.base, sd, 40, equal_var=False)
    assert em.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_planted_regression_is_regressed():
    comp = compare(*synthetic.make_pair("regressed"))
    assert comp.row("perplexity/test").verdict == "regressed"
    assert comp.row("lm_eval/tunebench_facts_mc/acc").verdict == "regressed"
    assert comp.counts()["regressed"] == 2


def test_identical_results_change_nothing():
    comp = compare(*synthetic.make_pair("same"))
    for r in comp.rows:
        assert r.delta == 0 and r.p_value == pytest.approx(1.0), r
        assert r.verdict == ("no significant change" if r.n >= 10 else "too few samples"), r


def test_verdict_reads_higher_is_better_from_the_metric():
    def one(value_items, hib):
        res = Results(label="x", model={}, inputs={})
        res.add(
            Metric(
                name="custom/score", value=sum(value_items) / len(value_items), higher_is_better=hib, n=len(value_items)
            ),
            [{"id": str(k), "num": v, "den": 1} for k, v in enumerate(value_items)],
        )
        return res

    low, high = [0.1 * (k % 5) for k in range(50)], [0.1 * (k % 5) + 0.2 for k in range(50)]
    assert compare(one(low, True), one(high, True)).row("custom/score").verdict == "improved"
    assert compare(one(low, False), one(high, False)).row("custom/score").verdict == "regressed"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("test_tokens", "0000000000000000"),
        ("template_sha", "llama-3.1-aaaa"),
        ("probe_sets", {"default": "probes-v2"}),
        ("sampling", {"greedy": {"temperature": 0.7}}),
    ],
)
def test_refuses_results_on_different_inputs(key, value):
    base, tuned = synthetic.make_pair("improved")
    tuned.inputs[key] = value
    with pytest.raises(ComparisonError) as e:
        compare(base, tuned)
    msg = str(e.value)
    assert f"inputs.{key}" in msg and json.dumps(value, sort_keys=True)[:20] in msg
    assert json.dumps(base.inputs[key], sort_keys=True)[:20] in msg


def test_refuses_other_base_model_or_template():
    base, tuned = synthetic.make_pair("improved")
    tuned.model["base"]["identity"] = "sha256:other"
    with pytest.raises(ComparisonError, match="model.base.identity.*sha256:5be1a0c2.*sha256:other"):
        compare(base, tuned)
    base, tuned = synthetic.make_pair("improved")
    tuned.model["template"] = "llama-3.1"
    with pytest.raises(ComparisonError, match="model.template"):
        compare(base, tuned)


def test_refuses_items_that_do_not_pair():
    base, tuned = synthetic.make_pair("improved")
    tuned.items["perplexity/test"] = tuned.items["perplexity/test"][:-1]
    with pytest.raises(ComparisonError, match="perplexity/test: .*1 only in base"):
        compare(base, tuned)


def test_metrics_on_one_side_are_listed_not_compared():
    base, tuned = synthetic.make_pair("improved")
    tuned.metrics = [m for m in tuned.metrics if m.name != "lm_eval/tunebench_arith_gen/exact_match"]
    comp = compare(base, tuned)
    assert comp.only_in_base == ["lm_eval/tunebench_arith_gen/exact_match"]
    with pytest.raises(KeyError, match="known: perplexity/test"):
        comp.row("lm_eval/tunebench_arith_gen/exact_match")


def test_headlines_exclude_per_probe_breakdowns(improved):
    heads = [r.metric for r in improved.headline_rows()]
    assert "probes/default/greedy/pass_rate" in heads and "perplexity/test" in heads
    assert not any("fibonacci" in h for h in heads)


def test_pure_deterministic_and_order_independent():
    base, tuned = synthetic.make_pair("improved")
    before = (copy.deepcopy(base.to_dict()), copy.deepcopy(tuned.to_dict()))
    first = compare(base, tuned, seed=3)
    assert (base.to_dict(), tuned.to_dict()) == before
    tuned.metrics.reverse()
    again = compare(base, tuned, seed=3)
    assert first.to_dict() == again.to_dict()


def test_json_round_trip(improved):
    text = json.dumps(improved.to_dict(), allow_nan=False)
    back = Comparison.from_dict(json.loads(text))
    assert back == improved
    with pytest.raises(ValueError, match="schema"):
        Comparison.from_dict({**improved.to_dict(), "schema": "other/1"})


def test_assertion_helpers_print_values_delta_and_interval(improved):
    ppl = improved.row("perplexity/test")
    ppl.assert_improved().assert_not_regressed().assert_value("<", ppl.base).assert_value("<", 0, side="delta")
    em = improved.row("lm_eval/tunebench_arith_gen/exact_match")
    with pytest.raises(AssertionError) as e:
        em.assert_improved()
    msg = str(e.value)
    assert "base 0.25 -> tuned 0.3" in msg and "delta +0.05" in msg and "95% CI [-0.1415, +0.2415]" in msg
    with pytest.raises(AssertionError, match=r"expected tuned >= 0.5, got 0.3"):
        em.assert_value(">=", 0.5)
    with pytest.raises(ValueError, match="unknown operator"):
        em.assert_value("~", 1)


def test_leaderboard_compares_each_adapter_with_one_base():
    base, good = synthetic.make_pair("improved")
    bad = synthetic.make_results("tuned", "regressed")
    board = leaderboard(base, {"good": good, "bad": bad}, n_boot=300)
    assert list(board.comparisons) == ["good", "bad"]
    rows = {r["metric"]: r for r in board.rows()}
    assert rows["perplexity/test"]["adapters"]["good"].verdict == "improved"
    assert rows["perplexity/test"]["adapters"]["bad"].verdict == "regressed"
    assert not any("fibonacci" in m for m in board.metrics)
    assert Leaderboard.from_dict(json.loads(json.dumps(board.to_dict()))).to_dict() == board.to_dict()
    other = synthetic.make_results("tuned", "improved")
    other.model["base"]["identity"] = "sha256:other"
    with pytest.raises(ComparisonError, match="adapter 'other'"):
        leaderboard(base, {"good": good, "other": other})


def test_leaderboard_ranks_on_the_primary_metric_and_compares_adapters_pairwise():
    """Issue 40 item 8: ranked best first on the primary metric (its direction from the data), and every pair of
    adapters compared on it with the same paired statistics as each against the base (same items on both sides)."""
    base, good = synthetic.make_pair("improved")
    bad = synthetic.make_results("tuned", "regressed")
    twin = synthetic.make_results("tuned", "improved")  # the same adapter evaluated again: indistinguishable
    board = leaderboard(base, {"bad": bad, "good": good, "twin": twin}, n_boot=400)
    assert board.primary == "perplexity/test" and board.ranking == ["good", "twin", "bad"]  # lower is better
    pairs = {(v.first, v.second): v for v in board.versus}
    assert list(pairs) == [("good", "twin"), ("good", "bad"), ("twin", "bad")]
    gb = pairs[("good", "bad")]
    paired = compare(good, bad, n_boot=400)  # the good adapter as "base", the bad one as "tuned": the same statistics
    direct = paired.row("perplexity/test")
    assert (gb.row.delta, gb.row.ci_low, gb.row.ci_high, gb.row.p_value) == (
        direct.delta,
        direct.ci_low,
        direct.ci_high,
        direct.p_value,
    )
    assert gb.row.n == 60 and gb.row.unit == "conversations" and "paired studentized bootstrap" in gb.row.method
    assert gb.row.delta == pytest.approx(
        board.comparisons["bad"].row("perplexity/test").tuned - good.metric("perplexity/test").value
    )
    assert [v.p_holm for v in board.versus] == holm([v.row.p_value for v in board.versus])  # one family
    assert gb.verdict == "good better" and pairs[("twin", "bad")].verdict == "twin better"
    same = pairs[("good", "twin")]
    assert same.row.delta == 0 and same.verdict == "no significant difference"
    assert Leaderboard.from_dict(json.loads(json.dumps(board.to_dict()))).to_dict() == board.to_dict()

    acc = leaderboard(base, {"bad": bad, "good": good}, n_boot=400, primary="lm_eval/tunebench_facts_mc/acc")
    assert acc.ranking == ["good", "bad"]  # higher is better
    (v,) = acc.versus
    assert v.verdict == "good better" and "McNemar" in v.row.method and v.row.details["discordant"]["base_only"] > 0
    with pytest.raises(ComparisonError, match="no metric 'nope' to rank the adapters by; known: .*perplexity/test"):
        leaderboard(base, {"good": good}, primary="nope")
    alone = leaderboard(base, {"good": good}, n_boot=400)
    assert alone.ranking == ["good"] and alone.versus == []


def test_runs_on_disk(tmp_path):
    a = synthetic.write_run(tmp_path / "a", *synthetic.make_pair("improved"), alpha=0.1, n_boot=400)
    b = synthetic.write_run(tmp_path / "b", *synthetic.make_pair("regressed"))
    comp = compare_run(a)
    assert comp.alpha == 0.1 and comp.n_boot == 400
    board = leaderboard_from_runs([a, b])
    assert list(board.comparisons) == ["a", "b"]
    other_base = synthetic.make_results("base")
    other_base.inputs["test_tokens"] = "ffff"
    c = synthetic.write_run(tmp_path / "c", other_base, synthetic.make_results("tuned"))
    with pytest.raises(ComparisonError, match="different base"):
        leaderboard_from_runs([a, c])
    (b / "eval" / "tuned" / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="tuned.*results.json: missing"):
        compare_run(b)


def test_benjamini_hochberg_matches_scipy_and_keeps_missing_p_values_out():
    from scipy.stats import false_discovery_control

    ps = [0.001, 0.04, 0.03, 0.5, 0.2, 0.04, 0.9]
    assert benjamini_hochberg(ps) == pytest.approx(list(false_discovery_control(ps, method="bh")))
    with_none = benjamini_hochberg([0.01, None, 0.04])
    assert with_none[1] is None and with_none[0] == pytest.approx(0.02) and with_none[2] == pytest.approx(0.04)
    assert benjamini_hochberg([]) == []


def _subject_items(b_only: int, t_only: int, n: int = 100) -> tuple[list[dict], list[dict]]:
    """n paired documents of which b_only pass on base alone and t_only on tuned alone (the rest agree)."""
    base = [1] * b_only + [0] * t_only + [k % 2 for k in range(n - b_only - t_only)]
    tuned = [0] * b_only + [1] * t_only + base[b_only + t_only :]
    return (
        [{"id": str(k), "num": v, "den": 1} for k, v in enumerate(base)],
        [{"id": str(k), "num": v, "den": 1} for k, v in enumerate(tuned)],
    )


def _mmlu_like(subjects: dict[str, tuple[int, int]]) -> tuple[Results, Results]:
    """A group metric ``lm_eval/mmlu/acc`` with one breakdown row per subject, as evals.lm_eval.groups names them."""
    sides = [Results(label=label, model={}, inputs={}) for label in ("base", "tuned")]
    pooled: list[list[dict]] = [[], []]
    for subject, (b, c) in subjects.items():
        for k, items in enumerate(_subject_items(b, c)):
            sides[k].add(
                Metric(
                    name=f"lm_eval/mmlu/{subject}/acc",
                    value=sum(i["num"] for i in items) / len(items),
                    higher_is_better=True,
                    n=len(items),
                    group="lm_eval",
                ),
                items,
            )
            pooled[k] += [{**i, "id": f"{subject}/{i['id']}"} for i in items]
    for side, items in zip(sides, pooled, strict=True):
        side.add(
            Metric(
                name="lm_eval/mmlu/acc",
                value=sum(i["num"] for i in items) / len(items),
                higher_is_better=True,
                n=len(items),
                group="lm_eval",
            ),
            items,
        )
    return sides[0], sides[1]


def test_group_subjects_carry_bh_adjusted_p_and_counts_use_them():
    """Two of 57 subjects below an uncorrected p of 0.05 (b=12, c=3: p = 0.020) are what chance gives; after
    Benjamini-Hochberg they are no change. A subject with a real loss (b=30, c=0) stays regressed. The family's
    intervals are false-coverage-rate adjusted (level 1 - 1 x 0.05 / 57: one rejection), so each excludes 0 exactly
    where the adjusted p is below 0.05."""
    subjects = {f"mmlu_s{k:02d}": (2, 2) for k in range(54)}
    subjects |= {"mmlu_chance_a": (12, 3), "mmlu_chance_b": (12, 3), "mmlu_real": (30, 0)}
    comp = compare(*_mmlu_like(subjects), n_boot=200)
    chance = comp.row("lm_eval/mmlu/mmlu_chance_a/acc")
    assert chance.p_value == pytest.approx(matched_pairs.tango_interval(12, 3, 100)[2]) and chance.p_value < 0.05
    assert chance.family == "lm_eval/mmlu/acc" and chance.p_adjusted > 0.05
    assert chance.verdict == "no significant change" and not chance.significant
    real = comp.row("lm_eval/mmlu/mmlu_real/acc")
    assert real.p_adjusted < 0.05 and real.verdict == "regressed"
    members = [r for r in comp.rows if r.family == "lm_eval/mmlu/acc"]
    assert len(members) == 57 and all(r.ci_alpha == pytest.approx(0.05 / 57) for r in members)
    assert all((r.ci_low > 0 or r.ci_high < 0) == (r.p_adjusted < 0.05) for r in members)
    assert "99.9" in chance.describe()  # the interval's own level, not the family's alpha
    group = comp.row("lm_eval/mmlu/acc")
    assert group.family is None and group.p_adjusted is None and group.headline and group.ci_alpha is None
    assert comp.counts()["regressed"] == 1 + (group.verdict == "regressed")
    back = Comparison.from_dict(json.loads(json.dumps(comp.to_dict())))
    assert back.row("lm_eval/mmlu/mmlu_chance_a/acc").p_adjusted == chance.p_adjusted


def test_counts_leave_out_rows_too_few_to_judge(improved):
    """The synthetic probe rows rest on 5 prompts (per probe: 1 prompt of 1 or 3 samples), under report.min_n = 10:
    flagged in the report and by the gate, so not counted as a verdict; min_n is one setting of the comparison."""
    counts = improved.counts()
    probes = [r for r in improved.rows if r.group == "probes"]
    assert len(probes) == 12 and all(r.n < 10 and r.verdict == "too few samples" for r in probes)
    assert counts["too few samples"] == 12
    assert counts["improved"] + counts["regressed"] + counts["no significant change"] == len(improved.rows) - 12
    loose = compare(*synthetic.make_pair("improved"), min_n=5)
    assert loose.min_n == 5 and loose.row("probes/default/seed/pass_rate").verdict != "too few samples"
    assert all(r.min_n == 5 for r in loose.rows)


def test_a_comparison_written_before_families_still_counts_flagged_rows_apart(improved):
    old = improved.to_dict()
    for r in old["rows"]:
        r.pop("family"), r.pop("p_adjusted")
    back = Comparison.from_dict(old)
    assert back.counts() == improved.counts()
    assert back.row("probes/default/seed/fibonacci/pass_rate").family == "probes/default/seed/pass_rate"
