"""The tunebench pytest plugin, exercised with pytester against synthetic run folders in tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import synthetic  # tests/fixtures/synthetic.py (on sys.path via conftest)

from tunebench.reports.compare import compare, fmt, fmt_interval

pytest_plugins = ["pytester"]

QUALITY_TESTS = Path(__file__).resolve().parents[1] / "quality" / "test_quality.py"


@pytest.fixture
def run_tests(pytester, request, monkeypatch):
    """Run pytest in-process on the given test source, loading the plugin once however it is installed."""
    monkeypatch.delenv("TUNEBENCH_RUN", raising=False)
    # The pytest11 entry point loads the plugin in an installed checkout; load it explicitly otherwise.
    extra = [] if request.config.pluginmanager.has_plugin("tunebench") else ["-p", "tunebench.reports.pytest_plugin"]

    def run(source: str, *args: str):
        pytester.makepyfile(test_q=source)
        return pytester.runpytest(*extra, "-p", "no:cacheprovider", "-rs", *args)

    return run


def test_passing_run(run_tests, tmp_path):
    run = synthetic.write_run(tmp_path / "good", *synthetic.make_pair("improved"), n_boot=500)
    result = run_tests(QUALITY_TESTS.read_text(encoding="utf-8"), f"--tunebench-run={run}")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"tunebench run: {run}"])


def test_planted_regression_fails_with_values_and_interval(run_tests, tmp_path):
    base, tuned = synthetic.make_pair("regressed")
    run = synthetic.write_run(tmp_path / "bad", base, tuned, n_boot=500)
    result = run_tests(QUALITY_TESTS.read_text(encoding="utf-8"), f"--tunebench-run={run}")
    # perplexity rose and lm-eval accuracy fell significantly; the Fibonacci drop (n=1, n=3) is not significant.
    result.assert_outcomes(passed=1, failed=2)
    row = compare(base, tuned, n_boot=500).row("perplexity/test")
    out = result.stdout.str()
    assert "expected a significant improvement, got 'regressed'" in out
    assert f"base {fmt(row.base)} -> tuned {fmt(row.tuned)}" in out
    assert f"95% CI {fmt_interval(row.ci_low, row.ci_high)}" in out
    assert "significant regression. lm_eval/tunebench_facts_mc/acc: base 0.525 -> tuned 0.175" in out


def test_no_run_skips_with_reason(run_tests):
    result = run_tests("def test_x(tunebench_comparison):\n    raise AssertionError('must not run')\n")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no tunebench run folder: pass --tunebench-run runs/<name> or set TUNEBENCH_RUN*"])


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
    code = ("import sys, tunebench.reports.pytest_plugin; heavy = {'torch', 'transformers', 'numpy', 'tunebench.evals.results'} "
            "& set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
