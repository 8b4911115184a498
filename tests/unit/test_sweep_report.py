"""sweep.md withholds parameter importances below a minimum of complete trials, and says why (issue 40, item 8):
on a real Optuna study, and on the published sweep's own sweep.json."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tunebench.core.io import read_json
from tunebench.reports.render_sweep import MIN_IMPORTANCE_TRIALS, importances_withheld, render_sweep

PUBLISHED = Path(__file__).resolve().parents[2] / "reports" / "published" / "2026-12-03-h200-sweep-smollm2-gpu"


def _study(optuna, n_trials: int):
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.2) ** 2 + t.suggest_int("r", 1, 4), n_trials=n_trials)
    return study


def test_the_minimum_is_ten_trials_and_two_per_searched_parameter():
    assert importances_withheld(MIN_IMPORTANCE_TRIALS, 2) is None
    assert importances_withheld(11, 6) is not None and importances_withheld(12, 6) is None
    note = importances_withheld(2, 3)
    assert note.startswith("Parameter importances are withheld below 10 complete trials") and "has 2" in note


def test_importances_are_computed_only_from_enough_complete_trials():
    optuna = pytest.importorskip("optuna")
    from tunebench.app.sweep_summary import param_importances

    values, note = param_importances(_study(optuna, 2), 2, 2)  # what sweep.md showed importances of before
    assert values is None and "withheld below 10 complete trials" in note and "this study has 2" in note
    values, note = param_importances(_study(optuna, 12), 12, 2)
    assert note is None and set(values) == {"x", "r"} and sum(values.values()) == pytest.approx(1.0)


def test_sweep_md_withholds_them_saying_why_and_shows_them_from_enough_trials():
    summary = read_json(PUBLISHED / "sweep.json")  # 5 complete trials over 6 searched parameters
    assert summary["importances"] and summary["counts"]["complete"] == 5 and len(summary["space"]) == 6
    text = render_sweep(summary)
    section = text.split("## Parameter importances", 1)[1].split("## ", 1)[0]
    assert "withheld below 12 complete trials" in section and "this study has 5" in section
    assert "| train.lr" not in section and "importances.png" not in section
    enough = copy.deepcopy(summary)
    enough["counts"]["complete"] = 12
    section = render_sweep(enough).split("## Parameter importances", 1)[1].split("## ", 1)[0]
    assert "| train.lr" in section and "![importances](importances.png)" in section and "withheld" not in section
