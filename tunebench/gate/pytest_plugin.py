"""pytest plugin: model-quality assertions as ordinary tests against a tunebench run folder, decided as the gate does.

Registered through the ``pytest11`` entry point, so it loads in every pytest process of this environment:
importing it costs only pytest itself (numpy, results and statistics load inside the fixtures).

Usage (tests/quality/test_quality.py is the worked example)::

    pytest tests/quality --tunebench-run=runs/smoke --tunebench-require     # or: TUNEBENCH_RUN=runs/smoke

    def test_perplexity_within_5_percent(tunebench_gate):
        tunebench_gate.assert_non_inferior("perplexity/test", rel=0.05)

    def test_accuracy_gains_2_points(tunebench_gate):
        tunebench_gate.assert_superior("lm_eval/*/acc", 0.02)

    def test_release_gate(tunebench_gate):
        tunebench_gate.assert_passed()            # the run's gate rules, --tunebench-rules=FILE, or an argument

Every assertion is a release-gate rule judged by gate.verdict on the same intervals (gate.quality): it
passes only on the gate's pass. An inconclusive metric fails with the paired items that would conclude, and a
metric name that matches nothing fails: no test passes on no evidence.

Options:

- ``--tunebench-run=DIR`` (or ``$TUNEBENCH_RUN``): the run folder. Write it with ``=``: pytest picks its rootdir
  before any plugin loads and would take a separate ``DIR`` word for a test path (test ids then read
  ``../../c1::test_x``), so that spelling is refused with a usage error.
- ``--tunebench-rules=FILE``: rules file (or shipped gate name) for ``tunebench_gate.assert_passed()``.
- ``--tunebench-require`` or ini ``tunebench_require = true``: when collected tests use the fixtures and no run
  folder is given (or it does not exist), pytest stops with a usage error (exit 4) instead of skipping them.
  Without it those tests are skipped with the reason, and a CI job would stay green with nothing checked.

Fixtures (session scope): ``tunebench_run`` (Path), ``tunebench_results`` (``{"base", "tuned"}`` Results),
``tunebench_comparison`` (compare.comparison.Comparison; rows have ``.assert_improved()``,
``.assert_not_regressed(max_regression=0, rel=False)`` (the gate's non-inferiority rule on that row) and
``.assert_value(op, x)``), ``tunebench_gate`` (gate.quality.QualityGate).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest

ENV_VAR = "TUNEBENCH_RUN"
_PATH_OPTIONS = ("--tunebench-run", "--tunebench-rules")
_HOW_TO_GIVE = f"pass --tunebench-run=runs/<name> or set {ENV_VAR}"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tunebench", "tunebench model-quality tests")
    group.addoption(
        "--tunebench-run",
        action="store",
        default=None,
        metavar="DIR",
        help=f"run folder (runs/<name>) whose results the quality tests check; write --tunebench-run=DIR; "
        f"falls back to ${ENV_VAR}",
    )
    group.addoption(
        "--tunebench-rules",
        action="store",
        default=None,
        metavar="FILE",
        help="gate rules file or shipped gate name for tunebench_gate.assert_passed() (default: the run's own)",
    )
    group.addoption(
        "--tunebench-require",
        action="store_true",
        default=False,
        help="a missing run folder is an error (exit 4), not a skip, when collected tests use the tunebench fixtures",
    )
    parser.addini(
        "tunebench_require",
        type="bool",
        default=False,
        help="as --tunebench-require: a missing run folder is an error, not a skip",
    )


def _run_arg(config: pytest.Config) -> str | None:
    return config.getoption("--tunebench-run", default=None) or os.environ.get(ENV_VAR) or None


def _required(config: pytest.Config) -> bool:
    return bool(config.getoption("--tunebench-require", default=False) or config.getini("tunebench_require"))


def _run_problem(config: pytest.Config) -> str | None:
    """Why the run folder cannot be used (not given, not a folder), or None."""
    run = _run_arg(config)
    if not run:
        return f"no tunebench run folder: {_HOW_TO_GIVE}"
    if not Path(run).is_dir():
        return f"--tunebench-run={run}: no such folder (expected runs/<name> from `tunebench run`)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    _refuse_separate_path_values(config)


def _refuse_separate_path_values(config: pytest.Config) -> None:
    """Refuse ``--tunebench-run DIR`` as two words when DIR exists: pytest has already counted it as a test path.

    pytest chooses the rootdir (and the config file) from the command line's paths before it loads plugins,
    when it cannot yet know that DIR belongs to an option; nothing a plugin does afterwards undoes that choice.
    """
    args = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *map(str, config.invocation_params.args)]
    here = config.invocation_params.dir
    for opt, value in zip(args, args[1:], strict=False):
        if opt in _PATH_OPTIONS and not value.startswith("-") and os.path.exists(here / value):
            raise pytest.UsageError(
                f"{opt} {value}: write {opt}={value} (one word). As a separate word, pytest counts {value} among "
                f"the test paths when it picks the rootdir and ini file (before plugins load), which can move the "
                f"rootdir above your tests and make test ids read ../../<folder>::test_x."
            )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _required(config):
        return
    users = [item for item in items if "tunebench_run" in getattr(item, "fixturenames", ())]
    problem = _run_problem(config) if users else None
    if problem:
        raise pytest.UsageError(
            f"{problem}. --tunebench-require (or tunebench_require = true) is set and {len(users)} collected "
            f"test(s) use the tunebench fixtures: without a run folder nothing would be checked."
        )


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    lines = [f"tunebench run: {run}"] if (run := _run_arg(config)) else []
    if rules := config.getoption("--tunebench-rules", default=None):
        lines.append(f"tunebench rules: {rules}")
    return lines or None


@pytest.fixture(scope="session")
def tunebench_run(pytestconfig: pytest.Config) -> Path:
    """The run folder under test; skips without one (fails under --tunebench-require), fails when it is missing."""
    problem = _run_problem(pytestconfig)
    if _run_arg(pytestconfig) is None and not _required(pytestconfig):
        pytest.skip(f"{problem} (nothing is checked here; --tunebench-require makes this an error)")
    if problem:
        pytest.fail(problem, pytrace=False)
    return Path(_run_arg(pytestconfig))


@pytest.fixture(scope="session")
def tunebench_results(tunebench_run: Path) -> dict[str, Any]:
    """``{"base": Results, "tuned": Results}`` of the run."""
    from tunebench.compare.runs import (
        load_run_results,  # heavy: numpy; pytest loads this plugin in every session
    )

    try:
        return load_run_results(tunebench_run)
    except (OSError, ValueError) as e:
        pytest.fail(f"cannot read the run's results: {e}", pytrace=False)


@pytest.fixture(scope="session")
def tunebench_comparison(tunebench_run: Path, tunebench_results: dict[str, Any]):
    """The run's Comparison (compare.comparison), at the run's own alpha and bootstrap size.

    Rows have assertion helpers: ``.row(name).assert_improved()``, ``.assert_not_regressed(max_regression=0,
    rel=False)`` (the gate's non-inferiority rule: an inconclusive row fails), ``.assert_value(op, x,
    side="tuned")``; failures print both values, the delta and its interval.
    """
    from tunebench.compare.comparison import compare  # heavy: numpy (see above)
    from tunebench.compare.rows import load_judge_results  # heavy: numpy (see above)
    from tunebench.compare.runs import run_settings  # heavy: numpy (see above)
    from tunebench.core.errors import ComparisonError

    settings = run_settings(tunebench_run)
    try:
        return compare(
            tunebench_results["base"],
            tunebench_results["tuned"],
            settings["alpha"],
            settings["n_boot"],
            judged=load_judge_results(tunebench_run),
            min_n=settings["min_n"],
        )
    except ComparisonError as e:
        pytest.fail(f"base and tuned results cannot be compared: {e}", pytrace=False)


@pytest.fixture(scope="session")
def tunebench_gate(pytestconfig: pytest.Config, tunebench_run: Path, tunebench_comparison):
    """Gate-rule assertions on the run (gate.quality.QualityGate), decided as ``tunebench gate`` decides.

    ``.assert_non_inferior(metric, margin | rel=)``, ``.assert_superior(metric, t | rel=)``,
    ``.assert_passed(rules=None)`` (rules default: ``--tunebench-rules``, else the run's gate.rules, else the
    shipped default).
    """
    from tunebench.gate.quality import QualityGate  # heavy: numpy (see above)

    return QualityGate(tunebench_run, tunebench_comparison, pytestconfig.getoption("--tunebench-rules", default=None))
