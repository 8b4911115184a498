"""eval.judge.verdict: logprobs without a model: the verdict-only prompts, the judgment texts both judges write,
chat-logprob readings, the letters of real tokenizers, and the cache and stage identities of the two modes."""

from __future__ import annotations

import math

import pytest

from tunebench.app.eval_settings import eval_settings
from tunebench.core.config import load_config
from tunebench.core.config_schema import JudgeConfig, JudgeEndpointConfig
from tunebench.evals.endpoint import EndpointJudge
from tunebench.evals.judge import prompts as jp
from tunebench.evals.judge import stage as jd
from tunebench.evals.judge.logprobs import letter_tokens, probs_from_chat_logprobs, verdict_text


@pytest.mark.parametrize(
    "probs, want",
    [
        ({"A": 0.7, "B": 0.2, "C": 0.05}, "A"),
        ({"A": 0.1, "B": 0.6, "C": 0.1}, "B"),
        ({"A": 0.2, "B": 0.2, "C": 0.5}, "C"),
        ({"A": 0.3, "B": 0.1, "C": 0.05}, None),  # mass 0.45 < 0.5: no verdict, never a tie
        (None, None),
    ],
)
def test_verdict_texts_parse_as_the_explaining_judges_do(probs, want):
    text = verdict_text(probs)
    assert jp.parse_verdict(text) == want, text
    if probs is not None:
        assert f"p(B)={probs['B']:.4f}" in text  # the reading is shown in judgments.jsonl


def _pos(token, alternatives):
    return {
        "token": token,
        "logprob": alternatives.get(token, -9.0),
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alternatives.items()],
    }


def test_chat_logprobs_are_read_where_the_reply_opens_with_the_verdict_brackets():
    content = [
        _pos("[[", {"[[": -0.01, "The": -5.0}),
        _pos("B", {"B": math.log(0.6), " A": math.log(0.2), "A": math.log(0.1), "C": math.log(0.05), "x": -3.0}),
        _pos("]]", {"]]": -0.01}),
    ]
    probs = probs_from_chat_logprobs(content)
    assert probs == pytest.approx({"A": 0.3, "B": 0.6, "C": 0.05})
    merged = [_pos("[[A", {"[[A": math.log(0.8), "[[B": math.log(0.1)})]  # a tokenizer that merges the letter
    assert probs_from_chat_logprobs(merged) == pytest.approx({"A": 0.8, "B": 0.1, "C": 0.0})
    single = [_pos(" ", {" ": -0.1}), _pos("[", {"[": -0.1}), _pos("C", {"C": math.log(0.9)})]
    assert probs_from_chat_logprobs(single) == pytest.approx({"A": 0.0, "B": 0.0, "C": 0.9})


def test_a_reply_that_does_not_open_with_the_verdict_is_no_reading():
    # a letter's chance at the first token of "2 + 2" says nothing about the judge's preference
    assert probs_from_chat_logprobs([_pos("2", {"2": -1.5, "A": -4.0, "B": -5.0})]) is None
    assert probs_from_chat_logprobs([_pos("[[", {"[[": -0.1})]) is None  # never reached the letter
    assert probs_from_chat_logprobs([]) is None and probs_from_chat_logprobs(None) is None


def test_verdict_only_prompts_ask_for_the_verdict_alone_and_keep_the_criteria():
    explain, only = jp.mtbench_prompts(), jp.verdict_only(jp.mtbench_prompts())
    assert set(only) == set(explain)
    for key, p in only.items():
        for gone in ("explanation", "Begin your evaluation", "Identify and correct"):
            assert gone not in p.system, (key, gone)
        assert p.system.endswith('"[[C]]" for a tie.') and "Do not explain your choice" in p.system
        assert "Avoid any position biases" in p.system and p.template == explain[key].template
    assert "reference answer" in only["single_reference"].system  # still judged against the reference
    assert jp.prompt_sha(only) != jp.prompt_sha(explain)  # the cache keys of the two modes never meet


def test_judge_prompts_of_follow_the_verdict_mode(tmp_path):
    template = tmp_path / "judge.j2"
    template.write_text("Q: {{ question }}\nA: {{ answer_a }}\nB: {{ answer_b }}\n")
    user = jd.judge_prompts_of(JudgeConfig(template=str(template), verdict="logprobs"))["user"]
    assert user.system == jp.VERDICT_ONLY_SYSTEM and user.template == template.read_text()
    assert jd.judge_prompts_of(JudgeConfig())["single"].system == jp.mtbench_prompts()["single"].system


def test_the_letters_are_one_token_after_the_prefill_in_llamas_tokenizer(llama3_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama3_tokenizer_dir)
    prefill, letters = letter_tokens(tok)
    assert tok.decode(prefill) == "[[" and [tok.decode([letters[k]]) for k in "ABC"] == ["A", "B", "C"]


def test_a_tokenizer_whose_letters_need_two_tokens_is_refused_and_merged_letters_are_read():
    class Split:  # "[[" then two tokens per letter: no one position holds the three letters
        def encode(self, text, add_special_tokens=False):
            return [7] + {"A": [1, 2], "B": [1, 3], "C": [4, 5]}[text[-1]]

    class Merged:  # "[[A" as one token: nothing to prefill, the letter is the answer's first token
        def encode(self, text, add_special_tokens=False):
            return [{"A": 11, "B": 12, "C": 13}[text[-1]]]

    with pytest.raises(ValueError, match="splits"):
        letter_tokens(Split())
    assert letter_tokens(Merged()) == ([], {"A": 11, "B": 12, "C": 13})
    from types import SimpleNamespace

    from tunebench.core.errors import JudgeError
    from tunebench.evals.judge.logprobs import LogprobJudge

    judge = SimpleNamespace(tokenizer=Split(), source=SimpleNamespace(ref="my/judge"))
    with pytest.raises(JudgeError, match="my/judge.*eval.judge.verdict=explain"):  # refused before any prompt
        LogprobJudge(judge, 8)


def test_the_modes_have_their_own_cache_and_stage_identities():
    cfg = JudgeEndpointConfig(base_url="http://127.0.0.1:1/v1", model="m")
    explain, logprobs = EndpointJudge(cfg, 512), EndpointJudge(cfg, 512, verdict="logprobs")
    assert "verdict" not in explain.identity() and logprobs.identity()["verdict"] == "logprobs"
    base = jd.judge_fingerprint(eval_settings(load_config("smoke")))
    other = jd.judge_fingerprint(eval_settings(load_config("smoke", ["eval.judge.verdict=logprobs"])))
    assert "verdict" not in base["judge"] and other["judge"]["verdict"] == "logprobs"  # earlier runs stay current


def test_a_bad_verdict_mode_is_a_config_error():
    from tunebench.core.errors import ConfigError

    with pytest.raises(ConfigError, match="verdict"):
        load_config("smoke", ["eval.judge.verdict=probabilities"])


def test_published_judge_speed_runs_render_from_their_json_and_state_the_spread():
    import json
    from pathlib import Path

    from tunebench.bench.judgespeed import render, stage_ratios

    root = Path(__file__).resolve().parents[2] / "reports" / "published"
    runs = sorted(root.glob("2026-12-0[34]-h200-judge-*/**/judgespeed*.json"))
    assert len(runs) >= 7
    for path in runs:
        assert render(json.loads(path.read_text())) == path.with_suffix(".md").read_text(), path
    res = json.loads((root / "2026-12-04-h200-judge-logprobs" / "judgespeed.json").read_text())
    ratios = {k: [s / a for s, a in v] for k, v in stage_ratios(res).items()}
    assert len(ratios[("logprobs", None)]) == 3 and max(ratios[("logprobs", None)]) < 1  # the claim docs/judge.md makes
    assert min(ratios[("explain", 256)]) > 1
