"""The speed benchmarks' CPU-checkable parts: published shapes, the stand-in tokenizer, the arithmetic, the
reports, the no-CUDA exit, and the data export; plus one small end-to-end run on a GPU."""

from __future__ import annotations

import json
import os

import pytest

from tunebench.bench.cli import main
from tunebench.bench.evalmarkdown import render_eval_md
from tunebench.bench.evalrows import fixed_length_prompts
from tunebench.bench.evaltargets import eval_targets
from tunebench.bench.markdown import write_speed
from tunebench.bench.metrics import (
    config_line,
    find_best,
    mfu,
    parse_int_list,
    parse_names,
    percentile,
    points_of,
    speed_ratios,
    speed_targets,
    summarize_steps,
)
from tunebench.bench.shapes import PUBLISHED_PARAMS, count_params, shape_config, standin_tokenizer
from tunebench.bench.spawn import EXIT_NO_CUDA
from tunebench.bench.worker import BACKENDS


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def standin():
    return standin_tokenizer()


# ----------------------------------------------------------------------------- shapes and tokenizer


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-3.2-3b"])
def test_shapes_have_the_published_parameter_counts(name):
    cfg = shape_config(name)
    assert cfg.tie_word_embeddings and cfg.vocab_size == 128256 and cfg.num_key_value_heads == 8
    assert cfg.max_position_embeddings == 131072 and cfg.rope_parameters["rope_theta"] == 500000.0
    assert count_params(cfg) == PUBLISHED_PARAMS[name]  # built on the meta device: nothing is allocated


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-3.2-3b", "tiny"])
def test_parameter_count_is_the_architecture_sum_with_tied_embeddings_once(name):
    """count_params (what MFU divides by) equals the sum over the architecture's matrices and norms."""
    from transformers import LlamaConfig

    cfg = shape_config(name)
    h, n_layers, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h  # q, k+v, o, gate+up+down, two RMSNorms
    tied = vocab * h + n_layers * per_layer + h  # embedding (= lm_head), layers, final norm
    assert count_params(cfg) == tied
    untied = LlamaConfig(**{**cfg.to_dict(), "tie_word_embeddings": False})
    assert count_params(untied) == tied + vocab * h  # an untied lm_head is counted once more


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(ValueError, match="did you mean 'llama-3.2-1b'"):
        shape_config("llama-3.2-1B")


def test_standin_tokenizer_renders_llama31_with_real_marker_tokens(standin):
    from tunebench.data.encode import template_info

    tok = standin
    info = template_info(tok, "llama-3.1")
    assert info.end_of_turn == "<|eot_id|>"
    assert info.response_part == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert info.instruction_part == "<|start_header_id|>user<|end_header_id|>\n\n"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tokenize=False
    )
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert max(ids) < 128256 and len(tok) < 128256
    for marker in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert tok.convert_tokens_to_ids(marker) in ids  # one special token each, not split text
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|eot_id|>"


def test_standin_tokenizer_keeps_newlines_together_as_llama3_does(standin):
    # the marker's trailing "\n\n" must tokenize the same alone and before text, or Unsloth's response mask
    # (which searches for the marker's tokens) and the shared mask disagree
    marker = standin("<|end_header_id|>\n\n", add_special_tokens=False)["input_ids"]
    before_text = standin("<|end_header_id|>\n\nHello", add_special_tokens=False)["input_ids"]
    assert before_text[: len(marker)] == marker


def test_fixed_length_prompts_have_exactly_the_asked_length(standin):
    from tunebench.data.standardize import Conversation
    from tunebench.evals.prompting import render_prompt

    long_text = " ".join(f"word{i}" for i in range(200))
    convs = [
        Conversation(
            id=str(i),
            messages=[{"role": "user", "content": f"{i} {long_text}"}, {"role": "assistant", "content": "ok"}],
        )
        for i in range(5)
    ]
    convs.insert(
        0,
        Conversation(id="short", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]),
    )
    prompts, info = fixed_length_prompts(standin, convs, 8, 64)
    assert len(prompts) == 8 and info["distinct"] == 5  # the short one is passed over; the rest repeat
    assert all(len(render_prompt(standin, p)) == 64 for p in prompts)
    with pytest.raises(ValueError, match="template alone"):
        fixed_length_prompts(standin, convs, 2, 10)


# ----------------------------------------------------------------------------- arithmetic


def test_mfu_arithmetic():
    # 6 * 1e9 params * 1e4 tokens/s = 6e13 FLOP/s against 100 TFLOP/s
    assert mfu(1_000_000_000, 10_000, 100.0) == pytest.approx(0.6)
    assert mfu(1_000_000_000, 10_000, 100.0, flops_per_param_token=2.0) == pytest.approx(0.2)
    assert mfu(1, 1.0, None) is None


def test_summarize_steps_excludes_warmup_and_counts_real_tokens():
    # (step, time, cumulative real tokens, cumulative positions); steps 1-2 are warm-up
    marks = [
        (0, 0.0, 0, 0),
        (1, 10.0, 100, 200),
        (2, 11.0, 200, 400),
        (3, 12.0, 1200, 1600),
        (4, 14.0, 2200, 2800),
        (5, 15.0, 3200, 4000),
    ]
    s = summarize_steps(marks, warmup=2)
    assert s["measured_steps"] == 3 and s["seconds"] == 4.0 and s["real_tokens"] == 3000
    assert s["real_tokens_per_s"] == 750.0 and s["positions_per_s"] == 900.0
    assert s["step_s_median"] == 1.0 and s["step_s_p90"] == pytest.approx(1.8)
    assert s["padding_fraction"] == pytest.approx(1 - 3000 / 3600, abs=1e-4)
    with pytest.raises(ValueError, match="warm-up"):
        summarize_steps(marks[:3], warmup=2)


def test_percentile_and_point_pairing():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert points_of([2, 8, 16], [4]) == [(2, 4), (8, 4), (16, 4)]
    assert points_of([2, 16], [4, 1]) == [(2, 4), (16, 1)]
    with pytest.raises(ValueError, match="one per batch size"):
        points_of([2, 8, 16], [4, 1])


# ----------------------------------------------------------------------------- reports


def _speed_results():
    row = {
        "status": "ok",
        "shape": "llama-3.2-1b",
        "point": 0,
        "batch_size": 2,
        "grad_accum": 4,
        "measured_steps": 40,
        "positions_per_s": 0,
        "step_s_median": 1.0,
        "step_s_p10": 0.9,
        "step_s_p90": 1.2,
        "steady_peak_allocated_gib": 1.0,
        "peak_reserved_gib": 2.0,
    }
    return {
        "created": "2026-11-27T00:00:00Z",
        "command": "tunebench bench speed",
        "card": {"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "capability": "9.0"},
        "environment": {
            "python": "3.12.3",
            "cuda": "13.0",
            "torch": "2.11.0",
            "transformers": "5.17.0",
            "trl": "1.15.0",
            "peft": "0.21.0",
            "unsloth": "2026.10.9",
            "bitsandbytes": "0.50.2",
        },
        "calibration": {"peak_tflops": 700.0, "datasheet_tflops": 989.4, "method": "torch.mm"},
        "settings": {
            "quantization": "4-bit nf4",
            "lora": {"r": 16, "alpha": 16, "targets": ["q_proj"]},
            "max_length": 2048,
            "warmup_steps": 6,
            "measured_steps_first_point": 40,
            "first_point_is_seed_settings": True,
            "backends": {"unsloth": "u", "hf": "h"},
        },
        "shapes": {"llama-3.2-1b": {"params": 1_235_814_400, "weights": "random init"}},
        "rows": [
            dict(
                row,
                backend="unsloth",
                real_tokens_per_s=19000.0,
                real_tokens=1000,
                peak_allocated_gib=1.5,
                mfu=0.148,
                mask_agreement=1.0,
            ),
            dict(row, backend="hf", real_tokens_per_s=10000.0, real_tokens=1000, peak_allocated_gib=3.0, mfu=0.1),
            {
                "status": "error",
                "shape": "llama-3.2-1b",
                "backend": "hf-padfree",
                "point": 0,
                "batch_size": 2,
                "grad_accum": 4,
                "error": "ValueError: padding_free | max_length",
            },
        ],
    }


def test_speed_ratios_and_targets():
    res = _speed_results()
    (ratio,) = speed_ratios(res["rows"])
    assert ratio["backend"] == "unsloth" and ratio["real_tokens_per_s_ratio"] == 1.9
    assert ratio["peak_allocated_ratio"] == 0.5 and ratio["same_tokens"]
    t = {x["target"].split()[1]: x for x in speed_targets(res["rows"], ["llama-3.2-1b"])}
    assert t["real"]["met"] is True and t["real"]["margin"] == pytest.approx(0.1)
    assert t["peak"]["met"] is True and t["peak"]["value"] == 0.5
    mfu_target = next(x for x in speed_targets(res["rows"], ["llama-3.2-1b"]) if "MFU" in x["target"])
    assert mfu_target["met"] is False and mfu_target["where"] == "unsloth 2x4"
    none = speed_targets([], ["llama-3.2-1b"])
    assert all(x["met"] is None for x in none)


def _repeated(res, factors=(1.0, 1.02, 0.97)):
    """The rows of ``res`` three times (repeat 0, 1, 2), each repeat's rates scaled by its factor."""
    rows = []
    for k, f in enumerate(factors):
        for r in res["rows"]:
            rows.append(
                dict(
                    r,
                    repeat=k,
                    **({"real_tokens_per_s": r["real_tokens_per_s"] * f} if "real_tokens_per_s" in r else {}),
                )
            )
    return dict(res, rows=rows, settings=dict(res["settings"], repeats=len(factors)))


def test_speed_markdown_has_card_versions_settings_rows_and_targets(tmp_path):
    res = _repeated(_speed_results())
    res["host"] = {
        "before": {
            "cpu": "Intel Xeon Platinum 8480+",
            "cpu_count": 16,
            "hostname": "gpu-1",
            "loadavg_1_5_15": [0.5, 0.4, 0.3],
            "gpus": [
                {
                    "name": "NVIDIA H100",
                    "clocks.sm": "1980",
                    "clocks.max.sm": "1980",
                    "clocks.mem": "2619",
                    "power.limit": "700.00",
                    "driver_version": "580.1",
                    "temperature.gpu": "35",
                }
            ],
        },
        "after": {"loadavg_1_5_15": [1.5, 0.9, 0.5], "gpus": [{"clocks.sm": "1755"}]},
    }
    write_speed(res, tmp_path)
    md = (tmp_path / "speed.md").read_text()
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["targets"] and data["ratios"] and data["ratio_summaries"]
    for needle in (
        "NVIDIA H100 80GB HBM3",
        "torch 2.11.0",
        "transformers 5.17.0",
        "trl 1.15.0",
        "peft 0.21.0",
        "unsloth 2026.10.9",
        "bitsandbytes 0.50.2",
        "700 TFLOP/s",
        "r=16",
        "max length 2048",
        "Random weights",
        "stand-in tokenizer",
        "| unsloth | 1 | 2 × 4 | 19,000 |",
        "1.90",
        "Intel Xeon Platinum 8480+ × 16",
        "[0.5, 0.4, 0.3] before, [1.5, 0.9, 0.5] after",
        "SM clock 1980 MHz before / 1755 after",
        "power limit 700.00 W",
        "driver 580.1",
        "## Over repeats",
        "| llama-3.2-1b | 2 × 4 | unsloth | 3 | 1.90 [",
        "error: ValueError: padding_free / max_length",
        "## Targets",
        "**met**",
        "**not met**",
    ):
        assert needle in md, needle


def test_one_repeat_states_no_claim(tmp_path):
    res = _speed_results()
    write_speed(res, tmp_path)
    md = (tmp_path / "speed.md").read_text()
    assert "| **met** |" not in md and "inconclusive (one repeat: no interval, no claim)" in md
    assert "host: not recorded" in md


def test_eval_markdown_and_targets():
    res = {k: v for k, v in _speed_results().items() if k not in ("rows", "settings")}
    res["settings"] = {
        "dtype": "bfloat16",
        "attention": "sdpa",
        "max_length": 2048,
        "ppl_batch_tokens": [16384],
        "ppl_conversations": 500,
        "gen_batch": 64,
        "gen_batches": 2,
        "prompt_tokens": 64,
        "new_tokens": 128,
        "lora": {"r": 16, "alpha": 16, "targets": ["q_proj"], "init": "random"},
    }
    one = {"shape": "llama-3.2-1b"}
    gen = {
        **one,
        "kind": "generation",
        "batch": 64,
        "new_tokens": 8192,
        "cold_new_tokens_per_s": 2000.0,
        "ms_per_step": 25.0,
        "rows_x_steps_per_s": 2500.0,
        "peak_allocated_gib": 3.0,
    }
    res["rows"] = [
        {
            **one,
            "variant": "base",
            "kind": "perplexity",
            "batch_tokens": 16384,
            "input_tokens": 1000,
            "tokens_per_s": 100000.0,
            "cold_tokens_per_s": 50000.0,
            "mfu": 0.5,
            "mfu_actual_work": 0.45,
            "peak_allocated_gib": 7.0,
        },
        {
            **one,
            "variant": "lora-merged",
            "kind": "perplexity",
            "batch_tokens": 16384,
            "input_tokens": 1000,
            "tokens_per_s": 99000.0,
            "cold_tokens_per_s": 50000.0,
            "mfu": 0.495,
            "mfu_actual_work": 0.44,
            "peak_allocated_gib": 7.0,
        },
        {
            **gen,
            "variant": "base",
            "path": "suite generate",
            "decode_path": "graph",
            "sampling": "seed",
            "new_tokens_per_s": 2500.0,
        },
        {**gen, "variant": "lora-merged", "path": "suite generate", "sampling": "seed", "new_tokens_per_s": 2000.0},
        {**gen, "variant": "base", "path": "raw generate(static)", "sampling": "seed", "new_tokens_per_s": 2400.0},
        {
            **one,
            "variant": "base",
            "kind": "probe-run",
            "prompts": 34,
            "samples_per_prompt": 4,
            "batch": 256,
            "calls": 1,
            "new_tokens": 8704,
            "new_tokens_per_s": 21000.0,
            "cold_s": 30.0,
            "decode_path": "graph",
        },
        {**one, "variant": "lora-unmerged", "kind": "generation", "error": "RuntimeError: boom"},
        {
            **one,
            "variant": "base",
            "kind": "decode-attention",
            "attention": "grouped",
            "batch": 128,
            "width": 1024,
            "steps": 64,
            "captured": True,
            "seconds": 1.0,
            "ms_per_step": 15.0,
            "new_tokens_per_s": 8564.0,
        },
        {**one, "variant": "base", "kind": "graph-check", "sampling": "seed", "error": "RuntimeError: capture"},
        {
            **one,
            "variant": "base",
            "kind": "chat",
            "path": "tunebench chat",
            "decode_path": "graph",
            "sampling": "seed",
            "batch": 1,
            "answers": 8,
            "new_tokens": 1024,
            "new_tokens_per_s": 344.0,
            "ms_per_token": 2.91,
        },
        {
            **one,
            "variant": "base",
            "kind": "chat",
            "path": "raw generate(static) + TextStreamer",
            "sampling": "seed",
            "batch": 1,
            "answers": 8,
            "new_tokens": 1024,
            "new_tokens_per_s": 292.0,
            "ms_per_token": 3.42,
        },
    ]
    res["notes"] = ["Code: commit abc1234."]
    targets = eval_targets(res["rows"], ["llama-3.2-1b"], 64)
    by = {t["target"]: t for t in targets}
    assert by["perplexity MFU (2·N·tokens/s) >= 45% [base]"]["met"] is True
    assert by["perplexity tokens/s ÷ base >= 0.95 [lora-merged]"]["met"] is True
    assert by["generation new tokens/s ÷ base >= 0.95 [lora-merged, seed]"]["value"] == pytest.approx(0.8)
    assert by["generation new tokens/s ÷ base >= 0.95 [lora-merged, seed]"]["met"] is False
    assert by["suite generation ÷ raw generate(static) >= 1 [seed]"]["met"] is True
    assert by["default probe run new tokens/s >= 20,000 [base]"]["met"] is True
    assert by["perplexity tokens/s ÷ base >= 0.95 [lora-unmerged]"]["met"] is None  # not measured
    chat = by["chat new tokens/s ÷ raw generate(static) >= 1 [streamed, batch 1]"]
    assert chat["met"] is True and chat["value"] == pytest.approx(344 / 292, abs=1e-4)
    res["targets"] = targets
    md = render_eval_md(res)
    for needle in (
        "NVIDIA H100 80GB HBM3",
        "peft 0.21.0",
        "128 prompts of 64 tokens",
        "| base | 16,384 | 1,000 | 100,000 (50,000) | 50.0% |",
        "| base | suite generate (graph) | seed | 64 | 8,192 | 2,500 (2,000) |",
        "| base | raw generate(static) | seed | 64 |",
        "| base | 34×4 (graph) | 256 | 1 | 8,704 | 21,000 |",
        "**failed**: RuntimeError: boom",
        "| attention | batch | context width |",
        "|---|---:|---:|---:|---:|---:|",
        "| grouped | 128 | 1,024 | 64 | 15.00 | 8,564 |",
        "| seed | **failed**: RuntimeError: capture | | | | | |",
        "| tunebench chat (graph) | seed | 8 | 1,024 | 344 | 2.91 |",
        "## Notes\n\n- Code: commit abc1234.",
    ):
        assert needle in md, needle
    # the note names the tokenizer the shapes used
    assert ("Random weights, Llama 3 tokenizer" in md) == str(
        res["shapes"]["llama-3.2-1b"].get("tokenizer", "")
    ).startswith("Llama 3")
    res["shapes"]["llama-3.2-1b"]["tokenizer"] = "Llama 3 (converted from llama-models)"
    assert "**Random weights, Llama 3 tokenizer**" in render_eval_md(res)
    res["shapes"]["llama-3.2-1b"]["tokenizer"] = "stand-in (SmolLM2 vocabulary)"
    assert "**Random weights, stand-in tokenizer**" in render_eval_md(res)


def test_find_best_picks_the_fastest_row_that_fits_and_prints_its_config_line(tmp_path):
    base = {"status": "ok", "shape": "s", "grad_accum": 1, "find_best": True, "load_in_4bit": True}
    rows = [
        dict(
            base,
            backend="unsloth",
            layout="padded",
            batch_size=8,
            real_tokens_per_s=30000.0,
            peak_reserved_gib=10.0,
            gradient_checkpointing=True,
        ),
        dict(
            base,
            backend="unsloth-packed",
            layout="packed",
            batch_size=8,
            real_tokens_per_s=45000.0,
            peak_reserved_gib=30.0,
            gradient_checkpointing=False,
        ),
        dict(
            base,
            backend="unsloth-packed",
            layout="packed",
            batch_size=16,
            real_tokens_per_s=50000.0,
            peak_reserved_gib=60.0,
            gradient_checkpointing=False,
        ),
        dict(base, backend="unsloth-padfree", layout="padfree", batch_size=32, status="over_limit"),
    ]
    assert find_best(rows, None)["real_tokens_per_s"] == 50000.0
    best = find_best(rows, 40.0)  # the 16-row packed setting needs 60 GiB
    assert (best["layout"], best["batch_size"]) == ("packed", 8)
    assert find_best(rows, 5.0) is None
    line = config_line(best, "smollm2-gpu")
    assert line == (
        "tunebench run smollm2-gpu train.backend=unsloth train.batch_size=8 train.grad_accum=1 "
        "train.padding_free=false train.packing=true train.gradient_checkpointing=false "
        "model.load_in_4bit=on"
    )
    # every override the line gives is a real config key with a valid value
    import shlex

    from tunebench.core.config import load_config
    from tunebench.core.config_resolve import Machine

    gpu = Machine(cuda=True, bf16=True, world_size=1, unsloth_installed=True)  # the line is for the GPU it ran on
    cfg = load_config("smoke", shlex.split(line)[3:], machine=gpu)
    assert cfg.train.packing and not cfg.train.padding_free and cfg.train.batch_size == 8
    assert not cfg.train.gradient_checkpointing and cfg.model.load_in_4bit == "on"
    padded = dict(base, backend="unsloth-padded", layout="padded", batch_size=8, compiled_blocks=16)
    assert "train.padding_free=false train.packing=false" in config_line(padded)
    assert config_line(padded).endswith("train.compile_blocks=true model.load_in_4bit=on")
    assert "train.compile_blocks=false" in config_line(dict(padded, compiled_blocks=0))
    assert load_config("smoke", shlex.split(config_line(padded))[3:], machine=gpu).train.compile_blocks is True


def test_find_best_candidates_ascend_within_each_layout_and_the_report_shows_the_choice(tmp_path):
    import argparse

    from tunebench.bench.trainspeed import find_best_candidates

    args = argparse.Namespace(layouts="packed,padded", grad_ckpt="on,off", find_best_batches="16,4,8")
    cands = find_best_candidates(args)
    assert len(cands) == 2 * 2 * 3 and all(c["grad_accum"] == 1 for c in cands)
    groups: dict = {}
    for c in cands:
        groups.setdefault((c["layout"], c["gradient_checkpointing"]), []).append(c["batch_size"])
    assert all(b == [4, 8, 16] for b in groups.values()) and len(groups) == 4
    with pytest.raises(ValueError, match="did you mean 'padfree'"):
        find_best_candidates(argparse.Namespace(layouts="padfre", grad_ckpt="on", find_best_batches="4"))
    res = _speed_results()
    res["settings"]["find_best"] = {"backend": "unsloth", "memory_limit_gib": 40.0, "measured_steps": 8}
    row = dict(
        res["rows"][0],
        backend="unsloth-packed",
        layout="packed",
        batch_size=8,
        grad_accum=1,
        find_best=True,
        gradient_checkpointing=False,
        point=None,
        real_tokens_per_s=60000.0,
        mfu=0.46,
    )
    res["rows"].append(row)
    res["find_best"] = {
        "llama-3.2-1b": {
            "backend": "unsloth-packed",
            "batch_size": 8,
            "grad_accum": 1,
            "gradient_checkpointing": False,
            "real_tokens_per_s": 60000.0,
            "mfu": 0.46,
            "peak_reserved_gib": 2.0,
            "config_line": config_line(row),
        }
    }
    write_speed(res, tmp_path)
    md = (tmp_path / "speed.md").read_text()
    for needle in (
        "## Fastest setting (--find-best)",
        "**unsloth-packed 8 × 1**",
        "40.0 GiB",
        "| unsloth-packed, no ckpt (find-best) | 1 | 8 × 1 | 60,000 |",
        "train.packing=true",
    ):
        assert needle in md, needle
    mfu_target = next(t for t in json.loads((tmp_path / "speed.json").read_text())["targets"] if "MFU" in t["target"])
    # one sweep row: the best MFU is named, but one run states no interval, so no claim (issue 28)
    assert mfu_target["value"] == 0.46 and mfu_target["where"] == "unsloth-packed 8x1"
    assert mfu_target["verdict"] == "inconclusive" and mfu_target["met"] is None


# ----------------------------------------------------------------------------- command line


def test_eval_parts_are_checked_before_anything_runs(capsys, tmp_path):
    assert main(["eval", "--parts", "generation,decodes", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown decodes" in err and "choose from perplexity, generation" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(_cuda(), reason="checks the behaviour without CUDA")
@pytest.mark.parametrize("command", ["speed", "eval"])
def test_without_cuda_speed_and_eval_exit_3_and_say_why(command, capsys, tmp_path):
    assert main([command, "--out", str(tmp_path / "out")]) == EXIT_NO_CUDA
    assert "needs a CUDA GPU; measured numbers only come from one" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_flag_values_are_named():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="--batch-size"):
        parse_int_list("2,x", "--batch-size")
    with pytest.raises(ValueError, match="did you mean 'unsloth'"):
        parse_names("unslot", BACKENDS, "--backends")


def test_export_data_writes_sharegpt_jsonl_that_read_source_reads_back(tmp_path):
    from tunebench.core.config_schema import DataConfig
    from tunebench.data.sources import read_source
    from tunebench.data.standardize import standardize_and_split

    out = tmp_path / "convs.jsonl"
    assert main(["export-data", "--n", "25", "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 25
    first = json.loads(lines[0])
    assert set(first) == {"id", "conversations"} and {"from", "value"} == set(first["conversations"][0])
    raw = read_source(str(out))
    assert len(raw.records) == 25 and not raw.warnings and not raw.malformed
    std = standardize_and_split(raw, DataConfig(source=str(out), max_validation=0, max_test=0))
    assert (
        len(std.splits["train"]) == 25 and sum(std.dropped.values()) == 0
    )  # same content hash: all land in train again


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.slow
def test_speed_end_to_end_on_a_tiny_shape(tmp_path):
    """Both backends through the suite's train() on a 2-layer shape, a few steps each.

    Where the packaged model and data are not installed (the GPU machine), point TUNEBENCH_SPEED_TOKENIZER and
    TUNEBENCH_SPEED_DATA at what `export-tokenizer` and `export-data` wrote.
    """
    inputs = ["--data", os.environ.get("TUNEBENCH_SPEED_DATA", "packaged:sharegpt-v3")]
    if os.environ.get("TUNEBENCH_SPEED_TOKENIZER"):
        inputs += ["--tokenizer", os.environ["TUNEBENCH_SPEED_TOKENIZER"]]
    code = main(
        [
            "speed",
            "--shape",
            "tiny",
            "--backends",
            "unsloth,unsloth-padded,hf",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--max-length",
            "512",
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
            *inputs,
        ]
    )
    data = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert code == 0, [r.get("error") for r in data["rows"]]
    assert {r["backend"] for r in data["rows"]} == {"unsloth", "unsloth-padded", "hf"}
    assert all(r["real_tokens_per_s"] > 0 and r["peak_allocated_gib"] > 0 for r in data["rows"])
    rows = {r["backend"]: r for r in data["rows"]}
    # a 3-step run: auto keeps Unsloth's eager blocks; compile_blocks=true compiles both of the shape's blocks
    assert rows["unsloth"]["compiled_blocks"] == 0 and rows["unsloth-padded"]["compiled_blocks"] == 2
    assert (tmp_path / "out" / "speed.md").exists() and data["calibration"]["peak_tflops"] > 0


# ----------------------------------------------------------------------------- data-parallel scaling


def test_world_size_launches_torchrun_and_scaling_is_computed_from_one_invocation():
    import sys

    from tunebench.bench.scaling import combine_rank_marks, render_scaling, scaling_rows, worker_command

    assert worker_command("s.json", 1) == [sys.executable, "-m", "tunebench.bench.speed", "worker", "s.json"]
    cmd = worker_command("s.json", 2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[-4:] == ["-m", "tunebench.bench.speed", "worker", "s.json"]
    # rank 0's clock, every rank's tokens
    marks = combine_rank_marks([[(0, 0.0, 0, 0), (1, 1.0, 100, 120)], [(0, 0.1, 0, 0), (1, 1.2, 80, 120)]])
    assert marks == [(0, 0.0, 0, 0), (1, 1.0, 180, 240)]
    rows = [
        {
            "status": "ok",
            "shape": "s",
            "backend": "hf",
            "point": 0,
            "batch_size": 2,
            "grad_accum": 4,
            "real_tokens_per_s": 1000.0,
        },
        {
            "status": "ok",
            "shape": "s",
            "backend": "hf",
            "point": 0,
            "batch_size": 2,
            "grad_accum": 4,
            "real_tokens_per_s": 1800.0,
            "world_size": 2,
        },
    ]
    (s,) = scaling_rows(rows)
    assert (s["speedup"], s["efficiency"], s["effective_batch_n"]) == (1.8, 0.9, 16)
    assert "90%" in "\n".join(render_scaling([s]))
    # the one-process ratios and targets ignore the data-parallel row
    from tunebench.bench.metrics import speed_ratios, speed_targets

    assert speed_ratios(rows) == []
    assert all(t["value"] is None for t in speed_targets(rows, ["s"]) if "÷ hf" in t["target"])


@pytest.mark.slow  # trains through the suite's trainer
def test_train_worker_runs_one_point_through_the_suites_trainer(tmp_path, tiny_llama_dir):
    """The speed worker builds its run config itself: it must be resolved for the machine (dtype, optimizer), as
    a preset is, or the trainer refuses it. One hf point on CPU, bf16-LoRA settings (no 4-bit)."""
    from tunebench.bench.prepared import load_prepared, prepare_data
    from tunebench.bench.worker import run_train_point
    from tunebench.core.errors import DataError

    prepared, summary, data = prepare_data(str(tiny_llama_dir), "auto", "packaged:sharegpt-v3", 256, 16, tmp_path)
    assert prepared.suffix == ".json" and load_prepared(prepared) == data  # plain data, read back exactly
    other = tmp_path / "other.json"
    other.write_text('{"rows": []}')
    with pytest.raises(DataError, match="not a tunebench prepared-data file"):
        load_prepared(other)
    spec = {
        "kind": "train",
        "label": "cpu",
        "shape": "tiny",
        "backend": "hf",
        "model_dir": str(tiny_llama_dir),
        "chat_template": "auto",
        "prepared": str(prepared),
        "data_source": "packaged:sharegpt-v3",
        "batch_size": 2,
        "grad_accum": 1,
        "max_length": 256,
        "warmup": 1,
        "steps": 2,
        "r": 4,
        "alpha": 8,
        "targets": ["q_proj", "v_proj"],
        "load_in_4bit": False,
        "params": 10**6,
        "peak_tflops": None,
        "datasheet_tflops": None,
        "gradient_checkpointing": False,
        "run_dir": str(tmp_path / "run"),
        "profile_steps": 1,
    }
    row = run_train_point(spec)
    assert 0 < summary["conversations"] <= 16
    # the profiled step runs after the measured ones and feeds no measured figure; on CPU the GPU was never busy
    assert row["steps_run"] == 4 and row["measured_steps"] == 2 and row["real_tokens_per_s"] > 0
    assert row["trace"]["profiled_steps"] == 1 and row["trace"]["gpu_busy_share"] == 0
    assert row["trace"]["wall_s_per_step"] > 0
    assert row["load_in_4bit"] is False and row["backend_used"] == "hf"
    # the host-side split of each step is recorded (on CPU there is no sync to wait in: the share is ~0)
    assert 0 <= row["sync_wait_share_median"] < 0.5 and row["process_cpu_per_wall"] > 0


def test_a_failing_part_becomes_a_row_that_says_so():
    from tunebench.bench.evalworker import _guarded, _guarded_rows

    def boom(*args):
        raise RuntimeError("out of memory")

    assert _guarded("graph-check", boom, 1) == {"kind": "graph-check", "error": "RuntimeError: out of memory"}
    assert _guarded_rows("lm-eval", boom, cache="auto") == [
        {"kind": "lm-eval", "cache": "auto", "error": "RuntimeError: out of memory"}
    ]
    assert _guarded_rows("chat", lambda n: [{"n": n}], 3) == [{"n": 3}]


def test_trace_summary_reads_busy_idle_and_exposed_copy_time_from_device_events():
    """bench speed --profile-steps: the GPU's busy share is the union of its events over the window's wall time,
    and copy time under a kernel is hidden, the rest exposed."""
    from tunebench.bench.trace import overlap_length, summarize_device_events, union_length

    assert union_length([(0, 2), (1, 3), (5, 6)]) == 4 and union_length([]) == 0
    assert overlap_length([(0, 4)], [(1, 2), (3, 6)]) == 2
    us = 1e6
    events = [
        ("ampere_gemm", 0, 0.4 * us),
        ("void elementwise", 0.3 * us, 0.5 * us),  # kernels 0-0.5 s
        ("Memcpy HtoD (Pinned -> Device)", 0.4 * us, 0.7 * us),  # 0.1 s under a kernel, 0.2 s exposed
        ("Memcpy DtoH (Device -> Pinned)", 0.9 * us, 1.0 * us),
        ("Memset (Device)", 1.5 * us, 1.6 * us),
    ]
    s = summarize_device_events(events, wall_s=2.0, steps=2)
    assert s["gpu_busy_share"] == pytest.approx((0.7 + 0.1 + 0.1) / 2)
    assert s["kernel_busy_share"] == pytest.approx(0.25) and s["kernels_per_step"] == 1.0
    assert s["htod_s_per_step"] == pytest.approx(0.15) and s["dtoh_s_per_step"] == pytest.approx(0.05)
    assert s["copy_exposed_s_per_step"] == pytest.approx(0.15) and s["wall_s_per_step"] == 1.0
    assert s["gpu_idle_s_per_step"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="needs both > 0"):
        summarize_device_events(events, wall_s=0, steps=2)


def test_spawn_runs_a_real_worker_through_core_child_and_returns_what_it_wrote(tmp_path):
    """The bench parent and lm-eval share one child runner: the spec is written, the worker process runs and its
    result file is read back (here a job the worker refuses, which it records instead of crashing)."""
    from tunebench.bench.spawn import Budget, spawn

    res = spawn({"label": "bogus", "kind": "no-such-kind"}, tmp_path, Budget(300), min_seconds=1)
    assert res["status"] == "error" and "unknown worker kind 'no-such-kind'" in res["error"], res
    assert res["worker_s"] > 0 and (tmp_path / "specs" / "bogus.json").exists()
    assert spawn({"label": "late"}, tmp_path, Budget(5), min_seconds=60)["status"] == "skipped"
