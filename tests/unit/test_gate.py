"""The release gate: rule semantics, rules-file validation, and gate_main's exit codes on run folders."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import synthetic  # tests/fixtures/synthetic.py (on sys.path via conftest)

from tunebench.compare.comparison import compare
from tunebench.compare.rule import glob_to_regex
from tunebench.compare.runs import run_settings
from tunebench.core.errors import EXIT_GATE_INCONCLUSIVE, GateError
from tunebench.gate import verdict as verdict_module
from tunebench.gate.rules import DEFAULT_RULES, load_rules, parse_rules
from tunebench.gate.verdict import GateVerdict, artifact_comparisons, evaluate_gate, gate_main, judge_run


@pytest.fixture(scope="module")
def comparisons():
    return {s: compare(*synthetic.make_pair(s), n_boot=500) for s in ("improved", "regressed", "same")}


def _run(tmp_path, scenario="improved", rules=None, **kw):
    run = synthetic.write_run(tmp_path / scenario, *synthetic.make_pair(scenario), n_boot=500, **kw)
    if rules is not None:
        path = tmp_path / "rules.yaml"
        path.write_text(rules, encoding="utf-8")
        rules = path
    out = io.StringIO()
    code = gate_main(run, rules, stream=out)
    return code, out.getvalue(), run


ARTIFACT_RULES = (
    "- metric: perplexity/test\n  max_regression_rel: 0.05\n"
    "- metric: perplexity/test\n  artifact: q8_0\n  max_regression_rel: 0.01\n"
)


def _artifact_run(tmp_path):
    """A run folder with an evaluated export (scoring as the adapter) and rules that read it too."""
    base, tuned = synthetic.make_pair("improved")
    run = synthetic.write_run(tmp_path / "run", base, tuned, n_boot=300, gate_rules=str(tmp_path / "rules.yaml"))
    tuned.save(run / "eval" / "gguf-q8_0" / "results.json")
    (tmp_path / "rules.yaml").write_text(ARTIFACT_RULES, encoding="utf-8")
    return run


def _nothing_computed_again(monkeypatch):
    def computed_again(*args, **kwargs):
        raise AssertionError("the gate computed a comparison it was given")

    for name in ("compare", "compare_artifacts", "artifact_comparisons", "load_run_results", "load_artifact_results"):
        monkeypatch.setattr(verdict_module, name, computed_again)


def test_judge_run_given_the_comparisons_computes_none_and_decides_the_same(tmp_path, monkeypatch):
    run = _artifact_run(tmp_path)
    computed = judge_run(run)
    settings = run_settings(run)
    base, tuned = synthetic.make_pair("improved")
    comparison = compare(base, tuned, settings["alpha"], settings["n_boot"], min_n=settings["min_n"])
    artifacts = artifact_comparisons(run)
    _nothing_computed_again(monkeypatch)
    given = judge_run(run, comparison=comparison, artifacts=artifacts)
    assert given.to_dict() == computed.to_dict()
    assert [r.metric for r in given.rows] == ["perplexity/test", "perplexity/test [q8_0 vs adapter]"]


def test_finish_hands_the_gate_its_comparisons(tmp_path, monkeypatch):
    from tunebench.app.pipeline import finish
    from tunebench.core.config import read_run_config

    run = _artifact_run(tmp_path)
    computed = judge_run(run)
    _nothing_computed_again(monkeypatch)
    result = finish(run, read_run_config(run))
    assert result.gate_code == computed.exit_code == 0
    assert json.loads((run / "gate.json").read_text(encoding="utf-8")) == json.loads(json.dumps(computed.to_dict()))


# ----------------------------------------------------------------------------- exit codes


def test_passing_run_exits_0_and_writes_gate_json(tmp_path):
    code, out, run = _run(tmp_path, "improved", rules="- metric: perplexity/test\n  max_regression_rel: 0.05\n")
    assert code == 0, out
    assert "gate PASSED" in out and "perplexity/test" in out
    verdict = GateVerdict.from_dict(json.loads((run / "gate.json").read_text(encoding="utf-8")))
    assert verdict.passed and verdict.status == "pass" and verdict.exit_code == 0
    assert not list(run.glob(".gate.json.*"))  # atomic write left no temp file


def test_default_rules_on_small_samples_are_inconclusive_exit_3(tmp_path):
    # perplexity concludes (60 conversations, a 14% drop); accuracy does not (40 paired documents, 1 discordant:
    # Tango's interval [-0.065, +0.129] still holds a 5-point loss); exact match has only stderrs (Welch's interval
    # of ±0.19); the probes rest on 5 prompts, under report.min_n = 10, flagged "too few samples" by the report, so
    # their rule is inconclusive whatever the interval says. The release is not passed on that evidence.
    code, out, run = _run(tmp_path, "improved")
    assert code == EXIT_GATE_INCONCLUSIVE == 3, out
    verdict = GateVerdict.from_dict(json.loads((run / "gate.json").read_text(encoding="utf-8")))
    assert verdict.status == "inconclusive" and not verdict.passed and verdict.rules_source == str(DEFAULT_RULES)
    by_metric = {r.metric: r for r in verdict.rows}
    assert by_metric["perplexity/test"].status == "pass"
    acc = by_metric["lm_eval/tunebench_facts_mc/acc"]
    assert acc.status == "inconclusive" and acc.items_needed > acc.n == 40
    em = by_metric["lm_eval/tunebench_arith_gen/exact_match"]
    assert em.status == "inconclusive" and em.items_needed > em.n == 40
    greedy = by_metric["probes/default/greedy/pass_rate"]
    assert greedy.status == "inconclusive" and greedy.items_needed >= 10 and greedy.n == 5
    assert "too few samples: n=5 < report.min_n=10" in greedy.reason
    assert "gate INCONCLUSIVE" in out and "paired items would conclude" in out


def test_rules_that_match_nothing_are_inconclusive_exit_3(tmp_path):
    rules = "- metric: lm_eval/mmlu/acc\n  max_regression: 0.05\n  optional: true\n"
    code, out, run = _run(tmp_path, "improved", rules=rules)
    assert code == EXIT_GATE_INCONCLUSIVE, out
    assert "gate INCONCLUSIVE: no rule matched any metric: nothing was checked" in out and "PASSED" not in out
    verdict = GateVerdict.from_dict(json.loads((run / "gate.json").read_text(encoding="utf-8")))
    assert verdict.status == "inconclusive" and not verdict.passed and verdict.exit_code == 3
    assert verdict.reason == "no rule matched any metric: nothing was checked"
    assert [r.status for r in verdict.rows] == ["skipped"]


def test_skipped_rules_beside_a_judged_one_do_not_block_a_pass(comparisons):
    verdict = evaluate_gate(
        comparisons["improved"],
        [
            {"metric": "perplexity/test", "max_regression_rel": 0.05},
            {"metric": "lm_eval/mmlu/acc", "max_regression": 0.05, "optional": True},
        ],
    )
    assert verdict.status == "pass" and verdict.reason is None
    assert [r.status for r in verdict.rows] == ["pass", "skipped"]


def test_planted_regression_exits_1(tmp_path):
    code, out, run = _run(tmp_path, "regressed")
    assert code == 1, out
    verdict = json.loads((run / "gate.json").read_text(encoding="utf-8"))
    failed = {r["metric"] for r in verdict["rows"] if r["status"] == "fail"}
    assert failed == {"perplexity/test", "lm_eval/tunebench_facts_mc/acc"}  # 14 of 40 documents lost
    assert "FAIL" in out and "lies entirely beyond" in out


def test_missing_metric_exits_2_and_writes_no_verdict(tmp_path, capsys):
    code, _, run = _run(tmp_path, rules="- metric: perplexity/validation\n  max_regression: 0\n")
    assert code == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "perplexity/validation" in err and "optional: true" in err
    assert not (run / "gate.json").exists()  # invalid input writes nothing (issue 37): a verdict there would stay


def test_bad_yaml_exits_2_with_file_and_line(tmp_path, capsys):
    code, _, _ = _run(tmp_path, rules="- metric: perplexity/test\n  max_regression: [0\n")
    assert code == 2
    err = capsys.readouterr().err
    assert "rules.yaml line 3" in err and "not valid YAML" in err


def test_unknown_key_exits_2_with_line_and_suggestion(tmp_path, capsys):
    rules = (
        "rules:\n  - metric: perplexity/test\n    max_regression: 0\n"
        "  - metric: perplexity/test\n    max_regresion: 0\n"
    )
    code, _, _ = _run(tmp_path, rules=rules)
    assert code == 2
    err = capsys.readouterr().err
    assert "rules.yaml line 4" in err and "did you mean 'max_regression'" in err


def test_mismatched_fingerprints_exit_2(tmp_path, capsys):
    base, tuned = synthetic.make_pair("improved")
    tuned.inputs["test_tokens"] = "ffffffffffffffff"
    run = synthetic.write_run(tmp_path / "mismatch", base, tuned)
    assert gate_main(run, stream=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "inputs.test_tokens" in err and "ffffffffffffffff" in err and "9f2c41d07a3b5e66" in err


def test_missing_results_exit_2(tmp_path, capsys):
    run = synthetic.write_run(tmp_path / "r", *synthetic.make_pair("improved"))
    (run / "eval" / "base" / "results.json").unlink()
    assert gate_main(run, stream=io.StringIO()) == 2
    assert "base" in capsys.readouterr().err
    assert gate_main(tmp_path / "nope", stream=io.StringIO()) == 2


def test_rules_from_run_config_and_shipped_name(tmp_path):
    rules = tmp_path / "strict.yaml"
    rules.write_text("- metric: perplexity/test\n  min_improvement_rel: 0.5\n", encoding="utf-8")
    run = synthetic.write_run(tmp_path / "cfg", *synthetic.make_pair("improved"), gate_rules=str(rules))
    assert gate_main(run, stream=io.StringIO()) == 1  # the config's rules, not the default
    assert gate_main(run, "default", stream=io.StringIO()) == 3  # 40 documents cannot exclude a 5-point drop


# ----------------------------------------------------------------------------- rule semantics


def _one(comparison, rule: dict):
    verdict = evaluate_gate(comparison, [rule])
    assert len(verdict.rows) == 1
    return verdict.rows[0]


def _binary_comparison(base: list[int], tuned: list[int]):
    from tunebench.evals.results import Metric, Results

    sides = []
    for label, passes in (("base", base), ("tuned", tuned)):
        res = Results(label=label, model={"base": {"ref": "m"}}, inputs={})
        items = [{"id": f"d{k}", "num": int(v), "den": 1} for k, v in enumerate(passes)]
        res.add(
            Metric(
                name="lm_eval/t/acc",
                value=sum(passes) / len(passes),
                higher_is_better=True,
                n=len(passes),
                unit="documents",
                aggregate="mean",
                group="lm_eval",
                items="lm_eval/t/acc",
            ),
            items,
        )
        sides.append(res)
    return compare(*sides, n_boot=200)


def test_clear_regression_fails():
    rng = np.random.default_rng(1)
    base = (rng.random(400) < 0.6).astype(int)
    tuned = base.copy()
    tuned[np.flatnonzero(base == 1)[:80]] = 0  # 20 points lost
    row = _one(_binary_comparison(list(base), list(tuned)), {"metric": "lm_eval/t/acc", "max_regression": 0.05})
    assert row.status == "fail" and row.ci_high < -0.05


def test_tiny_n_with_a_large_drop_is_inconclusive_not_pass():
    # 3 of 4 lost: a 75-point drop on 4 documents; the interval cannot exclude no change at all.
    row = _one(_binary_comparison([1, 1, 1, 0], [0, 0, 1, 0]), {"metric": "lm_eval/t/acc", "max_regression": 0.02})
    assert row.status == "inconclusive" and row.ci_low < -0.02 < row.ci_high
    assert row.items_needed > 4 and "straddles" in row.reason
    # three documents that agree: the bootstrap would give [0, 0]; the paired score interval does not pass it
    row = _one(_binary_comparison([1, 1, 1], [1, 1, 1]), {"metric": "lm_eval/t/acc", "max_regression": 0.02})
    assert row.status == "inconclusive" and row.ci_low < -0.3


def test_large_n_with_true_zero_change_passes_a_2_point_margin():
    rng = np.random.default_rng(2)
    base = (rng.random(20000) < 0.6).astype(int)
    tuned = base.copy()
    tuned[np.flatnonzero(base == 1)[:200]] = 0  # 400 of 20000 documents flip, half each way: no change
    tuned[np.flatnonzero(base == 0)[:200]] = 1
    row = _one(_binary_comparison(list(base), list(tuned)), {"metric": "lm_eval/t/acc", "max_regression": 0.02})
    assert abs(row.delta) < 0.005 and row.status == "pass" and row.ci_low > -0.02
    assert row.mde is not None and row.mde < 0.02


def test_min_improvement_is_superiority_and_margins_scale_relative(comparisons):
    imp = comparisons["improved"]
    ppl = imp.row("perplexity/test")  # lower is better: improvement = base - tuned
    gain_low, gain_high = -ppl.ci_high, -ppl.ci_low
    assert _one(imp, {"metric": "perplexity/test", "min_improvement": gain_low * 0.9}).status == "pass"
    assert _one(imp, {"metric": "perplexity/test", "min_improvement": gain_high * 1.1}).status == "fail"
    mid = _one(imp, {"metric": "perplexity/test", "min_improvement": (gain_low + gain_high) / 2})
    assert mid.status == "inconclusive" and mid.items_needed is None or mid.items_needed > mid.n
    assert _one(imp, {"metric": "perplexity/test", "min_improvement_rel": 0.05}).status == "pass"
    assert _one(imp, {"metric": "perplexity/test", "min_improvement_rel": 0.5}).status == "fail"
    # greedy pass rate rises 0.6 -> 1.0 but on 5 samples: a 10-point gain is not shown, nor excluded.
    row = _one(imp, {"metric": "probes/default/greedy/pass_rate", "min_improvement": 0.1})
    assert row.status == "inconclusive"


def test_direction_override_and_relative_regression(comparisons):
    imp = comparisons["improved"]
    rule = {"metric": "perplexity/test", "max_regression": 0}
    assert _one(imp, rule).status == "pass"
    assert _one(imp, {**rule, "direction": "higher"}).status == "fail"
    assert _one(comparisons["regressed"], {"metric": "perplexity/test", "max_regression_rel": 0.3}).status == "pass"
    assert _one(comparisons["regressed"], {"metric": "perplexity/test", "max_regression_rel": 0.05}).status == "fail"


def test_metric_without_interval_is_inconclusive(comparisons):
    row = comparisons["same"].row("lm_eval/tunebench_arith_gen/exact_match")
    row = type(row)(**{**row.__dict__, "ci_low": None, "ci_high": None})
    from tunebench.compare.rows import judge
    from tunebench.compare.rule import parse_rule

    out = judge(parse_rule({"metric": row.metric, "max_regression": 0.5}, "r"), row)
    assert out.status == "inconclusive" and "no interval" in out.reason


def test_require_significant_is_refused_with_migration_hint():
    with pytest.raises(GateError, match="'require_significant' was removed.*max_regression_rel: 0.05"):
        parse_rules("- metric: a\n  max_regression: 0\n  require_significant: true\n", "old.yaml")


def test_glob_matches_within_segments_and_optional_skips(comparisons):
    same = comparisons["same"]
    verdict = evaluate_gate(same, [{"metric": "probes/*/*/pass_rate", "max_regression": 0}])
    assert [r.metric for r in verdict.rows] == ["probes/default/greedy/pass_rate", "probes/default/seed/pass_rate"]
    assert glob_to_regex("probes/**/pass_rate").match("probes/default/seed/fibonacci/pass_rate")
    # An optional rule that matched nothing checked nothing: never a pass (issue 27).
    verdict = evaluate_gate(same, [{"metric": "lm_eval/mmlu/acc", "max_regression": 0, "optional": True}])
    assert not verdict.passed and verdict.status == "inconclusive" and verdict.rows[0].status == "skipped"
    with pytest.raises(GateError, match="no compared metric matches"):
        evaluate_gate(same, [{"metric": "lm_eval/mmlu/acc", "max_regression": 0}])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "non-empty list"),
        ("- metric: a\n", "sets no threshold"),
        ("- metric: a\n  max_regression: -1\n", "must be >= 0"),
        ("- metric: a\n  max_regression: lots\n", "must be a number"),
        ("- metric: a\n  max_regression: 0\n  optional: maybe\n", "true or false"),
        ("- metric: a\n  max_regression: 0\n  direction: up\n", "'auto', 'higher' or 'lower'"),
        ("- 42\n", "must be a mapping"),
    ],
)
def test_invalid_rules_are_rejected_with_location(text, message):
    with pytest.raises(GateError, match=message) as e:
        parse_rules(text, "r.yaml")
    assert str(e.value).startswith("r.yaml")


def test_shipped_default_rules_load():
    rules = load_rules(None)
    assert rules and rules[0].metric == "perplexity/test" and rules[0].max_regression_rel == 0.05
    assert load_rules(DEFAULT_RULES) == rules
    with pytest.raises(GateError, match="not found.*default"):
        load_rules("no-such-gate")


# ----------------------------------------------------------------------------- verdict and gate agree (issue 35)


def _row_of(base_values, tuned_values, min_n, n_boot=2000, seed=0):
    from tunebench.compare.rows import compare_metric
    from tunebench.evals.results import Metric

    b = [{"id": str(k), "num": float(v), "den": 1.0} for k, v in enumerate(base_values)]
    t = [{"id": str(k), "num": float(v), "den": 1.0} for k, v in enumerate(tuned_values)]
    bm = Metric("x/acc", float(np.mean(base_values)), True, len(b))
    tm = Metric("x/acc", float(np.mean(tuned_values)), True, len(t))
    return compare_metric(bm, tm, b, t, 0.05, n_boot, seed, min_n)


SUPERIOR, NON_INFERIOR = parse_rules("- metric: x/acc\n  min_improvement: 0\n- metric: x/acc\n  max_regression: 0\n")


def test_every_small_paired_table_verdict_and_gate_agree_about_zero():
    """Every paired pass/fail table with n <= 30 (b base-only, c tuned-only, the concordant pairs split both ways):
    min_improvement: 0 passes exactly when the verdict is "improved", max_regression: 0 fails exactly when it is
    "regressed"; with report.min_n = 10 no rule passes or fails on a row under 10, and the row reads too few."""
    from tunebench.compare.rows import judge

    for n in range(1, 31):
        for b in range(n + 1):
            for c in range(n + 1 - b):
                both = (n - b - c) // 2
                base = [1] * both + [1] * b + [0] * c + [0] * (n - b - c - both)
                tuned = [1] * both + [0] * b + [1] * c + [0] * (n - b - c - both)
                row = _row_of(base, tuned, min_n=1)
                up, down = judge(SUPERIOR, row).status, judge(NON_INFERIOR, row).status
                assert (up == "pass") == (row.verdict == "improved"), (b, c, n, row.ci_low, row.p_value)
                assert (down == "fail") == (row.verdict == "regressed"), (b, c, n, row.ci_high, row.p_value)
                if n < 10:
                    flagged = _row_of(base, tuned, min_n=10)
                    assert flagged.verdict == "too few samples"
                    rows = (judge(SUPERIOR, flagged), judge(NON_INFERIOR, flagged))
                    assert all(r.status == "inconclusive" and r.items_needed >= 10 for r in rows)


def test_bootstrap_rows_verdict_and_gate_agree_on_random_data():
    """Scores (not pass/fail) take the studentized bootstrap: on random datasets of every size the verdict and the
    gate agree about 0, and a shifted metric is found."""
    from tunebench.compare.rows import judge

    rng = np.random.default_rng(35)
    found = 0
    for k in range(150):
        n = int(rng.integers(2, 60))
        base = rng.normal(0, 1, n)
        tuned = base + rng.normal(float(rng.choice([0.0, 0.3, -0.5])), 1.0, n) + rng.exponential(0.5, n)
        row = _row_of(base, tuned, min_n=1, n_boot=499, seed=k)
        up, down = judge(SUPERIOR, row).status, judge(NON_INFERIOR, row).status
        assert (up == "pass") == (row.verdict == "improved") and (down == "fail") == (row.verdict == "regressed")
        found += row.verdict != "no significant change"
    assert found > 30
