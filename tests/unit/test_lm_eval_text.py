"""lm-eval through a text completions API (evals.lm_eval.text): the continuation is found in the echo's own text
space (its token strings and offsets), whatever the server did with the BOS, special tokens or the boundary; a
server whose echo carries no prompt tokens is refused, never scored at chance."""

from __future__ import annotations

import pytest

from tunebench.core.errors import LmEvalError
from tunebench.evals.lm_eval.text import continuation_score, lm_eval_sampling
from tunebench.evals.prompting import cut_at_stops


def answer(tokens, values, generated=1, tops=None, skip=()):
    """An echoed completion: offsets are cumulative over the token strings, except that tokens in ``skip`` add no
    text (llama-cpp-python detokenizes special tokens to nothing when it computes offsets)."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += 0 if t in skip else len(t)
    return {
        "choices": [
            {
                "text": "".join(tokens),
                "finish_reason": "length",
                "logprobs": {
                    "tokens": [("" if t in skip else t) for t in tokens],
                    "token_logprobs": values,
                    "text_offset": offsets,
                    "top_logprobs": tops if tops is not None else [{t: v} for t, v in zip(tokens, values, strict=True)],
                },
            }
        ],
        "usage": {"completion_tokens": generated},
    }


def test_the_continuation_ends_where_the_generated_token_begins_and_greedy_is_the_top_token():
    a = answer(["Question", ":", " 2+2?\n", "Answer", ":", " 4", "\n"], [None, -1.0, -2.0, -0.5, -0.1, -0.3, -9.0])
    assert continuation_score(a, " 4") == (pytest.approx(-0.3), True, False)
    # another token was likelier at the continuation: not greedy
    a["choices"][0]["logprobs"]["top_logprobs"][5] = {" 5": -0.1}
    assert continuation_score(a, " 4")[1] is False


def test_llama_cpp_python_offsets_without_special_tokens_and_bos_shift_nothing():
    """llama-cpp-python leaves the BOS out of the echo and its offsets skip special tokens (the text they index is
    not the prompt's): positions in the request string would point past the continuation, the echo's own do not."""
    tokens = ["user", "\n", "Question: capital of France?", "<|im_end|>", "\n", "assistant", "\n", " Paris", " is"]
    values = [None, -1, -1, -1, -1, -1, -1, -0.25, -0.5]
    a = answer(tokens, values, skip={"<|im_end|>"})
    assert continuation_score(a, " Paris") == (pytest.approx(-0.25), True, False)
    # the answer stopped at once (end of sequence, nothing echoed for it): the last entry is the prompt's
    stopped = answer(tokens[:-1], values[:-1], generated=0)
    assert continuation_score(stopped, " Paris") == (pytest.approx(-0.25), True, False)
    del stopped["usage"]
    stopped["choices"][0]["finish_reason"] = "stop"  # no usage: the finish reason says nothing was generated
    assert continuation_score(stopped, " Paris") == (pytest.approx(-0.25), True, False)


def test_a_token_across_the_boundary_is_scored_with_the_continuation_and_counted():
    a = answer(["The", " answer", " is blue", " sky", "."], [None, -1.0, -2.0, -0.5, -3.0])  # " is blue" spans it
    assert continuation_score(a, " blue sky") == (pytest.approx(-2.5), True, True)


def test_an_echo_that_does_not_hold_the_prompt_is_refused():
    only_generated = answer(["\n"], [-0.1])
    with pytest.raises(LmEvalError, match="27174"):
        continuation_score(only_generated, " y")
    with pytest.raises(LmEvalError, match="text_offset"):
        continuation_score({"choices": [{"text": "y"}]}, " y")
    other = answer(["Q", ":", " x", "\n"], [None, -1.0, -1.0, -1.0])  # the echo ends in another text
    with pytest.raises(LmEvalError, match="does not end in the continuation"):
        continuation_score(other, " y")


def test_answers_stop_at_the_first_stop_string():
    assert cut_at_stops("42\n\nQuestion: next", ["\n\n", "Question:"]) == "42"
    assert cut_at_stops("42", []) == "42"


def test_lm_eval_settings_become_the_generator_contracts_sampling():
    greedy = lm_eval_sampling({"until": ["\n"], "do_sample": False, "temperature": 0.7, "max_gen_toks": 32}, 256)
    assert (greedy.temperature, greedy.top_p, greedy.min_p, greedy.max_new_tokens) == (0.0, None, None, 32)
    assert lm_eval_sampling({}, 256).max_new_tokens == 256  # lm-eval's default length
    sampled = lm_eval_sampling({"do_sample": True, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8}, 256)
    assert (sampled.temperature, sampled.top_p, sampled.min_p, sampled.max_new_tokens) == (0.8, 0.95, None, 8)
    beams = {"do_sample": False, "num_beams": 4}
    assert lm_eval_sampling(beams, 256) is None  # a knob the contract has not: lm-eval's own path
    assert lm_eval_sampling(beams, 256, strict=False).temperature == 0.0  # a text API: left out
