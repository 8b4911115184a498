"""pytest plugin: write model-quality assertions as ordinary tests against a tunebench run folder.

Registered through the ``pytest11`` entry point, so it loads in every pytest process of this environment:
importing it costs only pytest itself (numpy, results and statistics load inside the fixtures).

Usage::

    pytest tests/quality --tunebench-run runs/smoke          # or: TUNEBENCH_RUN=runs/smoke pytest tests/quality

    def test_perplexity(tunebench_comparison):
        tunebench_comparison.row("perplexity/test").assert_improved()

Tests using the fixtures are skipped (with the reason) when no run folder is given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ENV_VAR = "TUNEBENCH_RUN"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tunebench", "tunebench model-quality tests")
    group.addoption(
        "--tunebench-run",
        action="store",
        default=None,
        metavar="DIR",
        help=f"run folder (runs/<name>) whose base/tuned results the quality tests check; falls back to ${ENV_VAR}",
    )


def _run_arg(config: pytest.Config) -> str | None:
    return config.getoption("--tunebench-run", default=None) or os.environ.get(ENV_VAR) or None


def pytest_report_header(config: pytest.Config) -> str | None:
    run = _run_arg(config)
    return f"tunebench run: {run}" if run else None


@pytest.fixture(scope="session")
def tunebench_run(pytestconfig: pytest.Config) -> Path:
    """The run folder under test; skips the test when none was given, fails when it does not exist."""
    run = _run_arg(pytestconfig)
    if not run:
        pytest.skip(f"no tunebench run folder: pass --tunebench-run runs/<name> or set {ENV_VAR}")
    path = Path(run)
    if not path.is_dir():
        pytest.fail(f"--tunebench-run {run}: no such folder (expected runs/<name> from `tunebench run`)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def tunebench_results(tunebench_run: Path) -> dict[str, Any]:
    """``{"base": Results, "tuned": Results}`` of the run."""
    from tunebench.reports.compare import (
        load_run_results,  # heavy: numpy; pytest loads this plugin in every session
    )

    try:
        return load_run_results(tunebench_run)
    except (OSError, ValueError) as e:
        pytest.fail(f"cannot read the run's results: {e}", pytrace=False)


@pytest.fixture(scope="session")
def tunebench_comparison(tunebench_run: Path, tunebench_results: dict[str, Any]):
    """The run's Comparison (reports.compare), at the run's own alpha and bootstrap size.

    Rows have assertion helpers: ``.row(name).assert_improved()``, ``.assert_not_regressed()``,
    ``.assert_value(op, x, side="tuned")``; failures print both values, the delta and its interval.
    """
    from tunebench.reports.compare import ComparisonError, compare, run_settings  # heavy: numpy (see above)

    settings = run_settings(tunebench_run)
    try:
        return compare(tunebench_results["base"], tunebench_results["tuned"], settings["alpha"], settings["n_boot"])
    except ComparisonError as e:
        pytest.fail(f"base and tuned results cannot be compared: {e}", pytrace=False)
