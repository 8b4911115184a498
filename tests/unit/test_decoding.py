"""The decode loop's sampling arithmetic against transformers' own warpers, and which models take the loop."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("temperature, top_p, min_p", [
    (1.5, None, 0.1), (0.7, 0.9, None), (1.0, 0.5, 0.2), (1.3, None, None), (2.0, 0.95, 0.05),
])
def test_processed_scores_equal_transformers_warpers(temperature, top_p, min_p):
    """Temperature, top-p and min-p as transformers applies them in generate (that order, min_tokens_to_keep=1)."""
    from transformers import LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopPLogitsWarper

    from tunebench.evals.decoding import processed_scores

    torch.manual_seed(0)
    logits = torch.randn(6, 500) * 4
    logits[0, 7] = 30.0  # one row with a dominant token: min-p and top-p keep only it
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_p is not None:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p is not None:
        warpers.append(MinPLogitsWarper(min_p))
    theirs = LogitsProcessorList(warpers)(None, logits.clone())
    ours = processed_scores(logits, temperature, top_p, min_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])
    if top_p is not None or min_p is not None:
        assert (~torch.isinf(ours[0])).sum() == 1


def test_gumbel_max_draws_follow_the_softmax():
    """The loop's draw, argmax(scores - log(Exp(1) noise)), samples softmax(scores): 40,000 draws over 5 tokens."""
    from tunebench.evals.decoding import processed_scores

    scores = processed_scores(torch.tensor([[2.0, 1.0, 0.5, -1.0, -30.0]]), 1.5, None, 0.05)
    rows = scores.expand(40_000, -1)
    noise = torch.empty_like(rows).exponential_(generator=torch.Generator().manual_seed(3))
    picks = (rows - noise.log()).argmax(-1)
    freq = torch.bincount(picks, minlength=5).float() / len(picks)
    assert torch.allclose(freq, torch.softmax(scores[0], -1), atol=0.01)
    assert freq[4] == 0  # removed by min-p: never drawn


def test_models_the_loop_does_not_take():
    """Eager attention, sliding-window caches and non-models are refused, with the reason."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from tunebench.evals.decoding import unsupported_reason

    small = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1}
    assert unsupported_reason(LlamaForCausalLM(LlamaConfig(**small, attn_implementation="sdpa"))) is None
    assert "attention 'eager'" in unsupported_reason(LlamaForCausalLM(LlamaConfig(**small,
                                                                                 attn_implementation="eager")))
    mistral = MistralForCausalLM(MistralConfig(**small, sliding_window=8, attn_implementation="sdpa"))
    assert "sliding-window" in unsupported_reason(mistral)
    assert unsupported_reason(object()) == "not a transformers generation model"
