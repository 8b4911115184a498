"""The tunebench pytest plugin, exercised with pytester against synthetic run folders in tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import synthetic  # tests/fixtures/synthetic.py (on sys.path via conftest)

from tunebench.compare.comparison import compare
from tunebench.core.numbers import fmt
from tunebench.gate.verdict import evaluate_gate

pytest_plugins = ["pytester"]

QUALITY_TESTS = Path(__file__).resolve().parents[1] / "quality" / "test_quality.py"


@pytest.fixture
def run_tests(pytester, request, monkeypatch):
    """Run pytest in-process on the given test source, loading the plugin once however it is installed."""
    monkeypatch.delenv("TUNEBENCH_RUN", raising=False)
    # The pytest11 entry point loads the plugin in an installed checkout; load it explicitly otherwise.
    extra = [] if request.config.pluginmanager.has_plugin("tunebench") else ["-p", "tunebench.gate.pytest_plugin"]

    def run(source: str, *args: str):
        pytester.makepyfile(test_q=source)
        return pytester.runpytest(*extra, "-p", "no:cacheprovider", "-rs", *args)

    return run


def test_example_tests_on_an_improved_run(run_tests, tmp_path):
    run = synthetic.write_run(tmp_path / "good", *synthetic.make_pair("improved"), n_boot=500)
    result = run_tests(QUALITY_TESTS.read_text(encoding="utf-8"), f"--tunebench-run={run}")
    # Perplexity concludes; accuracy (1 discordant document of 40: Tango's interval still holds a 5-point loss),
    # one Fibonacci prompt per side, the default gate's 5 probe prompts (under report.min_n) and the stderr-only exact
    # match cannot exclude the regression: inconclusive fails, with the items needed.
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines([f"tunebench run: {run}"])
    out = result.stdout.str()
    assert "assert_non_inferior('probes/*/*/fibonacci/pass_rate') INCONCLUSIVE: 2 of 2 rows did not pass" in out
    assert "gate INCONCLUSIVE (rules: " in out and "paired items would conclude" in out


def test_planted_regression_fails_with_values_and_interval(run_tests, tmp_path):
    base, tuned = synthetic.make_pair("regressed")
    run = synthetic.write_run(tmp_path / "bad", base, tuned, n_boot=500)
    result = run_tests(QUALITY_TESTS.read_text(encoding="utf-8"), f"--tunebench-run={run}")
    # perplexity rose and lm-eval accuracy fell beyond their margins; the Fibonacci drop (n=1, n=3) is inconclusive.
    result.assert_outcomes(failed=5)
    row = compare(base, tuned, n_boot=500).row("perplexity/test")
    out = result.stdout.str()
    assert (
        f"FAIL perplexity/test (regression ≤ 5% of base): base {fmt(row.base)} -> tuned {fmt(row.tuned)}, "
        f"Δ {fmt(row.delta, True)}; 95% interval of Δ [{fmt(row.ci_low, True)}, {fmt(row.ci_high, True)}] "
        "(lower is better) lies entirely beyond a regression of 5% of base"
    ) in out
    assert "FAIL lm_eval/tunebench_facts_mc/acc (regression ≤ 0.05): base 0.525 -> tuned 0.175" in out
    assert "INCONCLUSIVE probes/default/greedy/fibonacci/pass_rate (regression ≤ 0.1)" in out
    assert "gate FAIL (rules: " in out


def test_no_run_skips_with_reason(run_tests):
    result = run_tests("def test_x(tunebench_comparison):\n    raise AssertionError('must not run')\n")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*no tunebench run folder: pass --tunebench-run=runs/<name> or set TUNEBENCH_RUN "
            "(nothing is checked here; --tunebench-require makes this an error)*"
        ]
    )


@pytest.mark.parametrize("how", ["option", "ini"])
def test_require_makes_a_missing_run_an_error(run_tests, pytester, how):
    if how == "ini":
        pytester.makeini("[pytest]\ntunebench_require = true\n")
    result = run_tests(
        "def test_x(tunebench_comparison):\n    pass\n", *(["--tunebench-require"] if how == "option" else [])
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no tunebench run folder*tunebench_require*nothing would be checked*"])
    assert "skipped" not in result.stdout.str()


def test_require_leaves_sessions_without_quality_tests_alone(run_tests, pytester):
    pytester.makeini("[pytest]\ntunebench_require = true\n")
    run_tests("def test_x():\n    pass\n").assert_outcomes(passed=1)


def test_require_with_a_run_runs_the_tests(run_tests, tmp_path):
    run = synthetic.write_run(tmp_path / "good", *synthetic.make_pair("improved"), n_boot=300)
    source = "def test_x(tunebench_gate):\n    tunebench_gate.assert_non_inferior('perplexity/test', rel=0.05)\n"
    run_tests(source, "--tunebench-require", f"--tunebench-run={run}").assert_outcomes(passed=1)


def test_run_folder_as_a_separate_word_is_refused_not_taken_for_a_test_path(run_tests, pytester, tmp_path_factory):
    # Given as `--tunebench-run DIR`, pytest counts DIR among the test paths when it picks the rootdir (before
    # any plugin loads), and test ids came out relative to a common ancestor: FAILED ../../c1::test_x.
    run = synthetic.write_run(tmp_path_factory.mktemp("elsewhere") / "c1", *synthetic.make_pair("improved"), n_boot=300)
    source = "def test_x(tunebench_run):\n    assert 0\n"
    result = run_tests(source, "--tunebench-run", str(run))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--tunebench-run {run}: write --tunebench-run={run} (one word)*rootdir*"])
    result = run_tests(source, f"--tunebench-run={run}", "-rf")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"rootdir: {pytester.path}", "FAILED test_q.py::test_x*"])
    rules = run / "rules.yaml"  # the rules file's path is a path too
    rules.write_text("- metric: perplexity/test\n  max_regression_rel: 0.05\n", encoding="utf-8")
    result = run_tests(source, f"--tunebench-run={run}", "--tunebench-rules", str(rules))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*write --tunebench-rules={rules} (one word)*"])


# ----------------------------------------------------------------------------- gate assertions


def test_not_regressed_never_passes_an_inconclusive_metric(run_tests, tmp_path):
    # 5 greedy samples, 3 -> 5 passes: too few to judge (report.min_n = 10), and the interval cannot exclude a
    # regression either.
    base, tuned = synthetic.make_pair("improved")
    run = synthetic.write_run(tmp_path / "thin", base, tuned, n_boot=300)
    row = compare(base, tuned, n_boot=300).row("probes/default/greedy/pass_rate")
    assert row.verdict == "too few samples" and not row.significant
    result = run_tests(
        "def test_x(tunebench_comparison):\n"
        "    tunebench_comparison.row('probes/default/greedy/pass_rate').assert_not_regressed()\n",
        f"--tunebench-run={run}",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*INCONCLUSIVE probes/default/greedy/pass_rate*too few samples*straddles the regression margin 0*"]
    )


def test_not_regressed_passes_when_the_interval_excludes_a_regression(tmp_path):
    row = compare(*synthetic.make_pair("improved"), n_boot=300).row("perplexity/test")
    assert row.assert_not_regressed() is row
    assert row.assert_not_regressed(0.05, rel=True) is row


def test_non_inferior_and_superior_decide_as_the_gate_does(run_tests, tmp_path):
    base, tuned = synthetic.make_pair("improved")
    run = synthetic.write_run(tmp_path / "run", base, tuned, n_boot=300)
    comparison = compare(base, tuned, n_boot=300)
    gate_row = evaluate_gate(comparison, [{"metric": "probes/default/greedy/pass_rate", "max_regression": 0.1}]).rows[0]
    assert gate_row.status == "inconclusive" and gate_row.items_needed > gate_row.n
    source = (
        "def test_ppl_non_inferior(tunebench_gate):\n"
        "    rows = tunebench_gate.assert_non_inferior('perplexity/test', rel=0.05)\n"
        "    assert [r.status for r in rows] == ['pass']\n"
        "def test_ppl_superior(tunebench_gate):\n"
        "    tunebench_gate.assert_superior('perplexity/test')\n"
        "def test_ppl_superior_by_half(tunebench_gate):\n"
        "    tunebench_gate.assert_superior('perplexity/test', rel=0.5)\n"
        "def test_probe_within_10_points(tunebench_gate):\n"
        "    tunebench_gate.assert_non_inferior('probes/default/greedy/pass_rate', 0.1)\n"
        "def test_unknown_metric(tunebench_gate):\n"
        "    tunebench_gate.assert_non_inferior('lm_eval/mmlu/acc', 0.05)\n"
    )
    result = run_tests(source, f"--tunebench-run={run}")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*FAIL perplexity/test (improvement ≥ 50% of base)*lies entirely at or below an improvement of 50%"
            " of base*",
            "*INCONCLUSIVE probes/default/greedy/pass_rate (regression ≤ 0.1)*"
            f"about {gate_row.items_needed} paired items "
            f"would conclude (have {gate_row.n}*",
            "*no compared metric matches 'lm_eval/mmlu/acc'*known: perplexity/test*",
        ]
    )


def test_gate_fixture_runs_the_runs_rules_a_rules_option_or_an_argument(run_tests, tmp_path):
    run = synthetic.write_run(tmp_path / "run", *synthetic.make_pair("improved"), n_boot=300)
    ppl = tmp_path / "ppl.yaml"
    ppl.write_text("- metric: perplexity/test\n  max_regression_rel: 0.05\n", encoding="utf-8")
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text("- metric: lm_eval/mmlu/acc\n  max_regression: 0.05\n  optional: true\n", encoding="utf-8")
    source = (
        "def test_default(tunebench_gate):\n"
        "    tunebench_gate.assert_passed()\n"
        f"def test_argument(tunebench_gate):\n"
        f"    assert tunebench_gate.assert_passed({str(ppl)!r}).status == 'pass'\n"
        f"def test_nothing_checked(tunebench_gate):\n"
        f"    tunebench_gate.assert_passed({str(nothing)!r})\n"
    )
    result = run_tests(source, f"--tunebench-run={run}")
    # The default rules are inconclusive on 5 greedy probe samples and a stderr-only exact match.
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*gate INCONCLUSIVE (rules: *default.yaml): * of 5 rows did not pass*",
            "*INCONCLUSIVE lm_eval/tunebench_arith_gen/exact_match*paired items would conclude*",
            "*gate INCONCLUSIVE (rules: *nothing.yaml): no rule matched any metric: nothing was checked*",
        ]
    )
    run_tests(
        source.split("def test_argument")[0], f"--tunebench-run={run}", f"--tunebench-rules={ppl}"
    ).assert_outcomes(passed=1)


def test_env_var_fallback_and_fixtures(run_tests, tmp_path, monkeypatch):
    run = synthetic.write_run(tmp_path / "env", *synthetic.make_pair("improved"), alpha=0.1, n_boot=300)
    monkeypatch.setenv("TUNEBENCH_RUN", str(run))
    source = (
        "def test_fixtures(tunebench_run, tunebench_results, tunebench_comparison):\n"
        f"    assert str(tunebench_run) == {str(run)!r}\n"
        "    assert set(tunebench_results) == {'base', 'tuned'}\n"
        "    assert tunebench_comparison.alpha == 0.1 and tunebench_comparison.n_boot == 300\n"
        "    tunebench_comparison.row('perplexity/test').assert_improved().assert_value('<', 8)\n"
    )
    run_tests(source).assert_outcomes(passed=1)


def test_missing_run_folder_is_an_error_not_a_skip(run_tests, tmp_path):
    result = run_tests("def test_x(tunebench_run):\n    pass\n", f"--tunebench-run={tmp_path / 'absent'}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*absent: no such folder*"])


def test_importing_the_plugin_is_cheap():
    code = (
        "import sys, tunebench.gate.pytest_plugin; "
        "heavy = {'torch', 'transformers', 'numpy', 'tunebench.evals.results'} "
        "& set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_gate_fixture_judges_an_exported_artifact_against_the_adapter(run_tests, tmp_path):
    base, tuned = synthetic.make_pair("improved")
    run = synthetic.write_run(tmp_path / "run", base, tuned, n_boot=300)
    tuned.save(run / "eval" / "gguf-q8_0" / "results.json")  # an export that scores exactly as the adapter
    source = (
        "def test_q8_0(tunebench_gate):\n"
        "    rows = tunebench_gate.assert_non_inferior('perplexity/test', rel=0.01, artifact='q8_0')\n"
        "    assert [r.metric for r in rows] == ['perplexity/test [q8_0 vs adapter]']\n"
        "def test_q4_0(tunebench_gate):\n"
        "    tunebench_gate.assert_non_inferior('perplexity/test', rel=0.01, artifact='q4_0')\n"
    )
    result = run_tests(source, f"--tunebench-run={run}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*artifact 'q4_0' was not evaluated in * (evaluated: q8_0)*"])


def test_gate_assertions_refuse_a_missing_or_negative_margin(tmp_path):
    from tunebench.core.errors import GateError
    from tunebench.gate.quality import QualityGate

    gate = QualityGate(tmp_path, compare(*synthetic.make_pair("same"), n_boot=200))
    with pytest.raises(TypeError, match="needs a margin"):
        gate.assert_non_inferior("perplexity/test")
    with pytest.raises(GateError, match=r"assert_non_inferior\('perplexity/test'\).*must be >= 0"):
        gate.assert_non_inferior("perplexity/test", -0.1)
    assert [r.status for r in gate.assert_non_inferior("perplexity/test", 0)] == ["pass"]  # identical: Δ = 0 exactly
