"""Example model-quality tests: run them against a finished run folder.

    pytest tests/quality --tunebench-run=runs/smoke --tunebench-require

Each assertion is a release-gate rule judged on the run's interval of the change (the tunebench pytest
plugin, gate/pytest_plugin.py; the decisions are gate/verdict.py's). A test passes only when the interval
concludes: a metric that cannot yet exclude the regression fails as INCONCLUSIVE, with the paired items that
would conclude. On `smoke` (a few dozen conversations, 12 lm-eval documents, one sample per probe) the
perplexity tests pass and the thinly sampled ones fail that way: the answer is "not enough evidence".

Without a run folder these tests are skipped; --tunebench-require (or `tunebench_require = true` in the
pytest ini) makes that an error, so a CI job cannot stay green having checked nothing.
"""

from __future__ import annotations


def test_perplexity_significantly_lower_after_tuning(tunebench_gate):
    tunebench_gate.assert_superior("perplexity/test")  # the interval's worse end is still an improvement


def test_perplexity_at_most_5_percent_worse(tunebench_gate):
    tunebench_gate.assert_non_inferior("perplexity/test", rel=0.05)


def test_fibonacci_probe_drops_at_most_10_points(tunebench_gate):
    tunebench_gate.assert_non_inferior("probes/*/*/fibonacci/pass_rate", 0.10)  # every probe set and sampling


def test_lm_eval_accuracy_drops_at_most_5_points(tunebench_gate):
    tunebench_gate.assert_non_inferior("lm_eval/*/acc**", 0.05)  # acc and acc_norm of every task


def test_release_gate_passes(tunebench_gate):
    tunebench_gate.assert_passed()  # the run's gate rules, or --tunebench-rules=FILE
