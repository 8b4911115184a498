"""The rows of ``bench eval`` that time the suite's own evaluation paths on one loaded model: perplexity, batched
generation, the decode loop's CUDA graph against eager, decode attention, raw ``generate(static)`` as the reference,
the default probe run, and which base a QLoRA adapter is merged into; plus the prompts and the random LoRA adapter
they run with. Each function is one measurement; ``bench.evalworker`` runs them in order."""

from __future__ import annotations

import time
from typing import Any

from tunebench.bench.metrics import mfu
from tunebench.bench.specs import EvalSpec
from tunebench.core.config_schema import SamplingConfig
from tunebench.evals.decode_loops import sampling_decoder
from tunebench.evals.generation import generate
from tunebench.evals.modeling import Loaded, load_for_eval
from tunebench.evals.perplexity import batches_by_length, score
from tunebench.evals.probes.sets import load_probe_set
from tunebench.evals.prompting import generation_kwargs, left_pad, render_prompt

Messages = list[dict[str, str]]


def fixed_length_prompts(tok: Any, conversations: list[Any], n: int, prompt_tokens: int) -> tuple[list[Messages], dict]:
    """``n`` single-turn prompts whose rendered form (chat template, generation prompt) is ``prompt_tokens`` long.

    Each prompt is the first user message of a real conversation, cut at a token boundary; conversations whose
    first message is too short are passed over. When fewer than ``n`` fit, the list is repeated (generation
    speed does not care) and the report says how many were distinct.

    Raises:
        ValueError: the template alone is longer than ``prompt_tokens``, or no conversation is long enough.
    """

    overhead = len(render_prompt(tok, [{"role": "user", "content": ""}]))
    want = prompt_tokens - overhead
    if want < 1:
        raise ValueError(
            f"--prompt-tokens {prompt_tokens}: the chat template alone takes {overhead} tokens; "
            f"give more than {overhead}"
        )
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


CACHE = "auto"
"""The suite's generation rows run what evaluations run (``decode_loop: auto``: on CUDA the decode loop of
``evals.decoding``, each step one CUDA graph replay); each row records the loop that ran."""


def with_random_lora(loaded: Any, r: int, alpha: int, targets: list[str]) -> Any:
    """The same model with a random-init (non-zero B) LoRA adapter attached by peft, as a tuned model is."""
    import torch  # heavy: torch, imported when needed
    from peft import LoraConfig, get_peft_model  # heavy: peft, imported when needed

    torch.manual_seed(0)
    model = get_peft_model(
        loaded.model,
        LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=list(targets),
            lora_dropout=0.0,
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
    )
    model.eval()
    return Loaded(
        model,
        loaded.tokenizer,
        loaded.template,
        loaded.source,
        adapter=f"random-init LoRA r={r} alpha={alpha} (not trained)",
        adapter_sha=None,
        device=loaded.device,
        dtype=loaded.dtype,
    )


def _sync_reset() -> None:
    import torch  # heavy: torch, imported when needed

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch  # heavy: torch, imported when needed

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def perplexity_row(loaded: Any, encoded: list[Any], batch_tokens: int, spec: EvalSpec) -> dict[str, Any]:
    """Tokens/s of ``evals.perplexity.score`` over ``encoded``: a cold pass, then the measured warm pass.

    The cold pass meets every batch shape for the first time (kernel selection, allocator growth); an
    evaluation scores each split once, so both numbers matter, but only the warm one says what the code can do.
    """

    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    _sync_reset()
    _, cold = score(loaded.model, encoded, batch_tokens, pad, progress=False)
    _sync_reset()
    items, seconds = score(loaded.model, encoded, batch_tokens, pad, progress=True)
    tokens = sum(len(e.input_ids) for e in encoded)
    scored = sum(i["den"] for i in items)
    padded = sum(len(g) * len(encoded[g[0]].input_ids) for g in batches_by_length(encoded, batch_tokens))
    n, head = spec.params, spec.head_params
    body = n - head * (1 if spec.tied else 2)  # the embedding lookup costs no FLOPs; the head runs per scored token
    tps = tokens / seconds
    return {
        "kind": "perplexity",
        "batch_tokens": batch_tokens,
        "conversations": len(encoded),
        "input_tokens": tokens,
        "scored_tokens": scored,
        "padded_positions": padded,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tps, 1),
        "cold_tokens_per_s": round(tokens / cold, 1),
        "mfu": mfu(n, tps, spec.peak_tflops, 2.0),
        "mfu_actual_work": (
            (2 * body * tokens + 2 * head * scored) / seconds / (spec.peak_tflops * 1e12) if spec.peak_tflops else None
        ),
        "mean_nll": round(sum(i["num"] for i in items) / max(1, scored), 4),
        "peak_allocated_gib": _peak_gib(),
    }


def generation_row(loaded: Any, prompts: list[Messages], sampling: Any, batch: int) -> dict[str, Any]:
    """New tokens/s of ``evals.generation.generate`` (cache off), after one untimed batch of the same settings."""

    # a full-length warm-up: a short one leaves first-time costs (KV-cache growth, sampling kernels) in the timing
    warm = generate(
        loaded,
        prompts[:batch],
        sampling,
        seed=99,
        batch_size=batch,
        progress=False,
        use_cache=False,
        cache_implementation=CACHE,
    )
    _sync_reset()
    g = generate(
        loaded,
        prompts,
        sampling,
        seed=1234,
        batch_size=batch,
        progress=True,
        use_cache=False,
        cache_implementation=CACHE,
    )
    # equal-length prompts keep the caller's order, so batch k is prompts[k*batch:(k+1)*batch]
    steps = sum(max(c[0] for c in g.token_counts[i : i + batch]) for i in range(0, len(prompts), batch))
    return {
        "kind": "generation",
        "sampling": sampling.name,
        "temperature": sampling.temperature,
        "min_p": sampling.min_p,
        "decode_path": g.decode_loop,
        "batch": batch,
        "calls": g.generate_calls,
        "prompts": len(prompts),
        "max_new_tokens": sampling.max_new_tokens,
        "new_tokens": g.new_tokens,
        "decode_steps": steps,
        "seconds": round(g.seconds, 3),
        "new_tokens_per_s": round(g.tokens_per_s, 1),
        "cold_new_tokens_per_s": round(warm.tokens_per_s, 1),
        "ms_per_step": round(1000 * g.seconds / max(1, steps), 2),
        "rows_x_steps_per_s": round(batch * steps / g.seconds, 1) if g.seconds else None,
        "peak_allocated_gib": _peak_gib(),
    }


def _second_call(decoder: Any, ids: Any, mask: Any, seed: int) -> tuple[Any, float]:
    """(tokens on the host, seconds) of a decoder's second call on one batch: the first allocates and captures."""
    import torch  # heavy: torch, imported when needed

    decoder(ids, mask, seed=seed)
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = decoder(ids, mask, seed=seed).cpu()  # the copy to the host waits for the device
    return out, time.perf_counter() - t


def graph_check_row(loaded: Any, prompts: list[Messages], sampling: Any, batch: int) -> dict[str, Any]:
    """The decode loop with its step captured as a CUDA graph against the same loop run eagerly, on one batch with
    the same seed: the tokens must be identical (the same kernels run), and the time per step says what the
    capture saves."""
    import torch  # heavy: torch, imported when needed

    kw = generation_kwargs(loaded, sampling)
    ids, mask = left_pad([render_prompt(loaded.tokenizer, m) for m in prompts[:batch]], kw["pad_token_id"])
    out, seconds, captured = {}, {}, False
    for graphs in (True, False):
        decoder = sampling_decoder(loaded.model, ids.shape[0], ids.shape[1], sampling, kw, graphs=graphs)
        out[graphs], seconds[graphs] = _second_call(decoder, ids, mask, seed=11)
        captured = captured or decoder.captured
    steps = sampling.max_new_tokens
    return {
        "kind": "graph-check",
        "sampling": sampling.name,
        "batch": int(ids.shape[0]),
        "steps": steps,
        "captured": captured,
        "identical": bool(torch.equal(out[True], out[False])),
        "graph_ms_per_step": round(1000 * seconds[True] / steps, 2),
        "eager_ms_per_step": round(1000 * seconds[False] / steps, 2),
    }


def decode_attention_rows(loaded: Any, batch: int, widths: list[int], new_tokens: int) -> list[dict[str, Any]]:
    """Time per decode step (CUDA graph replays) with transformers' SDPA attention (keys and values copied per
    query head, ``repeat_kv``) against ``decoding.grouped_decode_attention``, at each context width: random
    token ids, greedy, ``new_tokens`` steps, after one untimed call of the same shape."""
    import torch  # heavy: torch, imported when needed

    from tunebench.evals.decoding import StaticDecoder

    pad = loaded.tokenizer.pad_token_id or 0
    rows = []
    for width in widths:
        ids = torch.randint(1000, 20000, (batch, width))
        mask = torch.ones_like(ids)
        for grouped in (False, True):
            decoder = StaticDecoder(loaded.model, batch, width, new_tokens, [-1], pad, graphs=True, grouped=grouped)
            _, seconds = _second_call(decoder, ids, mask, seed=0)
            rows.append(
                {
                    "kind": "decode-attention",
                    "attention": "grouped" if grouped else "sdpa (repeat_kv)",
                    "batch": batch,
                    "width": width,
                    "steps": new_tokens,
                    "captured": decoder.captured,
                    "seconds": round(seconds, 3),
                    "ms_per_step": round(1000 * seconds / new_tokens, 2),
                    "new_tokens_per_s": round(batch * new_tokens / seconds, 1),
                }
            )
            del decoder
    return rows


def raw_generation_row(loaded: Any, prompts: list[Messages], sampling: Any, batch: int) -> dict[str, Any]:
    """The reference: plain ``model.generate(cache_implementation="static")`` (compiled) on the same prompts,
    batch and decoding knobs, without the suite's pooling, padding to one shape, seeding or decoding."""
    import torch  # heavy: torch, imported when needed

    tok, model = loaded.tokenizer, loaded.model
    kwargs = {**generation_kwargs(loaded, sampling), "cache_implementation": "static"}
    ids = [render_prompt(tok, m) for m in prompts]
    chunks = [left_pad(ids[i : i + batch], kwargs["pad_token_id"]) for i in range(0, len(ids), batch)]

    def run(chunk: tuple[Any, Any]) -> int:
        x, mask = (t.to(model.device) for t in chunk)
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=mask, **kwargs)
        return int(out.shape[1] - x.shape[1]) * x.shape[0]

    t = time.perf_counter()
    run(chunks[0])  # compiles the decode step
    cold = time.perf_counter() - t
    _sync_reset()
    t = time.perf_counter()
    new = sum(run(c) for c in chunks)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    seconds = time.perf_counter() - t
    return {
        "kind": "generation",
        "path": "raw generate(static)",
        "sampling": sampling.name,
        "temperature": sampling.temperature,
        "min_p": sampling.min_p,
        "batch": batch,
        "calls": len(chunks),
        "prompts": len(prompts),
        "max_new_tokens": sampling.max_new_tokens,
        "new_tokens": new,
        "seconds": round(seconds, 3),
        "new_tokens_per_s": round(new / seconds, 1),
        "cold_s": round(cold, 2),
        "peak_allocated_gib": _peak_gib(),
    }


def probe_run_row(loaded: Any, prompts: list[Messages], spec: EvalSpec) -> dict[str, Any]:
    """The default probe run's generation: the shipped probe set's prompt count, the sampled setting's samples
    per prompt, all answers in one pool (``spec.probe_batch`` per call); cold (first call, compile included)
    and warm."""

    n = len(load_probe_set("default").prompts)
    smp = SamplingConfig(
        name="seed",
        temperature=1.5,
        min_p=0.1,
        max_new_tokens=spec.probe_new_tokens,
        n_samples=spec.probe_samples,
    )
    t = time.perf_counter()
    cold = generate(
        loaded,
        prompts[:n],
        smp,
        seed=5,
        batch_size=spec.probe_batch,
        progress=False,
        use_cache=False,
        cache_implementation=CACHE,
    )
    cold_s = time.perf_counter() - t
    _sync_reset()
    g = generate(
        loaded,
        prompts[:n],
        smp,
        seed=1234,
        batch_size=spec.probe_batch,
        progress=False,
        use_cache=False,
        cache_implementation=CACHE,
    )
    return {
        "kind": "probe-run",
        "path": "suite generate (pooled)",
        "decode_path": g.decode_loop,
        "sampling": smp.name,
        "prompts": n,
        "samples_per_prompt": smp.n_samples,
        "batch": spec.probe_batch,
        "calls": g.generate_calls,
        "max_new_tokens": smp.max_new_tokens,
        "new_tokens": g.new_tokens,
        "seconds": round(g.seconds, 3),
        "new_tokens_per_s": round(g.tokens_per_s, 1),
        "cold_new_tokens_per_s": round(cold.new_tokens / cold_s, 1),
        "cold_s": round(cold_s, 2),
        "peak_allocated_gib": _peak_gib(),
    }


def merge_base_rows(spec: EvalSpec, encoded: list[Any], merged_logits: Any, probe: Any) -> list[dict[str, Any]]:
    """For a QLoRA adapter: how far the adapter on its 4-bit base (what it was trained against) is from the
    adapter merged into the original 16-bit weights (what the suite evaluates and ships). Same random LoRA
    (seed 0) as the other rows; compared on next-token distributions of the same tokens."""
    import torch  # heavy: torch, imported when needed

    q = load_for_eval(spec.model_dir, template=spec.chat_template, dtype="bfloat16", device="cuda", load_in_4bit=True)
    base4 = _logits(q.model, probe)
    q = with_random_lora(q, spec.r, spec.alpha, spec.targets)
    lora4 = _logits(q.model, probe)
    ppl = perplexity_row(q, encoded, spec.ppl_batch_tokens[-1], spec)
    rows = []
    for name, logits, ref in (
        ("4-bit base + unmerged adapter vs 16-bit merged", lora4, merged_logits["lora"]),
        ("4-bit base vs 16-bit base", base4, merged_logits["base"]),
    ):
        p, r = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
        kl = torch.nn.functional.kl_div(p, r, log_target=True, reduction="none").sum(-1).mean()
        rows.append(
            {
                "kind": "merge-base",
                "comparison": name,
                "positions": int(p.shape[0]),
                "kl_nats_per_token": float(kl),
                "top1_agreement": float((p.argmax(-1) == r.argmax(-1)).float().mean()),
            }
        )
    rows.append({"variant": "lora-unmerged-4bit", **ppl})
    return rows


def _logits(model: Any, probe: Any) -> Any:
    import torch  # heavy: torch, imported when needed

    with torch.inference_mode():
        return model(input_ids=probe).logits[0].float()
