"""The decode loop's sampling arithmetic against transformers' own warpers, and which models take the loop."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    "temperature, top_p, min_p",
    [
        (1.5, None, 0.1),
        (0.7, 0.9, None),
        (1.0, 0.5, 0.2),
        (1.3, None, None),
        (2.0, 0.95, 0.05),
    ],
)
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

    small = {
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    assert unsupported_reason(LlamaForCausalLM(LlamaConfig(**small, attn_implementation="sdpa"))) is None
    assert "attention 'eager'" in unsupported_reason(
        LlamaForCausalLM(LlamaConfig(**small, attn_implementation="eager"))
    )
    mistral = MistralForCausalLM(MistralConfig(**small, sliding_window=8, attn_implementation="sdpa"))
    assert "sliding-window" in unsupported_reason(mistral)
    assert unsupported_reason(object()) == "not a transformers generation model"


def test_grouped_decode_attention_equals_transformers_sdpa():
    """One query position under grouped-query attention: the query heads laid out as rows against their key/value
    head give what transformers' SDPA path gives after copying keys and values per head (repeat_kv), mask included;
    other shapes go to transformers' function itself."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tunebench.evals.decoding import grouped_decode_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=4, is_causal=True, training=False)
    key, value = torch.randn(3, 2, 40, 16), torch.randn(3, 2, 40, 16)
    mask = torch.rand(3, 1, 1, 40) > 0.3
    mask[:, :, :, 0] = True
    for q_len in (1, 5):
        query = torch.randn(3, 8, q_len, 16)
        m = mask.expand(3, 1, q_len, 40)
        ours, _ = grouped_decode_attention(module, query, key, value, m, scaling=0.25)
        theirs, _ = sdpa_attention_forward(module, query, key, value, m, scaling=0.25)
        assert ours.shape == theirs.shape == (3, q_len, 8, 16)
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_decoder_restores_the_models_attention_and_agrees_without_grouping():
    """The decode steps switch the attention implementation for their duration only; greedy tokens agree with
    transformers' SDPA path on a GQA model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunebench.evals.decoding import StaticDecoder

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            attn_implementation="sdpa",
        )
    ).eval()
    ids = torch.randint(3, 96, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    out = {
        grouped: StaticDecoder(model, 3, 9, 12, [0], 1, grouped=grouped)(ids, mask, seed=0) for grouped in (True, False)
    }
    assert torch.equal(out[True], out[False])
    assert model.config._attn_implementation == "sdpa"


def test_decode_path_rules(caplog):
    """auto: the loop on CUDA for models it supports, else transformers' rule (dynamic on CPU); graph asked for a
    model the loop refuses falls back to dynamic and says why; static and dynamic are taken as given."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM

    from tunebench.evals.decode_loops import STATIC_MIN_STEPS, decode_path

    small = {
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    sdpa = SimpleNamespace(model=LlamaForCausalLM(LlamaConfig(**small, attn_implementation="sdpa")), device="cpu")
    eager = SimpleNamespace(model=LlamaForCausalLM(LlamaConfig(**small, attn_implementation="eager")), device="cpu")
    assert decode_path(sdpa, "auto", 10 * STATIC_MIN_STEPS) == "dynamic"  # CPU
    assert decode_path(sdpa, "graph") == "graph"
    assert decode_path(sdpa, "static") == "static" and decode_path(sdpa, "dynamic") == "dynamic"
    assert decode_path(eager, "graph") == "dynamic"
    assert "attention 'eager'" in caplog.text
    gpu_stub = SimpleNamespace(model=SimpleNamespace(device="cuda:0"), device="cuda:0", load_in_4bit=False)
    assert decode_path(gpu_stub, "auto", STATIC_MIN_STEPS) == "static"  # not a model the loop takes: the old rule
    assert decode_path(gpu_stub, "auto", 64) == "dynamic"
