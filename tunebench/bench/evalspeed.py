"""`tunebench bench eval`: speed of the suite's evaluation paths on a CUDA GPU.

Per shape, in one worker process: held-out perplexity through ``evals.perplexity.score`` (the assistant-token
scorer every evaluation uses) at one or more batch-token budgets, and batched probe generation through
``evals.generation.generate`` (sampling at temperature 1.5 / min_p 0.1, and greedy) on prompts cut to a fixed
token length; first for the base model, then with a random-init LoRA adapter attached by peft, as a tuned
model is evaluated. Results: eval_speed.json, then eval_speed.md rendered from it.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from tunebench.bench.shapes import load_prepared
from tunebench.core.io import atomic_write_json, atomic_write_text

log = logging.getLogger("tunebench.speed")

Messages = list[dict[str, str]]


def fixed_length_prompts(tok: Any, conversations: list[Any], n: int, prompt_tokens: int) -> tuple[list[Messages], dict]:
    """``n`` single-turn prompts whose rendered form (chat template, generation prompt) is ``prompt_tokens`` long.

    Each prompt is the first user message of a real conversation, cut at a token boundary; conversations whose
    first message is too short are passed over. When fewer than ``n`` fit, the list is repeated (generation
    speed does not care) and the report says how many were distinct.

    Raises:
        ValueError: the template alone is longer than ``prompt_tokens``, or no conversation is long enough.
    """
    from tunebench.evals.generation import render_prompt

    overhead = len(render_prompt(tok, [{"role": "user", "content": ""}]))
    want = prompt_tokens - overhead
    if want < 1:
        raise ValueError(f"--prompt-tokens {prompt_tokens}: the chat template alone takes {overhead} tokens; "
                         f"give more than {overhead}")
    out: list[Messages] = []
    for conv in conversations:
        user = next((m["content"] for m in conv.messages if m["role"] == "user"), "")
        ids = tok(user, add_special_tokens=False)["input_ids"]
        k = want
        for _ in range(4):  # decode/re-encode can merge or split a token at the cut: adjust and retry
            if not 0 < k <= len(ids):
                break
            msgs = [{"role": "user", "content": tok.decode(ids[:k])}]
            got = len(render_prompt(tok, msgs))
            if got == prompt_tokens:
                out.append(msgs)
                break
            k += prompt_tokens - got
        if len(out) == n:
            break
    if not out:
        raise ValueError(f"no conversation has a first user message of {want}+ tokens; lower --prompt-tokens")
    distinct = len(out)
    while len(out) < n:
        out += out[: n - len(out)]
    return out, {"prompts": n, "distinct": distinct, "prompt_tokens": prompt_tokens, "template_tokens": overhead}


def with_random_lora(loaded: Any, r: int, alpha: int, targets: list[str]) -> Any:
    """The same model with a random-init (non-zero B) LoRA adapter attached by peft, as a tuned model is."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunebench.evals.modeling import Loaded

    torch.manual_seed(0)
    model = get_peft_model(loaded.model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                    lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM"))
    model.eval()
    return Loaded(model, loaded.tokenizer, loaded.template, loaded.source,
                  adapter=f"random-init LoRA r={r} alpha={alpha} (not trained)", adapter_sha=None,
                  device=loaded.device, dtype=loaded.dtype)


def _sync_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def perplexity_row(loaded: Any, encoded: list[Any], batch_tokens: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s of ``evals.perplexity.score`` over ``encoded``: a cold pass, then the measured warm pass.

    The cold pass meets every batch shape for the first time (kernel selection, allocator growth); an
    evaluation scores each split once, so both numbers matter, but only the warm one says what the code can do.
    """
    from tunebench.bench.speed import mfu
    from tunebench.evals.perplexity import batches_by_length, score

    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    _sync_reset()
    _, cold = score(loaded.model, encoded, batch_tokens, pad, progress=False)
    _sync_reset()
    items, seconds = score(loaded.model, encoded, batch_tokens, pad, progress=True)
    tokens = sum(len(e.input_ids) for e in encoded)
    scored = sum(i["den"] for i in items)
    padded = sum(len(g) * len(encoded[g[0]].input_ids) for g in batches_by_length(encoded, batch_tokens))
    n, head = spec["params"], spec["head_params"]
    body = n - head * (1 if spec["tied"] else 2)  # the embedding lookup costs no FLOPs; the head runs per scored token
    tps = tokens / seconds
    return {
        "kind": "perplexity", "batch_tokens": batch_tokens, "conversations": len(encoded), "input_tokens": tokens,
        "scored_tokens": scored, "padded_positions": padded, "seconds": round(seconds, 3),
        "tokens_per_s": round(tps, 1), "cold_tokens_per_s": round(tokens / cold, 1),
        "mfu": mfu(n, tps, spec.get("peak_tflops"), 2.0),
        "mfu_actual_work": ((2 * body * tokens + 2 * head * scored) / seconds / (spec["peak_tflops"] * 1e12)
                            if spec.get("peak_tflops") else None),
        "mean_nll": round(sum(i["num"] for i in items) / max(1, scored), 4), "peak_allocated_gib": _peak_gib(),
    }


def generation_row(loaded: Any, prompts: list[Messages], sampling: Any, batch: int) -> dict[str, Any]:
    """New tokens/s of ``evals.generation.generate`` (cache off), after one untimed batch of the same settings."""
    from tunebench.evals.generation import generate

    # a full-length warm-up: a short one leaves first-time costs (KV-cache growth, sampling kernels) in the timing
    warm = generate(loaded, prompts[:batch], sampling, seed=99, batch_size=batch, progress=False, use_cache=False)
    _sync_reset()
    g = generate(loaded, prompts, sampling, seed=1234, batch_size=batch, progress=True, use_cache=False)
    # equal-length prompts keep the caller's order, so batch k is prompts[k*batch:(k+1)*batch]
    steps = sum(max(c[0] for c in g.token_counts[i:i + batch]) for i in range(0, len(prompts), batch))
    return {
        "kind": "generation", "sampling": sampling.name, "temperature": sampling.temperature, "min_p": sampling.min_p,
        "batch": batch, "calls": g.generate_calls, "prompts": len(prompts), "max_new_tokens": sampling.max_new_tokens,
        "new_tokens": g.new_tokens, "decode_steps": steps, "seconds": round(g.seconds, 3),
        "new_tokens_per_s": round(g.tokens_per_s, 1), "cold_new_tokens_per_s": round(warm.tokens_per_s, 1),
        "ms_per_step": round(1000 * g.seconds / max(1, steps), 2),
        "rows_x_steps_per_s": round(batch * steps / g.seconds, 1) if g.seconds else None,
        "peak_allocated_gib": _peak_gib(),
    }


def run_eval_shape(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: perplexity and generation speed for one shape, base then with a random LoRA adapter."""
    import torch

    from tunebench.core.config import SamplingConfig
    from tunebench.evals.modeling import load_for_eval

    cuda = torch.cuda.is_available()
    loaded = load_for_eval(spec["model_dir"], template=spec["chat_template"],
                           dtype="bfloat16" if cuda else "float32", device="cuda" if cuda else "cpu")
    prepared = load_prepared(spec["prepared"])
    encoded = prepared.encoded["train"][: spec["ppl_conversations"]]
    n_prompts = spec["gen_batch"] * spec["gen_batches"]
    prompts, prompt_info = fixed_length_prompts(loaded.tokenizer, prepared.conversations["train"], n_prompts,
                                                spec["prompt_tokens"])
    samplings = [SamplingConfig(name="seed", temperature=1.5, min_p=0.1, max_new_tokens=spec["new_tokens"]),
                 SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=spec["new_tokens"])]
    rows: list[dict[str, Any]] = []
    for variant in ("base", "lora"):
        if variant == "lora":
            loaded = with_random_lora(loaded, spec["r"], spec["alpha"], spec["targets"])
        lora_dtype = next((str(p.dtype).replace("torch.", "") for n, p in loaded.model.named_parameters()
                           if "lora_" in n), None)
        for bt in spec["ppl_batch_tokens"]:
            log.info("%s/%s: perplexity at %d batch tokens", spec["shape"], variant, bt)
            rows.append({"variant": variant, "lora_dtype": lora_dtype, **perplexity_row(loaded, encoded, bt, spec)})
        for sampling in samplings:
            log.info("%s/%s: generation (%s), batch %d", spec["shape"], variant, sampling.name, spec["gen_batch"])
            rows.append({"variant": variant, "lora_dtype": lora_dtype,
                         **generation_row(loaded, prompts, sampling, spec["gen_batch"])})
    return {"rows": rows, "prompts": prompt_info, "dtype": loaded.dtype}


# ----------------------------------------------------------------------------- the parent


def run_eval(args: argparse.Namespace) -> int:
    """The parent of ``bench eval``: setup, data, one worker per shape, results after each."""
    from tunebench.bench.shapes import prepare_data, resolve_shapes
    from tunebench.bench.speed import EXIT_INCOMPLETE, EXIT_OK, Budget, parse_int_list, setup, spawn, work_dir

    budgets = parse_int_list(args.ppl_batch_tokens, "--ppl-batch-tokens")
    budget, work, out = Budget(args.budget_s), work_dir(args), Path(args.out)
    shapes = resolve_shapes([x.strip() for x in args.shape.split(",") if x.strip()], args.tokenizer)
    results: dict[str, Any] = {
        "schema": "tunebench.eval_speed/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "tunebench bench " + " ".join(args.argv),
        "settings": {"dtype": "bfloat16", "attention": "sdpa (transformers default)", "max_length": args.max_length,
                     "ppl_batch_tokens": budgets, "ppl_conversations": args.ppl_conversations,
                     "gen_batch": args.gen_batch, "gen_batches": args.gen_batches,
                     "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                     "lora": {"r": args.r, "alpha": args.alpha, "targets": args.lora_targets.split(","),
                              "init": "random (peft init_lora_weights=False)"},
                     "data": args.data},
        "rows": [],
    }
    setup_res = setup(shapes, args, work, budget)
    cal = setup_res.get("calibration") or {}
    results.update(card=setup_res["card"], environment=setup_res["environment"], calibration=cal,
                   shapes={n: s["info"] for n, s in shapes.items()}, data={})
    for name, s in shapes.items():
        s["prepared"], results["data"][name], _ = prepare_data(
            s["path"], s["chat_template"], args.data, args.max_length,
            max(args.ppl_conversations, 4 * args.gen_batch * args.gen_batches), work)
    write_eval(results, out)
    status = {}
    for name, s in shapes.items():
        info = s["info"]
        spec = {"kind": "eval", "label": f"{name}-eval", "shape": name, "model_dir": s["path"],
                "chat_template": s["chat_template"], "prepared": str(s["prepared"]),
                "ppl_batch_tokens": budgets, "ppl_conversations": args.ppl_conversations,
                "gen_batch": args.gen_batch, "gen_batches": args.gen_batches, "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens, "r": args.r, "alpha": args.alpha,
                "targets": args.lora_targets.split(","), "params": info["params"],
                "head_params": info["vocab_size"] * info["hidden_size"], "tied": info["tied_embeddings"],
                "peak_tflops": cal.get("peak_tflops")}
        res = spawn(spec, work, budget, min_seconds=60)
        status[name] = {k: res.get(k) for k in ("status", "error", "prompts", "dtype", "worker_s")}
        results["rows"] += [{"shape": name, **r} for r in res.get("rows", [])]
        results["workers"] = status
        write_eval(results, out)
    ok = all(v["status"] == "ok" for v in status.values())
    print(f"\nresults: {out / 'eval_speed.json'} and {out / 'eval_speed.md'}" + ("" if ok else " (a shape failed)"))
    return EXIT_OK if ok else EXIT_INCOMPLETE


def eval_targets(rows: list[dict[str, Any]], shapes: list[str], gen_batch: int) -> list[dict[str, Any]]:
    """Perplexity >= 45% MFU (forward, 2·N) at its best budget; generation >= 3,000 new tokens/s at the batch."""
    from tunebench.bench.speed import EVAL_TARGETS, _target

    out = []
    for shape in shapes:
        for variant in ("base", "lora"):
            mine = [r for r in rows if r["shape"] == shape and r["variant"] == variant]
            ppl = max((r for r in mine if r["kind"] == "perplexity" and r.get("mfu") is not None),
                      key=lambda r: r["mfu"], default=None)
            out.append(_target(f"perplexity MFU (2·N·tokens/s) >= 45% [{variant}]", shape, ppl and ppl["mfu"],
                               EVAL_TARGETS["ppl_mfu"], True,
                               f"{ppl['batch_tokens']} batch tokens" if ppl else "best budget", "not measured"))
            for r in (r for r in mine if r["kind"] == "generation" and r["batch"] == gen_batch):
                out.append(_target(f"generation new tokens/s >= 3,000 [{variant}, {r['sampling']}]", shape,
                                   r["new_tokens_per_s"], EVAL_TARGETS["gen_tokens_per_s"], True, f"batch {r['batch']}"))
    return out


def write_eval(results: dict[str, Any], out: Path) -> None:
    """eval_speed.json (the source of truth), then eval_speed.md rendered from it; both atomically."""
    results["targets"] = eval_targets(results["rows"], list(results.get("shapes", {})),
                                      results["settings"]["gen_batch"])
    atomic_write_json(out / "eval_speed.json", results)
    atomic_write_text(out / "eval_speed.md", render_eval_md(results))


def render_eval_md(results: dict[str, Any]) -> str:
    """Markdown view of eval_speed.json."""
    from tunebench.bench.speed import _f, header_lines, target_table

    st = results["settings"]
    lines = header_lines(results, "Evaluation speed: perplexity and generation")
    lines += [
        f"- settings: {st['dtype']}, {st['attention']}; perplexity over {st['ppl_conversations']} conversations "
        f"(max length {st['max_length']}) at batch-token budgets {', '.join(map(str, st['ppl_batch_tokens']))}; "
        f"generation of {st['new_tokens']} new tokens for {st['gen_batch'] * st['gen_batches']} prompts of "
        f"{st['prompt_tokens']} tokens in batches of {st['gen_batch']}, generation cache off; LoRA r={st['lora']['r']} "
        f"alpha={st['lora']['alpha']} on {', '.join(st['lora']['targets'])}, {st['lora']['init']}",
        "",
        "> **Random weights, stand-in tokenizer** (see speed.md). Perplexity **MFU** = 2 · N · input tokens/s ÷ "
        "the measured matmul peak over the second (warm) pass; the cold first pass is shown in brackets; "
        "*actual-work MFU* counts the LM head only on the scored (assistant) positions, "
        "as the suite computes it. Generation with random weights rarely emits an end-of-turn token, so nearly "
        "every row runs the full length; new tokens/s counts tokens up to and including a stop token. "
        "*ms/step* = generate() time ÷ decode steps; timed after one untimed batch of the same settings (its rate in "
        "brackets).",
        "",
    ]
    for name, info in (results.get("shapes") or {}).items():
        w = (results.get("workers") or {}).get(name) or {}
        lines += [f"## {name}: {info.get('params', 0):,} parameters, {info.get('weights')}", ""]
        if w.get("status") not in (None, "ok"):
            lines += [f"**{w.get('status')}**: {w.get('error')}", ""]
        mine = [r for r in results["rows"] if r["shape"] == name]
        lines += ["| model | batch tokens | input tokens | tokens/s (cold pass) | MFU | actual-work MFU | peak GiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in mine if r["kind"] == "perplexity"):
            lines.append(f"| {r['variant']} | {r['batch_tokens']:,} | {r['input_tokens']:,} | {_f(r['tokens_per_s'])} "
                         f"({_f(r.get('cold_tokens_per_s'))}) | {_f(r['mfu'], '.1%')} | {_f(r['mfu_actual_work'], '.1%')} | "
                         f"{_f(r['peak_allocated_gib'], '.2f')} |")
        lines += ["", "| model | sampling | batch | new tokens | new tokens/s (cold batch) | ms/step | rows×steps/s | "
                  "peak GiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in mine if r["kind"] == "generation"):
            lines.append(f"| {r['variant']} | {r['sampling']} | {r['batch']} | {r['new_tokens']:,} | "
                         f"{_f(r['new_tokens_per_s'])} ({_f(r.get('cold_new_tokens_per_s'))}) | {_f(r['ms_per_step'], '.1f')} | "
                         f"{_f(r['rows_x_steps_per_s'])} | {_f(r['peak_allocated_gib'], '.2f')} |")
        lines.append("")
    lines += target_table(results.get("targets") or [])
    return "\n".join(lines) + "\n"
