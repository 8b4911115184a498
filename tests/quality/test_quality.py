"""Example model-quality tests: run them against a finished run folder.

    pytest tests/quality --tunebench-run runs/smoke

Without a run folder (no --tunebench-run, no TUNEBENCH_RUN) every test here is skipped. The fixtures and
row assertions come from the tunebench pytest plugin (reports/pytest_plugin.py).
"""

from __future__ import annotations

import pytest


def test_perplexity_significantly_lower_after_tuning(tunebench_comparison):
    tunebench_comparison.row("perplexity/test").assert_improved()


def test_fibonacci_probe_did_not_drop(tunebench_comparison):
    rows = [r for r in tunebench_comparison.rows if "fibonacci" in r.metric and r.metric.endswith("/pass_rate")]
    if not rows:
        pytest.skip("this run has no Fibonacci probe")
    _all_not_regressed(rows)


def test_lm_eval_not_significantly_worse(tunebench_comparison):
    rows = [r for r in tunebench_comparison.rows_in("lm_eval") if r.headline]
    if not rows:
        pytest.skip("this run has no lm-eval metrics")
    _all_not_regressed(rows)


def _all_not_regressed(rows):
    """Check every row, then report all regressions at once (not only the first)."""
    failures = []
    for row in rows:
        try:
            row.assert_not_regressed()
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)
