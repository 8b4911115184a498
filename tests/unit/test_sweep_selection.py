"""Selection with confidence on synthetic per-conversation values: Holm, the indistinguishable set, the cheapest
choice; the objective refuses the test split; the pruning callback on a real Optuna study and real trainer state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunebench.compare.selection import Candidate, select
from tunebench.core.multiplicity import holm


def items(ppl: float, noise: float, seed: int, n: int = 60) -> list[dict]:
    """n conversations of 40-120 assistant tokens whose token NLL is log(ppl) plus per-conversation noise."""
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0)  # the same conversations (lengths, difficulty) for every configuration
    den = base.integers(40, 120, size=n)
    difficulty = base.normal(0, 0.3, size=n)
    nll = math.log(ppl) + difficulty + rng.normal(0, noise, size=n)
    return [{"id": f"c{i}", "num": float(nll[i] * den[i]), "den": int(den[i])} for i in range(n)]


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.01]) == pytest.approx([0.5, None, 0.02])
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped


def test_cheapest_of_the_indistinguishable_set_is_chosen():
    best = Candidate(0, 0, items(3.00, 0.01, 1), trainable_params=4_000_000, steps=60)
    close = Candidate(1, 0, items(3.005, 0.01, 2), trainable_params=500_000, steps=60)  # as good, 8x smaller
    closer_big = Candidate(2, 0, items(3.003, 0.01, 3), trainable_params=9_000_000, steps=60)
    worse = Candidate(3, 0, items(3.60, 0.01, 4), trainable_params=100_000, steps=30)  # cheapest, clearly worse
    cands = [_with_value(c) for c in (worse, closer_big, best, close)]
    sel = select(cands, alpha=0.05, n_boot=1000)
    ranked = sorted(cands, key=lambda c: c.value)
    assert sel.best == ranked[0].number
    assert set(sel.indistinguishable) == {0, 1, 2}
    assert 3 not in sel.indistinguishable
    assert sel.chosen == 1 and "cheapest" in sel.reason and "500,000" in sel.reason
    by = {v.number: v for v in sel.compared}
    assert by[3].delta > 0 and by[3].low > 0 and by[3].p_holm < 0.05 and not by[3].indistinguishable
    assert [v.p_holm for v in sel.compared] == pytest.approx(holm([v.p_value for v in sel.compared]))


def test_ties_on_parameters_go_to_fewer_steps_and_top_limits_the_family():
    a = _with_value(Candidate(0, 0, items(3.0, 0.01, 1), 1000, steps=60))
    b = _with_value(Candidate(1, 0, items(3.001, 0.01, 2), 1000, steps=30))
    c = _with_value(Candidate(2, 0, items(3.002, 0.01, 3), 10, steps=10))
    sel = select([a, b, c], top=2, n_boot=500)
    compared = {sel.best, *(v.number for v in sel.compared)}
    assert len(compared) == 2 and sel.not_compared == [n for n in (0, 1, 2) if n not in compared]
    assert (
        sel.chosen
        == min((x for x in (a, b, c) if x.number in compared), key=lambda x: (x.trainable_params, x.steps)).number
    )


def test_one_candidate_is_chosen_and_says_why():
    sel = select([_with_value(Candidate(7, 0, items(3.0, 0.01, 1), 10, 1))])
    assert sel.best == sel.chosen == 7 and sel.indistinguishable == [7] and "only finished trial" in sel.reason


def _with_value(c: Candidate) -> Candidate:
    num = sum(i["num"] for i in c.items)
    den = sum(i["den"] for i in c.items)
    return Candidate(c.number, math.exp(num / den), c.items, c.trainable_params, c.steps)


def test_the_objective_refuses_the_test_split():
    from tunebench.app.eval_settings import eval_settings
    from tunebench.core.config import load_config
    from tunebench.data.conversations import PreparedData
    from tunebench.data.encode import TemplateInfo
    from tunebench.data.standardize import Conversation
    from tunebench.evals.validation import TestSplitRefused, require_no_test, score_validation

    cfg = load_config("smoke", resolved=False)
    tmpl = TemplateInfo("chatml", "<|im_end|>", "", "", "x")
    conv = Conversation("t1", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    clean = PreparedData(
        {"train": [], "validation": [], "test": []}, {"train": [], "validation": [], "test": []}, tmpl, {}
    )
    with pytest.raises(TestSplitRefused, match="validation split only"):
        score_validation(eval_settings(cfg), clean, None, split="test")  # refused before any model loads
    leaked = PreparedData(
        {"train": [], "validation": [], "test": []}, {"train": [], "validation": [], "test": [conv]}, tmpl, {}
    )
    with pytest.raises(TestSplitRefused, match="test-split conversations"):
        require_no_test(leaked, "prepared.json")
    with pytest.raises(TestSplitRefused):
        score_validation(eval_settings(cfg), leaked, None)


def test_pruning_callback_reports_perplexity_and_stops_a_bad_trial():
    optuna = pytest.importorskip("optuna")
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tunebench.app.sweep_trial import Outcome, make_pruner, report_callback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=make_pruner("median", 10))
    for v in (2.0, 2.1, 2.2):  # three finished trials: the median rule starts judging
        t = study.ask()
        t.report(v, 1)
        study.tell(t, v)
    args = TrainingArguments(output_dir="/tmp/unused-tunebench", report_to="none", use_cpu=True)
    for loss, pruned in ((math.log(1.5), False), (math.log(9.0), True)):
        trial, outcome, control = study.ask(), Outcome(), TrainerControl()
        cb = report_callback(trial, outcome)
        cb.on_evaluate(args, TrainerState(global_step=0), control, metrics={"eval_loss": math.log(50.0)})
        assert not control.should_training_stop  # step 0 is the base model for every trial: never pruned there
        cb.on_evaluate(args, TrainerState(global_step=1), control, metrics={"eval_loss": loss})
        assert control.should_training_stop is pruned and outcome.pruned is pruned
        assert outcome.step == 1 and outcome.value == pytest.approx(math.exp(loss))
        assert study.trials[trial.number].intermediate_values[1] == pytest.approx(math.exp(loss))
    trial, outcome, control = study.ask(), Outcome(), TrainerControl()
    report_callback(trial, outcome).on_evaluate(
        args, TrainerState(global_step=1, max_steps=1), control, metrics={"eval_loss": math.log(9.0)}
    )
    assert not outcome.pruned and not control.should_training_stop  # the last step: training is over anyway


def _study_with_trials(optuna):
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.2) ** 2 + t.suggest_int("r", 1, 4), n_trials=6)
    return study


def test_sweep_plots_are_drawn_as_pngs(tmp_path):
    optuna = pytest.importorskip("optuna")
    from tunebench.reports.render_sweep import draw_sweep_plots

    drawn = draw_sweep_plots(_study_with_trials(optuna), tmp_path, importances=True)
    assert set(drawn) == {"history", "parallel", "importances"}
    for name in drawn.values():
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_broken_plotting_install_costs_the_plots_not_the_sweep(tmp_path, monkeypatch, caplog):
    """Seen on a GPU machine whose optuna lacked a plotly helper module: the report is drawn second, so a plotting
    import that fails leaves the PNGs out (with a warning that says how to get them) and raises nothing."""
    optuna = pytest.importorskip("optuna")
    import sys

    from tunebench.reports.render_sweep import draw_sweep_plots

    study = _study_with_trials(optuna)
    monkeypatch.setitem(sys.modules, "optuna.visualization.matplotlib", None)  # import now raises ImportError
    with caplog.at_level("WARNING"):
        assert draw_sweep_plots(study, tmp_path, importances=True) == {}
    assert not list(tmp_path.iterdir())
    assert "sweep plots not drawn" in caplog.text and "pip install" in caplog.text
