"""GGUF export round trip on CPU: the packaged SmolLM2 with a 3-step adapter, exported once for the module.

The f16 file read back by transformers must give the merged model's logits, render and tokenize the run's
conversations identically, and the q8_0 file is scored on the run's own test tokens and compared with the
adapter item by item. Bad input (no adapter, k-quants, other architectures, a GGUF without the run's
template, a full disk) is refused with exit code 2 and nothing already written is replaced.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tunebench.app.eval_settings import eval_settings
from tunebench.core.config import load_config
from tunebench.core.errors import ExportError, ModelError
from tunebench.core.io import sha256_file

EVAL_ONLY_PPL = ["eval.lm_eval_tasks=[]", "eval.probe_files=[]", "eval.bootstrap_samples=400", "model.dtype=float32"]


@pytest.fixture(scope="module")
def exported(smol_adapter_run, tmp_path_factory):
    """A copy of the session run with its tuned results, f16 + q8_0 exports and their results (pipeline stage)."""
    from tunebench.app.pipeline import export_stage
    from tunebench.app.stages import Stages
    from tunebench.evals.runner import evaluate_model

    run = tmp_path_factory.mktemp("gguf") / "run"
    shutil.copytree(smol_adapter_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval", "export"))
    cfg = load_config(run / "config.yaml", [*EVAL_ONLY_PPL, "export.gguf=[f16,q8_0]"])
    settings = eval_settings(cfg)
    evaluate_model(settings, run, "tuned", run / "adapter", run / "eval" / "tuned" / "results.json", progress=False)
    evaluate_model(settings, run, "base", None, run / "eval" / "base" / "results.json", progress=False)
    stages = Stages(run)
    export_stage(cfg, run, stages, "adapter-fp", "eval-fp", progress=False)
    return run, cfg, stages


def test_f16_gguf_gives_the_merged_models_logits(exported):
    import torch
    from transformers import AutoModelForCausalLM

    from tunebench.models.loading import resolve_model
    from tunebench.train.export import merge_adapter

    run, _, _ = exported
    merged, tok, _, _ = merge_adapter(run, "float32")
    back = AutoModelForCausalLM.from_pretrained(
        resolve_model(run / "export" / "model-f16.gguf").path, dtype=torch.float32
    )
    text = (
        tok.apply_chat_template(
            [{"role": "user", "content": "Write a haiku about the sea, ünïcødé 🙂"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        + "Waves fold into foam"
    )
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = merged(ids).logits, back(ids).logits
        for p in merged.parameters():  # what an f16 GGUF stores: 2-D weights in f16, norms in f32
            if p.ndim == 2:
                p.copy_(p.half().float())
        rounded = merged(ids).logits
    assert (got - rounded).abs().max().item() < 2e-3  # the file holds exactly the merged weights, rounded to f16
    assert (got - want).abs().max().item() < 0.02 * want.abs().max().item()  # within fp16 rounding of fp32
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.97


def test_gguf_tokenizer_and_template_render_what_the_run_rendered(exported):
    from transformers import AutoTokenizer

    from tunebench.models.loading import gguf_field, load_tokenizer, resolve_model
    from tunebench.models.modelfile import SENTINELS

    run, cfg, _ = exported
    path = run / "export" / "model-f16.gguf"
    ours = AutoTokenizer.from_pretrained(run / "adapter")
    theirs, name = load_tokenizer(resolve_model(path), cfg.model.chat_template)
    assert gguf_field(path, "tokenizer.chat_template") == ours.chat_template
    assert gguf_field(path, "tokenizer.ggml.pre") == "smollm" and gguf_field(path, "tokenizer.ggml.model") == "gpt2"
    assert (theirs.eos_token_id, theirs.pad_token_id) == (ours.eos_token_id, ours.pad_token_id)
    for messages in SENTINELS:  # plain, system prompt, multi-turn, unicode + multi-turn + system
        a = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        b = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert a == b
        assert ours(a, add_special_tokens=False).input_ids == theirs(b, add_special_tokens=False).input_ids


def test_modelfile_carries_the_template_and_stop_tokens(exported):
    import json

    run, _, _ = exported
    text = (run / "export" / "model-q8_0.Modelfile").read_text()
    assert "FROM ./model-q8_0.gguf" in text
    assert 'TEMPLATE """{{- if .System }}<|im_start|>system' in text and "{{ .Content }}<|im_end|>" in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    manifest = json.loads((run / "export" / "export.json").read_text())
    assert manifest["ollama_template"] == "chatml" and manifest["writer"].startswith("gguf-py")
    assert [a["quant"] for a in manifest["artifacts"]] == ["f16", "q8_0"]
    assert manifest["artifacts"][1]["sha256"] == sha256_file(run / "export" / "model-q8_0.gguf")


def test_q8_0_is_scored_on_the_runs_inputs_and_compared_with_the_adapter(exported, tmp_path):
    from tunebench.compare.comparison import compare
    from tunebench.compare.runs import compare_artifacts, load_artifact_results, load_run_results
    from tunebench.gate.verdict import evaluate_gate, gate_main
    from tunebench.reports.render import render_report

    run, cfg, _ = exported
    results = load_run_results(run)
    arts = load_artifact_results(run)
    assert set(arts) == {"f16", "q8_0"}
    assert arts["q8_0"].inputs["test_tokens"] == results["tuned"].inputs["test_tokens"]  # identical tokens
    assert arts["q8_0"].model["artifact"] == "model-q8_0.gguf"
    comps = compare_artifacts(results["tuned"], arts, cfg.report.alpha, cfg.eval.bootstrap_samples)
    row = comps["q8_0"].row("perplexity/test")
    assert row.base == results["tuned"].metric("perplexity/test").value  # paired against the adapter
    assert row.ci_low is not None and row.ci_low <= row.delta <= row.ci_high and row.n > 5
    assert abs(row.rel_delta) < 0.05  # q8_0 costs little
    assert abs(comps["f16"].row("perplexity/test").rel_delta) < abs(row.rel_delta) + 1e-3

    main = compare(results["base"], results["tuned"], cfg.report.alpha, cfg.eval.bootstrap_samples)
    report = render_report(main, {"export_comparisons": comps})
    assert "## Export" in report and "**q8_0** changes `perplexity/test` by" in report

    loose = [{"metric": "perplexity/test", "artifact": "q8_0", "max_regression_rel": 0.5}]
    strict = [{"metric": "perplexity/test", "artifact": "q8_0", "min_improvement_rel": 0.5}]
    assert evaluate_gate(main, loose, comps).passed
    verdict = evaluate_gate(main, strict, comps)
    assert not verdict.passed and verdict.rows[0].metric == "perplexity/test [q8_0 vs adapter]"
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - metric: perplexity/test\n    artifact: q8_0\n    min_improvement_rel: 0.5\n")
    assert gate_main(run, rules, tmp_path / "gate.json") == 1
    rules.write_text("rules:\n  - metric: perplexity/test\n    artifact: q4_0\n    max_regression: 0\n")
    assert gate_main(run, rules, tmp_path / "gate.json") == 2  # an artifact never evaluated


def test_llamacpp_parity_reuses_the_tuned_evaluations_pass(exported, tmp_path):
    """Parity in llama.cpp takes the adapter's log-probs from the tuned evaluation's saved pass (its hidden states at
    the scored positions, through the adapter's head) instead of running the adapter again: the same metrics as a
    forward pass of its own, which it falls back to when the file is gone or was written for another adapter.
    (test_llamacpp.py checks that `eval --runtime llama.cpp` of the smoke run's exports takes this path.)"""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from tunebench.evals.llamacpp import LlamaCppModel, perplexity_metric
    from tunebench.evals.llamacpp_eval import _context, adapter_parity
    from tunebench.evals.parity import HIDDEN_FILE
    from tunebench.evals.runner import encoded_test_split

    run, cfg, _ = exported
    saved = run / "eval" / "tuned" / HIDDEN_FILE
    assert saved.is_file()
    settings = eval_settings(cfg)
    encoded, _ = encoded_test_split(run, AutoTokenizer.from_pretrained(str(run / "adapter")), settings)
    model = LlamaCppModel.open(run / "export" / "model-q8_0.gguf", "chatml", n_ctx=_context(encoded, settings))
    artifact_lp = perplexity_metric(model, encoded, "test", cfg.eval.bootstrap_samples, cfg.report.alpha)[3]
    reused, side = adapter_parity(settings, run / "adapter", encoded, artifact_lp)
    assert side.startswith("the tuned evaluation's pass")
    alone = tmp_path / "alone"
    shutil.copytree(run / "adapter", alone / "adapter")
    computed, side = adapter_parity(settings, alone / "adapter", encoded, artifact_lp)
    assert side == "a forward pass of the adapter"
    assert [m.name for m, _ in reused] == [m.name for m, _ in computed] and len(reused) == 4
    for (a, _), (b, _) in zip(reused, computed, strict=True):  # batched (the evaluation's) and one-at-a-time passes
        assert a.n == b.n and a.details["scored_tokens"] == b.details["scored_tokens"], a.name
        for x, y in ((a.value, b.value), (a.ci_low, b.ci_low), (a.ci_high, b.ci_high)):
            assert x == pytest.approx(y, rel=1e-4, abs=1e-6), a.name
    with safe_open(str(saved), framework="pt") as f:  # a file written for another adapter is never read
        key = f.metadata()["key"]
    (alone / "eval" / "tuned").mkdir(parents=True)
    forged = saved.read_bytes().replace(key.encode(), f"{int(key, 16) ^ 1:0{len(key)}x}".encode(), 1)
    (alone / "eval" / "tuned" / HIDDEN_FILE).write_bytes(forged)
    assert adapter_parity(settings, alone / "adapter", encoded, artifact_lp)[1] == "a forward pass of the adapter"


def test_export_stage_is_cached(exported):
    from tunebench.app.pipeline import export_stage

    run, cfg, stages = exported
    files = [run / "export" / "model-q8_0.gguf", run / "eval" / "gguf-q8_0" / "results.json"]
    before = [p.stat().st_mtime_ns for p in files]
    timings = json.loads((run / "timings.json").read_text())["stages"]
    assert set(timings) == {"export", "eval_gguf-f16", "eval_gguf-q8_0"} and all(t > 0 for t in timings.values())
    export_stage(cfg, run, stages, "adapter-fp", "eval-fp", progress=False)
    assert [p.stat().st_mtime_ns for p in files] == before
    assert json.loads((run / "timings.json").read_text())["stages"] == timings  # a fresh stage keeps its time


def test_bad_input_is_refused_with_exit_code_2(exported, tmp_path, capsys):
    import gguf
    from transformers import GPT2Config

    from tunebench.app.cli import main
    from tunebench.train.gguf_export import parse_quants
    from tunebench.train.gguf_tensors import check_architecture

    run, _, _ = exported
    with pytest.raises(ExportError, match=r"q4_k_m is a llama.cpp mixture.*Supported here: .*q8_0.*llama-quantize"):
        parse_quants("f16,q4_k_m")
    with pytest.raises(ExportError, match="Did you mean 'q8_0'"):
        parse_quants("q8")
    with pytest.raises(ExportError, match="architecture 'gpt2' is not supported"):
        check_architecture(GPT2Config())
    (tmp_path / "norun").mkdir()
    assert main(["export", str(tmp_path / "norun"), "--gguf"]) == 2
    assert "no adapter to export" in capsys.readouterr().err
    assert main(["export", str(run), "--gguf", "--quant", "q4_k_m"]) == 2

    # a GGUF whose metadata lacks the chat template, and one with another template
    for name, template in (("bare.gguf", None), ("other.gguf", "{{ messages }}")):
        w = gguf.GGUFWriter(tmp_path / name, "llama")
        if template:
            w.add_chat_template(template)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    assert main(["eval", "--model", str(tmp_path / "bare.gguf"), "--data-from", str(run)]) == 2
    assert "no tokenizer.chat_template" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "other.gguf"), "--data-from", str(run)]) == 2
    assert "is not the one run" in capsys.readouterr().err
    assert not (run / "eval" / "gguf-bare").exists()

    from tunebench.evals.runner import check_artifact_template

    with pytest.raises(ModelError):
        check_artifact_template(tmp_path / "bare.gguf", run)


def test_a_full_disk_leaves_the_previous_file_intact(tiny_llama_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunebench.models.loading import resolve_model
    from tunebench.train import gguf_export

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    meta = gguf_export.tokenizer_metadata(tok, model.config, resolve_model(tiny_llama_dir))
    target = tmp_path / "model-f16.gguf"
    info = {"name": "tiny", "tunebench": {}}
    gguf_export.write_gguf(target, model, meta, "f16", info)
    old = sha256_file(target)

    full = tmp_path / "full"
    os.symlink("/dev/full", full)  # every write to /dev/full fails with ENOSPC, as on a full disk
    monkeypatch.setattr(gguf_export, "_temp_path", lambda final: full)
    with pytest.raises(ExportError, match="disk filled up"):
        gguf_export.write_gguf(target, model, meta, "q8_0", info)
    assert sha256_file(target) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-f16.gguf"]  # no temp file left behind


def test_llama3_rope_scaling_survives_the_round_trip(tiny_llama_dir, tmp_path):
    """Llama 3 style: rope scaling goes into rope_freqs (for llama.cpp) and comes back into the transformers config."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunebench.models.loading import resolve_model
    from tunebench.train import gguf_export

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rope_parameters=rope,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    meta = gguf_export.tokenizer_metadata(tok, cfg, resolve_model(tiny_llama_dir))
    path = tmp_path / "model-f32.gguf"
    gguf_export.write_gguf(path, model, meta, "f32", {"name": "tiny", "tunebench": gguf_export.rope_provenance(cfg)})
    names = {t.name for t in gguf.GGUFReader(path).tensors}
    assert "rope_freqs.weight" in names and "output.weight" not in names  # tied embeddings: no separate head
    back = AutoModelForCausalLM.from_pretrained(resolve_model(path).path, dtype=torch.float32).eval()
    assert back.config.rope_parameters["rope_type"] == "llama3" and back.config.rope_parameters["factor"] == 32.0
    ids = tok("The quick brown fox jumps over the lazy dog " * 4, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, back(ids).logits, atol=1e-4)
