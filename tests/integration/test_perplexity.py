"""Held-out perplexity on the real packaged model: equals the direct computation, moves with an adapter."""

from __future__ import annotations

import math

import pytest
import torch

from tunebench.app.eval_settings import eval_settings
from tunebench.core.config import load_config
from tunebench.core.errors import AdapterError
from tunebench.data.encode import Encoded
from tunebench.evals.modeling import load_for_eval
from tunebench.evals.perplexity import batches_by_length, evaluate, score
from tunebench.evals.runner import encoded_test_split


def direct_nll(model, e: Encoded) -> tuple[float, int]:
    """Summed NLL of the labelled tokens from the full logits of one unpadded conversation."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].double()
    target = torch.tensor(e.labels[1:])
    keep = target != -100
    nll = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
    return float(nll), int(keep.sum())


def test_batched_perplexity_equals_direct_computation(smol_base, smol_adapter_run):
    cfg = load_config(smol_adapter_run / "config.yaml")
    encoded, _ = encoded_test_split(smol_adapter_run, smol_base.tokenizer, eval_settings(cfg))
    encoded = encoded[:6]
    items, _ = score(
        smol_base.model, encoded, batch_tokens=600, pad_id=smol_base.tokenizer.pad_token_id, progress=False
    )
    assert [i["id"] for i in items] == [e.id for e in encoded]
    for e, item in zip(encoded, items, strict=True):
        nll, n = direct_nll(smol_base.model, e)
        assert item["den"] == n == e.n_assistant - (1 if e.labels[0] != -100 else 0)
        assert item["num"] == pytest.approx(nll, rel=2e-4)
    metric, items2, inputs = evaluate(smol_base.model, smol_base.tokenizer, encoded, n_boot=300, progress=False)
    total_nll = sum(direct_nll(smol_base.model, e)[0] for e in encoded)
    total_n = sum(direct_nll(smol_base.model, e)[1] for e in encoded)
    assert metric.value == pytest.approx(math.exp(total_nll / total_n), rel=2e-4)
    assert metric.ci_low < metric.value < metric.ci_high and metric.n == 6
    assert metric.higher_is_better is False and metric.aggregate == "exp_ratio"
    assert inputs["test_tokens"] and inputs["test_scored_tokens"] == total_n


def test_batches_respect_the_token_budget():
    enc = [Encoded(str(i), [1] * n, [1] * n, False, n) for i, n in enumerate([5, 50, 20, 50, 7, 33])]
    groups = batches_by_length(enc, 100)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for g in groups:
        assert max(len(enc[i].input_ids) for i in g) * len(g) <= 100 or len(g) == 1


def test_trained_adapter_changes_the_test_perplexity(smol_source, smol_adapter_run):
    cfg = load_config(smol_adapter_run / "config.yaml")
    base = load_for_eval(smol_source, device="cpu", dtype="float32")
    tuned = load_for_eval(smol_source, smol_adapter_run / "adapter", device="cpu", dtype="float32")
    enc_b, _ = encoded_test_split(smol_adapter_run, base.tokenizer, eval_settings(cfg))
    enc_t, _ = encoded_test_split(smol_adapter_run, tuned.tokenizer, eval_settings(cfg))
    assert [e.input_ids for e in enc_b] == [e.input_ids for e in enc_t]  # identical tokens for both sides
    mb, _, ib = evaluate(base.model, base.tokenizer, enc_b, n_boot=200, progress=False)
    mt, _, it = evaluate(tuned.model, tuned.tokenizer, enc_t, n_boot=200, progress=False)
    assert ib == it
    assert abs(mb.value - mt.value) > 1e-3
    assert tuned.adapter_sha and tuned.identity()["adapter_sha256"] == tuned.adapter_sha


def test_merged_and_unmerged_adapter_agree(smol_source, smol_adapter_run):
    """Merging (the default) changes the arithmetic, not the model: same perplexity, same greedy answers."""
    from peft import PeftModel

    from tunebench.core.config_schema import SamplingConfig
    from tunebench.evals.generation import generate

    cfg = load_config(smol_adapter_run / "config.yaml")
    assert cfg.eval.merge_adapter is True  # the default
    kw = {"device": "cpu", "dtype": "float32"}
    merged = load_for_eval(smol_source, smol_adapter_run / "adapter", **kw)
    unmerged = load_for_eval(smol_source, smol_adapter_run / "adapter", merge_adapter=False, **kw)
    assert not isinstance(merged.model, PeftModel) and isinstance(unmerged.model, PeftModel)
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    assert merged.identity()["adapter_merged"] is True and unmerged.identity()["adapter_merged"] is False
    assert "16-bit" in merged.identity()["adapter_base"]

    encoded, _ = encoded_test_split(smol_adapter_run, merged.tokenizer, eval_settings(cfg))
    pm, items_m, _ = evaluate(merged.model, merged.tokenizer, encoded, n_boot=50, progress=False)
    pu, items_u, _ = evaluate(unmerged.model, unmerged.tokenizer, encoded, n_boot=50, progress=False)
    assert pm.value == pytest.approx(pu.value, rel=1e-4)
    assert [i["num"] for i in items_m] == pytest.approx([i["num"] for i in items_u], rel=1e-4)

    torch.set_num_threads(1)  # see test_generation: decode steps on shared cores
    prompts = [
        [{"role": "user", "content": "Continue the Fibonacci sequence: 1, 1, 2, 3, 5, 8,"}],
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Name three colors."}],
    ]
    greedy = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=16)
    texts = [
        generate(m, prompts, greedy, seed=0, batch_size=3, progress=False, use_cache=False).texts
        for m in (merged, unmerged)
    ]
    assert texts[0] == texts[1] and all(texts[0])


def test_bad_adapters_are_refused_with_a_reason(tmp_path, smol_source, smol_adapter_run, tiny_llama_dir):
    with pytest.raises(AdapterError, match="no such folder"):
        load_for_eval(smol_source, tmp_path / "missing")
    half = tmp_path / "half"
    half.mkdir()
    (half / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        load_for_eval(smol_source, half)
    # an adapter trained on another base: refused from its manifest ...
    with pytest.raises(AdapterError, match="was trained on gguf-sha256:.* but the base is folder:"):
        load_for_eval(tiny_llama_dir, smol_adapter_run / "adapter", device="cpu")
    # ... and, without a manifest, from the tensor shapes
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(smol_adapter_run / "adapter", bare)
    (bare / "manifest.json").unlink()
    with pytest.raises(AdapterError, match="another base model"):
        load_for_eval(tiny_llama_dir, bare, device="cpu")
