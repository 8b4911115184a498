"""The release gate: rule semantics, rules-file validation, and gate_main's exit codes on run folders."""

from __future__ import annotations

import io
import json

import pytest
import synthetic  # tests/fixtures/synthetic.py (on sys.path via conftest)

from tunebench.reports.compare import compare
from tunebench.reports.gate import (
    DEFAULT_RULES,
    GateError,
    GateVerdict,
    evaluate_gate,
    gate_main,
    glob_to_regex,
    load_rules,
    parse_rules,
)


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


# ----------------------------------------------------------------------------- exit codes


def test_passing_run_exits_0_and_writes_gate_json(tmp_path):
    code, out, run = _run(tmp_path, "improved")
    assert code == 0, out
    assert "gate PASSED" in out and "perplexity/test" in out
    verdict = GateVerdict.from_dict(json.loads((run / "gate.json").read_text(encoding="utf-8")))
    assert verdict.passed and verdict.status == "pass" and verdict.rules_source == str(DEFAULT_RULES)
    assert not list(run.glob(".gate.json.*"))  # atomic write left no temp file


def test_planted_regression_exits_1(tmp_path):
    code, out, run = _run(tmp_path, "regressed")
    assert code == 1, out
    verdict = json.loads((run / "gate.json").read_text(encoding="utf-8"))
    failed = {r["metric"] for r in verdict["rows"] if r["status"] == "fail"}
    assert failed == {"perplexity/test", "lm_eval/tunebench_facts_mc/acc"}
    assert "FAIL" in out and "significant (p=<0.001)" in out


def test_missing_metric_exits_2(tmp_path, capsys):
    code, _, run = _run(tmp_path, rules="- metric: perplexity/validation\n  max_regression: 0\n")
    assert code == 2
    err = capsys.readouterr().err
    assert "line 1" in err and "perplexity/validation" in err and "optional: true" in err
    assert json.loads((run / "gate.json").read_text(encoding="utf-8"))["status"] == "invalid"


def test_bad_yaml_exits_2_with_file_and_line(tmp_path, capsys):
    code, _, _ = _run(tmp_path, rules="- metric: perplexity/test\n  max_regression: [0\n")
    assert code == 2
    err = capsys.readouterr().err
    assert "rules.yaml line 3" in err and "not valid YAML" in err


def test_unknown_key_exits_2_with_line_and_suggestion(tmp_path, capsys):
    rules = "rules:\n  - metric: perplexity/test\n    max_regression: 0\n  - metric: perplexity/test\n    max_regresion: 0\n"
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
    assert gate_main(run, "default", stream=io.StringIO()) == 0


# ----------------------------------------------------------------------------- rule semantics


def _one(comparison, rule: dict):
    verdict = evaluate_gate(comparison, [rule])
    assert len(verdict.rows) == 1
    return verdict.rows[0]


def test_require_significant_on_regression(comparisons):
    # exact_match drops 0.05 in the regressed scenario but the (unpaired) test is not significant.
    reg = comparisons["regressed"]
    rule = {"metric": "lm_eval/tunebench_arith_gen/exact_match", "max_regression": 0.01}
    assert _one(reg, rule).status == "fail"
    row = _one(reg, {**rule, "require_significant": True})
    assert row.status == "pass" and "not significant" in row.reason


def test_min_improvement_absolute_relative_and_significance(comparisons):
    imp = comparisons["improved"]
    ppl = imp.row("perplexity/test")  # lower is better: improvement = base - tuned
    gain = ppl.base - ppl.tuned
    assert _one(imp, {"metric": "perplexity/test", "min_improvement": gain * 0.9}).status == "pass"
    assert _one(imp, {"metric": "perplexity/test", "min_improvement": gain * 1.1}).status == "fail"
    assert _one(imp, {"metric": "perplexity/test", "min_improvement_rel": 0.10}).status == "pass"
    assert _one(imp, {"metric": "perplexity/test", "min_improvement_rel": 0.20}).status == "fail"
    # greedy pass rate rises 0.6 -> 1.0 but on 5 samples that is not significant.
    rule = {"metric": "probes/default/greedy/pass_rate", "min_improvement": 0.1}
    assert _one(imp, rule).status == "pass"
    row = _one(imp, {**rule, "require_significant": True})
    assert row.status == "fail" and "not significant" in row.reason


def test_direction_override_and_relative_regression(comparisons):
    imp = comparisons["improved"]
    rule = {"metric": "perplexity/test", "max_regression": 0}
    assert _one(imp, rule).status == "pass"
    assert _one(imp, {**rule, "direction": "higher"}).status == "fail"
    assert _one(comparisons["regressed"], {"metric": "perplexity/test", "max_regression_rel": 0.2}).status == "pass"
    assert _one(comparisons["regressed"], {"metric": "perplexity/test", "max_regression_rel": 0.1}).status == "fail"


def test_glob_matches_within_segments_and_optional_skips(comparisons):
    same = comparisons["same"]
    verdict = evaluate_gate(same, [{"metric": "probes/*/*/pass_rate", "max_regression": 0}])
    assert [r.metric for r in verdict.rows] == ["probes/default/greedy/pass_rate", "probes/default/seed/pass_rate"]
    assert glob_to_regex("probes/**/pass_rate").match("probes/default/seed/fibonacci/pass_rate")
    verdict = evaluate_gate(same, [{"metric": "lm_eval/mmlu/acc", "max_regression": 0, "optional": True}])
    assert verdict.passed and verdict.rows[0].status == "skipped"
    with pytest.raises(GateError, match="no compared metric matches"):
        evaluate_gate(same, [{"metric": "lm_eval/mmlu/acc", "max_regression": 0}])


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "non-empty list"),
    ("- metric: a\n", "sets no threshold"),
    ("- metric: a\n  max_regression: -1\n", "must be >= 0"),
    ("- metric: a\n  max_regression: lots\n", "must be a number"),
    ("- metric: a\n  max_regression: 0\n  optional: maybe\n", "true or false"),
    ("- metric: a\n  max_regression: 0\n  direction: up\n", "'auto', 'higher' or 'lower'"),
    ("- 42\n", "must be a mapping"),
])
def test_invalid_rules_are_rejected_with_location(text, message):
    with pytest.raises(GateError, match=message) as e:
        parse_rules(text, "r.yaml")
    assert str(e.value).startswith("r.yaml")


def test_shipped_default_rules_load():
    rules = load_rules(None)
    assert rules and rules[0].metric == "perplexity/test" and all(r.require_significant for r in rules)
    assert load_rules(DEFAULT_RULES) == rules
    with pytest.raises(GateError, match="not found.*default"):
        load_rules("no-such-gate")
