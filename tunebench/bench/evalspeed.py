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

from tunebench.bench.host import host_snapshot
from tunebench.bench.markdown import _f, header_lines, target_table, tokenizer_note
from tunebench.bench.metrics import _target, mfu, parse_int_list
from tunebench.bench.repeats import aggregate_targets, interleave
from tunebench.bench.shapes import load_prepared, prepare_data, resolve_shapes
from tunebench.bench.spawn import EXIT_INCOMPLETE, EXIT_OK, Budget, setup, spawn, work_dir
from tunebench.core.config import SamplingConfig
from tunebench.core.errors import InvalidInput
from tunebench.core.io import atomic_write_json, atomic_write_text, read_json
from tunebench.evals import lm_eval_model
from tunebench.evals.generation import (
    count_new_tokens,
    generate,
    generation_kwargs,
    left_pad,
    render_prompt,
    sampling_decoder,
)
from tunebench.evals.lm_eval_runner import _load_tasks, _task_manager
from tunebench.evals.modeling import Loaded, load_for_eval
from tunebench.evals.perplexity import batches_by_length, score
from tunebench.evals.probes import load_probe_set

log = logging.getLogger("tunebench.speed")

Messages = list[dict[str, str]]
PROBE_RUN = {"probe_samples": 4, "probe_new_tokens": 64, "probe_batch": 256, "probe_prompts": 34}
"""The default probe run of the Llama presets: the shipped set's 34 prompts x 4 samples at temperature 1.5,
64 new tokens, all answers in one pool (eval.probe_batch_size 256)."""
PARTS = ("perplexity", "generation", "raw", "lm-eval", "lm-eval-ll", "probe", "merge", "decode", "chat")
"""What ``bench eval --parts`` can choose (default: all): perplexity and generation rows per model; raw
generate(static) and the CUDA graph check (base); lm-eval generate_until; the default probe run; the 4-bit merge
comparison; the decode attention comparison."""
TARGETS = {"adapter_ratio": 0.95, "vs_raw_static": 1.0, "probe_run_tokens_per_s": 20000.0, "ppl_mfu": 0.45}


def parse_parts(text: str) -> list[str]:
    """``--parts``: a comma list of ``PARTS``.

    Raises:
        InvalidInput: an unknown part, or none."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise InvalidInput(
            f"--parts {text!r}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(PARTS)}"
        )
    return parts


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
"""The suite's generation rows run what evaluations run (``generation_cache: auto``: on CUDA the decode loop of
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


def perplexity_row(loaded: Any, encoded: list[Any], batch_tokens: int, spec: dict[str, Any]) -> dict[str, Any]:
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
    n, head = spec["params"], spec["head_params"]
    body = n - head * (1 if spec["tied"] else 2)  # the embedding lookup costs no FLOPs; the head runs per scored token
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
        "mfu": mfu(n, tps, spec.get("peak_tflops"), 2.0),
        "mfu_actual_work": (
            (2 * body * tokens + 2 * head * scored) / seconds / (spec["peak_tflops"] * 1e12)
            if spec.get("peak_tflops")
            else None
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
        "decode_path": g.path,
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


def chat_rows(loaded: Any, prompts: list[Messages], sampling: Any, answers: int) -> list[dict[str, Any]]:
    """``tunebench chat``'s answers against raw ``generate(cache_implementation="static")`` streaming the same
    prompts, one at a time (batch 1), same sampling: the suite through ``evals.chat.chat`` itself (scripted
    input, each prompt then /reset, a TextStreamer per answer, one decode-loop capture per answer counted in its
    time); raw with transformers' TextStreamer, after one untimed answer that compiles its step. Streamed text goes
    to a buffer, not the log."""
    import contextlib
    import io

    import torch  # heavy: torch, imported when needed
    from transformers import TextStreamer  # heavy: transformers, imported when needed

    from tunebench.evals.chat import chat

    users = [m[-1]["content"] for m in prompts[:answers]]
    script = iter([x for u in users for x in (u, "/reset")] + ["/exit"])
    timed: list[dict[str, Any]] = []
    with contextlib.redirect_stdout(io.StringIO()):
        chat(
            loaded,
            sampling,
            input_fn=lambda _: next(script),
            print_fn=lambda *a, **k: None,
            seed=3,
            on_answer=timed.append,
        )
    suite = timed[1:]  # the first answer pays the first-call costs, as raw's untimed one does
    tok, model = loaded.tokenizer, loaded.model
    kwargs = {**generation_kwargs(loaded, sampling), "cache_implementation": "static"}
    raw: list[dict[str, Any]] = []
    with contextlib.redirect_stdout(io.StringIO()):
        for i, u in enumerate(users):
            x = torch.tensor([render_prompt(tok, [{"role": "user", "content": u}])], device=model.device)
            streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            torch.manual_seed(i)
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), streamer=streamer, **kwargs)
            raw.append(
                {
                    "new_tokens": count_new_tokens(out[0, x.shape[1] :].tolist(), set(kwargs["eos_token_id"])),
                    "seconds": time.perf_counter() - t,
                }
            )
    raw = raw[1:]

    def row(path: str, answers_: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        new, seconds = sum(a["new_tokens"] for a in answers_), sum(a["seconds"] for a in answers_)
        return {
            "kind": "chat",
            "path": path,
            "sampling": sampling.name,
            "batch": 1,
            "answers": len(answers_),
            "max_new_tokens": sampling.max_new_tokens,
            "new_tokens": new,
            "seconds": round(seconds, 3),
            "new_tokens_per_s": round(new / seconds, 1) if seconds else None,
            "ms_per_token": round(1000 * seconds / max(1, new), 2),
            **extra,
        }

    return [
        row("tunebench chat", suite, decode_path=suite[0]["path"] if suite else None),
        row("raw generate(static) + TextStreamer", raw),
    ]


def probe_run_row(loaded: Any, prompts: list[Messages], spec: dict[str, Any]) -> dict[str, Any]:
    """The default probe run's generation: the shipped probe set's prompt count, the sampled setting's samples
    per prompt, all answers in one pool (``spec['probe_batch']`` per call); cold (first call, compile included)
    and warm."""

    n = len(load_probe_set("default").prompts)
    smp = SamplingConfig(
        name="seed",
        temperature=1.5,
        min_p=0.1,
        max_new_tokens=spec["probe_new_tokens"],
        n_samples=spec["probe_samples"],
    )
    t = time.perf_counter()
    cold = generate(
        loaded,
        prompts[:n],
        smp,
        seed=5,
        batch_size=spec["probe_batch"],
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
        batch_size=spec["probe_batch"],
        progress=False,
        use_cache=False,
        cache_implementation=CACHE,
    )
    return {
        "kind": "probe-run",
        "path": "suite generate (pooled)",
        "decode_path": g.path,
        "sampling": smp.name,
        "prompts": n,
        "samples_per_prompt": smp.n_samples,
        "batch": spec["probe_batch"],
        "calls": g.generate_calls,
        "max_new_tokens": smp.max_new_tokens,
        "new_tokens": g.new_tokens,
        "seconds": round(g.seconds, 3),
        "new_tokens_per_s": round(g.tokens_per_s, 1),
        "cold_new_tokens_per_s": round(cold.new_tokens / cold_s, 1),
        "cold_s": round(cold_s, 2),
        "peak_allocated_gib": _peak_gib(),
    }


def merge_base_rows(spec: dict[str, Any], encoded: list[Any], merged_logits: Any, probe: Any) -> list[dict[str, Any]]:
    """For a QLoRA adapter: how far the adapter on its 4-bit base (what it was trained against) is from the
    adapter merged into the original 16-bit weights (what the suite evaluates and ships). Same random LoRA
    (seed 0) as the other rows; compared on next-token distributions of the same tokens."""
    import torch  # heavy: torch, imported when needed

    q = load_for_eval(
        spec["model_dir"], template=spec["chat_template"], dtype="bfloat16", device="cuda", load_in_4bit=True
    )
    base4 = _logits(q.model, probe)
    q = with_random_lora(q, spec["r"], spec["alpha"], spec["targets"])
    lora4 = _logits(q.model, probe)
    ppl = perplexity_row(q, encoded, spec["ppl_batch_tokens"][-1], spec)
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


def lm_eval_loglikelihood_rows(
    loaded: Any, tasks: list[str], batch: int, limit: int | None, repeat: int = 0
) -> list[dict[str, Any]]:
    """Loglikelihood tasks (ARC-Easy, HellaSwag, PIQA by default, every document) through lm-eval 0.4.13's own HFLM
    and through the suite's model class, on the same loaded model: wall time of each and whether every metric came
    out equal. The order flips with each repeat, so neither runner always meets a cold process."""
    import lm_eval  # heavy: lm_eval, imported when needed
    from lm_eval.models.huggingface import HFLM  # heavy: lm_eval, imported when needed

    manager = _task_manager(tasks)
    rows, values = [], {}
    runners = [
        ("lm-eval HFLM", lambda: HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch)),
        (
            "tunebench",
            lambda: lm_eval_model.model_class()(
                pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch, cache_implementation=CACHE
            ),
        ),
    ]
    for runner, make in runners[::-1] if repeat % 2 else runners:
        loaded_tasks = _load_tasks(manager, tasks)
        documents = sum(
            len(t.eval_docs) if limit is None else min(limit, len(t.eval_docs)) for t in loaded_tasks.values()
        )
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=make(),
            tasks=list(loaded_tasks.values()),
            limit=limit,
            task_manager=manager,
            bootstrap_iters=0,
            log_samples=False,
        )
        seconds = time.perf_counter() - t0
        values[runner] = {
            f"{task}/{metric}": v
            for task, res in (out.get("results") or {}).items()
            for metric, v in res.items()
            if isinstance(v, float) and "stderr" not in metric
        }
        rows.append(
            {
                "kind": "lm-eval-ll",
                "runner": runner,
                "tasks": ",".join(tasks),
                "documents": documents,
                "batch": batch,
                "seconds": round(seconds, 2),
                "metrics": values[runner],
            }
        )
    a, b = values["lm-eval HFLM"], values["tunebench"]
    diff = max((abs(a[k] - b[k]) for k in a.keys() & b.keys()), default=None)
    for r in rows:
        r["same_metric_names"] = a.keys() == b.keys()
        r["max_metric_difference"] = diff
    return rows


def lm_eval_generation_rows(loaded: Any, batches: list[int]) -> list[dict[str, Any]]:
    """generate_until as GSM8K runs it, on the shipped tunebench_arith_gen task, wall time per setting, two ways side
    by side: lm-eval 0.4.13's own HFLM (transformers' dynamic cache, its default) and the suite's path
    (``evals.lm_eval_model``: fixed-shape batches, per-row stop strings, the decode loop ``auto`` picks)."""
    import lm_eval  # heavy: lm_eval, imported when needed
    from lm_eval.models.huggingface import HFLM  # heavy: lm_eval, imported when needed

    manager = _task_manager(["tunebench_arith_gen"])
    rows = []

    def timed(lm: Any, batch: int, runner: str) -> None:
        for attempt in ("cold", "warm"):
            tasks = _load_tasks(manager, ["tunebench_arith_gen"])
            t = time.perf_counter()
            lm_eval.simple_evaluate(
                model=lm,
                tasks=list(tasks.values()),
                apply_chat_template=True,
                task_manager=manager,
                bootstrap_iters=0,
                log_samples=False,
            )
            rows.append(
                {
                    "kind": "lm-eval",
                    "runner": runner,
                    "task": "tunebench_arith_gen",
                    "documents": 80,
                    "batch": batch,
                    "cache": getattr(lm, "path", "dynamic"),
                    "pass": attempt,
                    "seconds": round(time.perf_counter() - t, 2),
                }
            )

    for batch in batches:
        timed(HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch), batch, "lm-eval HFLM")
        timed(
            lm_eval_model.model_class()(
                pretrained=loaded.model,
                tokenizer=loaded.tokenizer,
                batch_size=batch,
                generate_batch_size=batch,
                cache_implementation=CACHE,
            ),
            batch,
            "tunebench",
        )
    return rows


class _Rows(list):
    """The worker's rows, also written to ``path`` after each one: a worker stopped by the budget keeps what it
    measured (the parent reads the file when the worker wrote no result)."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def _save(self) -> None:
        if self.path:
            atomic_write_json(Path(self.path), {"rows": list(self)})

    def append(self, row: dict[str, Any]) -> None:
        super().append(row)
        self._save()

    def __iadd__(self, more: Any) -> _Rows:
        super().__iadd__(more)
        self._save()
        return self


def _failed(kind: str, fn: Any, e: Exception, **fields: Any) -> dict[str, Any]:
    log.warning("%s failed: %s", fn.__name__, e)
    return {"kind": kind, **fields, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def _guarded(kind: str, fn: Any, *args: Any) -> dict[str, Any]:
    """One row; a failure (a compile error, out of memory) becomes a row of ``kind`` that says so, and the others
    go on."""
    try:
        return fn(*args)
    except Exception as e:
        return _failed(kind, fn, e)


def _guarded_rows(kind: str, fn: Any, *args: Any, **fields: Any) -> list[dict[str, Any]]:
    """``_guarded`` for a function of several rows: on failure one row of ``kind`` (with ``fields``) says so."""
    try:
        return fn(*args)
    except Exception as e:
        return [_failed(kind, fn, e, **fields)]


def _logits(model: Any, probe: Any) -> Any:
    import torch  # heavy: torch, imported when needed

    with torch.inference_mode():
        return model(input_ids=probe).logits[0].float()


def run_eval_shape(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: perplexity and generation speed for one shape, side by side in one process: the base model, the
    same model with a random LoRA adapter unmerged (peft) and then merged (as evaluation does by default), and
    raw ``generate(cache_implementation="static")`` at the same batch; then the default probe run."""
    import torch  # heavy: torch, imported when needed

    cuda = torch.cuda.is_available()
    loaded = load_for_eval(
        spec["model_dir"],
        template=spec["chat_template"],
        dtype="bfloat16" if cuda else "float32",
        device="cuda" if cuda else "cpu",
    )
    prepared = load_prepared(spec["prepared"])
    encoded = prepared.encoded["train"][: spec["ppl_conversations"]]
    n_prompts = max(spec["gen_batch"] * spec["gen_batches"], spec.get("probe_prompts", 0))
    prompts, prompt_info = fixed_length_prompts(
        loaded.tokenizer, prepared.conversations["train"], n_prompts, spec["prompt_tokens"]
    )
    gen_prompts = prompts[: spec["gen_batch"] * spec["gen_batches"]]
    samplings = [
        SamplingConfig(name="seed", temperature=1.5, min_p=0.1, max_new_tokens=spec["new_tokens"]),
        SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=spec["new_tokens"]),
    ]
    probe = torch.tensor([encoded[0].input_ids[:512]], device=loaded.model.device)
    ref_logits: dict[str, Any] = {}
    rows = _Rows(spec.get("partial"))
    parts = set(spec.get("parts") or PARTS)
    if "decode" in parts and cuda:
        log.info("%s/base: decode attention, sdpa vs grouped", spec["shape"])
        rows += _guarded_rows("decode-attention", decode_attention_rows, loaded, 128, [64, 1024], 64)
    for variant in ("base", "lora-unmerged", "lora-merged"):
        if cuda:  # each model compiles its own decode step: a graph recompiled for another model can turn dynamic
            torch._dynamo.reset()
        if variant == "lora-unmerged":
            loaded = with_random_lora(loaded, spec["r"], spec["alpha"], spec["targets"])
        elif variant == "lora-merged":  # the evaluation default: fold the same adapter into the 16-bit weights
            loaded = Loaded(
                loaded.model.merge_and_unload(),
                loaded.tokenizer,
                loaded.template,
                loaded.source,
                adapter=loaded.adapter,
                adapter_sha=None,
                device=loaded.device,
                dtype=loaded.dtype,
                merged=True,
            )
        if variant != "lora-unmerged":
            ref_logits["base" if variant == "base" else "lora"] = _logits(loaded.model, probe)
        lora_dtype = next(
            (str(p.dtype).replace("torch.", "") for n, p in loaded.model.named_parameters() if "lora_" in n), None
        )
        for bt in spec["ppl_batch_tokens"] if "perplexity" in parts else []:
            log.info("%s/%s: perplexity at %d batch tokens", spec["shape"], variant, bt)
            rows.append({"variant": variant, "lora_dtype": lora_dtype, **perplexity_row(loaded, encoded, bt, spec)})
        for sampling in samplings if "generation" in parts else []:
            log.info("%s/%s: generation (%s), batch %d", spec["shape"], variant, sampling.name, spec["gen_batch"])
            rows.append(
                {
                    "variant": variant,
                    "lora_dtype": lora_dtype,
                    "path": "suite generate",
                    **_guarded("generation", generation_row, loaded, gen_prompts, sampling, spec["gen_batch"]),
                }
            )
        if variant == "base" and cuda and "raw" in parts:
            for sampling in samplings:
                log.info("%s/base: decode loop, CUDA graph vs eager (%s)", spec["shape"], sampling.name)
                rows.append(
                    {
                        "variant": "base",
                        **_guarded("graph-check", graph_check_row, loaded, gen_prompts, sampling, spec["gen_batch"]),
                    }
                )
            for sampling in samplings:
                log.info(
                    "%s/base: raw generate(static) (%s), batch %d", spec["shape"], sampling.name, spec["gen_batch"]
                )
                rows.append(
                    {
                        "variant": "base",
                        "sampling": sampling.name,
                        **_guarded("generation", raw_generation_row, loaded, gen_prompts, sampling, spec["gen_batch"]),
                    }
                )
        if variant == "base" and spec.get("lm_eval_batches") and cuda and "lm-eval" in parts:
            log.info("%s/base: lm-eval generate_until", spec["shape"])
            rows += _guarded_rows("lm-eval", lm_eval_generation_rows, loaded, spec["lm_eval_batches"], cache=CACHE)
        if variant == "base" and "lm-eval-ll" in parts:
            log.info("%s/base: lm-eval loglikelihood tasks, HFLM vs the suite", spec["shape"])
            # --repeats-in-worker: every repeat here, on the one loaded model (a worker's setup is ~35 s of a
            # ~190 s repeat on an H200); the order still flips with each repeat
            for k in range(spec.get("inner_repeats", 1)):
                k = spec.get("repeat", 0) + k
                rows += [
                    {**r, "repeat": k}
                    for r in _guarded_rows(
                        "lm-eval-ll",
                        lm_eval_loglikelihood_rows,
                        loaded,
                        spec["lm_eval_ll_tasks"],
                        spec.get("lm_eval_ll_batch", 64),
                        spec.get("lm_eval_ll_limit"),
                        k,
                    )
                ]
        if variant == "base" and cuda and "chat" in parts:
            log.info("%s/base: chat answers vs raw generate(static), batch 1", spec["shape"])
            rows += [
                {"variant": "base", **r} for r in _guarded_rows("chat", chat_rows, loaded, gen_prompts, samplings[0], 9)
            ]
        if spec.get("probe_batch") and variant in ("base", "lora-merged") and "probe" in parts:
            log.info("%s/%s: default probe run", spec["shape"], variant)
            rows.append({"variant": variant, **_guarded("probe-run", probe_run_row, loaded, prompts, spec)})
    if spec.get("merge_base") and cuda and "merge" in parts:
        try:
            rows += [{"shape": spec["shape"], **r} for r in merge_base_rows(spec, encoded, ref_logits, probe)]
        except Exception as e:  # bitsandbytes missing or failing: the speed rows stand without it
            log.warning("merge-base comparison skipped: %s", e)
            rows.append({"kind": "merge-base", "comparison": "skipped", "error": f"{type(e).__name__}: {e}"})
    return {"rows": list(rows), "prompts": prompt_info, "dtype": "bfloat16" if cuda else "float32"}


# ----------------------------------------------------------------------------- the parent


def run_eval(args: argparse.Namespace) -> int:
    """The parent of ``bench eval``: setup, data, one worker per shape, results after each."""

    budgets = parse_int_list(args.ppl_batch_tokens, "--ppl-batch-tokens")
    parts = parse_parts(args.parts)
    budget, work, out = Budget(args.budget_s), work_dir(args), Path(args.out)
    host = {"before": host_snapshot()}
    shapes = resolve_shapes([x.strip() for x in args.shape.split(",") if x.strip()], args.tokenizer)
    results: dict[str, Any] = {
        "schema": "tunebench.eval_speed/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "tunebench bench " + " ".join(args.argv),
        "settings": {
            "dtype": "bfloat16",
            "attention": "sdpa (transformers default)",
            "max_length": args.max_length,
            "ppl_batch_tokens": budgets,
            "ppl_conversations": args.ppl_conversations,
            "gen_batch": args.gen_batch,
            "gen_batches": args.gen_batches,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "lora": {
                "r": args.r,
                "alpha": args.alpha,
                "targets": args.lora_targets.split(","),
                "init": "random (peft init_lora_weights=False)",
            },
            "data": args.data,
            "probe_run": PROBE_RUN,
            "parts": parts,
            "repeats": args.repeats,
            "order": "every repeat inside one worker per shape (--repeats-in-worker), runners alternating"
            if args.repeats_in_worker
            else "interleaved: every shape's worker once per repeat",
        },
        "rows": [],
        "host": host,
    }
    setup_res = setup(shapes, args, work, budget)
    cal = setup_res.get("calibration") or {}
    results.update(
        card=setup_res["card"],
        environment=setup_res["environment"],
        calibration=cal,
        shapes={n: s["info"] for n, s in shapes.items()},
        data={},
    )
    for name, s in shapes.items():
        s["prepared"], results["data"][name], _ = prepare_data(
            s["path"],
            s["chat_template"],
            args.data,
            args.max_length,
            max(args.ppl_conversations, 4 * args.gen_batch * args.gen_batches),
            work,
        )
    write_eval(results, out)
    status = {}
    inner = args.repeats if args.repeats_in_worker else 1
    for k, (name, s) in interleave(list(shapes.items()), args.repeats // inner):
        info = s["info"]
        label = f"{name}-eval" + (f"-r{k}" if args.repeats > inner else "")
        spec = {
            "kind": "eval",
            "label": label,
            "shape": name,
            "model_dir": s["path"],
            "chat_template": s["chat_template"],
            "prepared": str(s["prepared"]),
            "ppl_batch_tokens": budgets,
            "ppl_conversations": args.ppl_conversations,
            "gen_batch": args.gen_batch,
            "gen_batches": args.gen_batches,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "r": args.r,
            "alpha": args.alpha,
            "targets": args.lora_targets.split(","),
            "params": info["params"],
            "head_params": info["vocab_size"] * info["hidden_size"],
            "tied": info["tied_embeddings"],
            "peak_tflops": cal.get("peak_tflops"),
            **PROBE_RUN,
            "merge_base": True,
            "parts": parts,
            "lm_eval_batches": [80],
            "lm_eval_ll_tasks": [t.strip() for t in args.lm_eval_tasks.split(",")],
            "lm_eval_ll_batch": args.lm_eval_batch,
            "lm_eval_ll_limit": args.lm_eval_limit,
            "repeat": k,
            "inner_repeats": inner,
        }
        partial = work / "results" / f"{label}.partial.json"
        partial.unlink(missing_ok=True)
        spec["partial"] = str(partial)
        res = spawn(spec, work, budget, min_seconds=60)
        if res.get("status") != "ok" and not res.get("rows") and partial.exists():  # stopped by the budget
            res["rows"] = read_json(partial)["rows"]
            res["error"] = f"{res.get('error')}; the rows it measured before are kept"
        worst = status.get(name, {}).get("status", "ok")  # a shape is ok only if every repeat was
        status[name] = {f: res.get(f) for f in ("status", "error", "prompts", "dtype", "worker_s")}
        if worst != "ok":
            status[name]["status"] = worst
        results["rows"] += [{"shape": name, "repeat": k, **r} for r in res.get("rows", [])]  # a row's own repeat wins
        results["workers"] = status
        write_eval(results, out)
    host["after"] = host_snapshot()
    write_eval(results, out)
    ok = all(v["status"] == "ok" for v in status.values())
    print(f"\nresults: {out / 'eval_speed.json'} and {out / 'eval_speed.md'}" + ("" if ok else " (a shape failed)"))
    return EXIT_OK if ok else EXIT_INCOMPLETE


def eval_targets(rows: list[dict[str, Any]], shapes: list[str], gen_batch: int) -> list[dict[str, Any]]:
    """Issue 13's evaluation targets, per shape: with an adapter (merged, the default; and unmerged) perplexity and
    generation reach 95% of the base's throughput; the suite's generation reaches raw ``generate(static)`` at
    the same batch; the default probe run reaches 20,000 new tokens/s; base perplexity MFU >= 45%."""

    out = []
    for shape in shapes:
        mine = [r for r in rows if r.get("shape") == shape and "error" not in r]

        def ppl(variant: str, mine: list[dict[str, Any]] = mine) -> dict[str, Any] | None:
            return max(
                (r for r in mine if r["kind"] == "perplexity" and r.get("variant") == variant),
                key=lambda r: r["tokens_per_s"],
                default=None,
            )

        def gen(
            variant: str, sampling: str, path: str = "suite generate", mine: list[dict[str, Any]] = mine
        ) -> dict[str, Any] | None:
            return next(
                (
                    r
                    for r in mine
                    if r["kind"] == "generation"
                    and r.get("variant") == variant
                    and r.get("sampling") == sampling
                    and r.get("path") == path
                    and r["batch"] == gen_batch
                ),
                None,
            )

        base_ppl = ppl("base")
        out.append(
            _target(
                "perplexity MFU (2·N·tokens/s) >= 45% [base]",
                shape,
                base_ppl and base_ppl["mfu"],
                TARGETS["ppl_mfu"],
                True,
                "best budget",
                "not measured",
            )
        )
        for variant in ("lora-merged", "lora-unmerged"):
            v = ppl(variant)
            out.append(
                _target(
                    f"perplexity tokens/s ÷ base >= 0.95 [{variant}]",
                    shape,
                    v["tokens_per_s"] / base_ppl["tokens_per_s"] if v and base_ppl else None,
                    TARGETS["adapter_ratio"],
                    True,
                    "best budget each",
                    "not measured",
                )
            )
            for sampling in ("seed", "greedy"):
                g, b = gen(variant, sampling), gen("base", sampling)
                out.append(
                    _target(
                        f"generation new tokens/s ÷ base >= 0.95 [{variant}, {sampling}]",
                        shape,
                        g["new_tokens_per_s"] / b["new_tokens_per_s"] if g and b else None,
                        TARGETS["adapter_ratio"],
                        True,
                        f"batch {gen_batch}",
                        "not measured",
                    )
                )
        for sampling in ("seed", "greedy"):
            g, raw = gen("base", sampling), gen("base", sampling, "raw generate(static)")
            out.append(
                _target(
                    f"suite generation ÷ raw generate(static) >= 1 [{sampling}]",
                    shape,
                    g["new_tokens_per_s"] / raw["new_tokens_per_s"] if g and raw else None,
                    TARGETS["vs_raw_static"],
                    True,
                    f"batch {gen_batch}",
                    "not measured",
                )
            )
        chat = {r["path"]: r for r in mine if r["kind"] == "chat" and r.get("new_tokens_per_s")}
        suite, raw = chat.get("tunebench chat"), chat.get("raw generate(static) + TextStreamer")
        out.append(
            _target(
                "chat new tokens/s ÷ raw generate(static) >= 1 [streamed, batch 1]",
                shape,
                suite["new_tokens_per_s"] / raw["new_tokens_per_s"] if suite and raw else None,
                TARGETS["vs_raw_static"],
                True,
                f"{suite['answers']} answers" if suite else "chat",
                "not measured",
            )
        )
        ll = {r["runner"]: r for r in mine if r["kind"] == "lm-eval-ll" and r.get("seconds")}
        hf, suite = ll.get("lm-eval HFLM"), ll.get("tunebench")
        out.append(
            _target(
                "lm-eval loglikelihood: HFLM wall time ÷ the suite's >= 1 [same metrics]",
                shape,
                hf["seconds"] / suite["seconds"]
                if hf
                and suite
                and suite.get("max_metric_difference") is not None
                and suite["max_metric_difference"] < 1e-6
                else None,
                TARGETS["vs_raw_static"],
                True,
                suite["tasks"] if suite else "lm-eval-ll",
                "not measured, or the metrics differ",
            )
        )
        for variant in ("base", "lora-merged"):
            pr = next((r for r in mine if r["kind"] == "probe-run" and r.get("variant") == variant), None)
            out.append(
                _target(
                    f"default probe run new tokens/s >= 20,000 [{variant}]",
                    shape,
                    pr and pr["new_tokens_per_s"],
                    TARGETS["probe_run_tokens_per_s"],
                    True,
                    f"{pr['prompts']}x{pr['samples_per_prompt']} answers" if pr else "probe run",
                    "not measured",
                )
            )
    return out


def write_eval(results: dict[str, Any], out: Path) -> None:
    """eval_speed.json (the source of truth), then eval_speed.md rendered from it; both atomically."""
    shapes, gen_batch = list(results.get("shapes", {})), results["settings"]["gen_batch"]
    results["targets"] = aggregate_targets(results["rows"], lambda rows: eval_targets(rows, shapes, gen_batch))
    atomic_write_json(out / "eval_speed.json", results)
    atomic_write_text(out / "eval_speed.md", render_eval_md(results))


def _section(rows: list[dict[str, Any]], intro: str, columns: list[str], cells: Any) -> list[str]:
    """Markdown lines of one table after an intro line (nothing without rows). ``columns``: header names, a trailing
    ``:`` right-aligns one; a row with an ``error`` shows it in place of the cells after the first."""
    if not rows:
        return []
    names = [c.rstrip(":") for c in columns]
    lines = [
        "",
        intro,
        "",
        "| " + " | ".join(names) + " |",
        "|" + "|".join("---:" if c.endswith(":") else "---" for c in columns) + "|",
    ]
    for r in rows:
        values = (
            [str(v) for v in cells(r)]
            if "error" not in r
            else [str(r.get(names[0], "")), f"**failed**: {r['error']}", *[""] * (len(columns) - 2)]
        )
        lines.append("|" + "|".join(f" {v} " if v else " " for v in values) + "|")
    return lines


def render_eval_md(results: dict[str, Any]) -> str:
    """Markdown view of eval_speed.json."""

    st = results["settings"]
    lines = header_lines(results, "Evaluation speed: perplexity and generation")
    lines += [
        f"- settings: {st['dtype']}, {st['attention']}; perplexity over {st['ppl_conversations']} conversations "
        f"(max length {st['max_length']}) at batch-token budgets {', '.join(map(str, st['ppl_batch_tokens']))}; "
        f"generation of {st['new_tokens']} new tokens for {st['gen_batch'] * st['gen_batches']} prompts of "
        f"{st['prompt_tokens']} tokens in batches of {st['gen_batch']}, generation cache off; LoRA r={st['lora']['r']} "
        f"alpha={st['lora']['alpha']} on {', '.join(st['lora']['targets'])}, {st['lora']['init']}",
        "",
        f"> **Random weights, {tokenizer_note(results)[0]}** (see speed.md). Perplexity **MFU** = 2 · N · input "
        "tokens/s ÷ "
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
        lines += [
            "| model | batch tokens | input tokens | tokens/s (cold pass) | MFU | actual-work MFU | peak GiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in (r for r in mine if r["kind"] == "perplexity" and "error" not in r):
            lines.append(
                f"| {r['variant']} | {r['batch_tokens']:,} | {r['input_tokens']:,} | {_f(r['tokens_per_s'])} "
                f"({_f(r.get('cold_tokens_per_s'))}) | {_f(r['mfu'], '.1%')} | {_f(r['mfu_actual_work'], '.1%')} | "
                f"{_f(r['peak_allocated_gib'], '.2f')} |"
            )
        lines += [
            "",
            "| model | path | sampling | batch | new tokens | new tokens/s (cold batch) | ms/step | "
            "rows×steps/s | peak GiB |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in (r for r in mine if r["kind"] == "generation"):
            if "error" in r:
                lines.append(
                    f"| {r.get('variant')} | {r.get('path', '')} | {r.get('sampling', '')} | | | "
                    f"**failed**: {r['error']} | | | |"
                )
                continue
            path = r.get("path", "suite generate") + (f" ({r['decode_path']})" if r.get("decode_path") else "")
            lines.append(
                f"| {r['variant']} | {path} | {r['sampling']} | {r['batch']} | "
                f"{r['new_tokens']:,} | {_f(r['new_tokens_per_s'])} ({_f(r.get('cold_new_tokens_per_s'))}) | "
                f"{_f(r.get('ms_per_step'), '.1f')} | {_f(r.get('rows_x_steps_per_s'))} | "
                f"{_f(r['peak_allocated_gib'], '.2f')} |"
            )
        lines += _section(
            [r for r in mine if r["kind"] == "decode-attention"],
            "Decode step attention (CUDA graph replays, greedy, random token ids; the suite decodes with `grouped`):",
            ["attention", "batch:", "context width:", "steps:", "ms/step:", "new tokens/s:"],
            lambda r: [
                r["attention"],
                r["batch"],
                f"{r['width']:,}",
                r["steps"],
                f"{r['ms_per_step']:.2f}",
                _f(r["new_tokens_per_s"]),
            ],
        )
        lines += _section(
            [r for r in mine if r["kind"] == "graph-check"],
            "The decode loop with each step one CUDA graph replay against the same loop run eagerly (one batch, one "
            "seed, full length):",
            ["sampling", "batch:", "steps:", "captured", "identical tokens", "graph ms/step:", "eager ms/step:"],
            lambda r: [
                r.get("sampling", ""),
                r["batch"],
                r["steps"],
                r["captured"],
                r["identical"],
                f"{r['graph_ms_per_step']:.2f}",
                f"{r['eager_ms_per_step']:.2f}",
            ],
        )
        lines += _section(
            [r for r in mine if r["kind"] == "chat"],
            "Chat, one streamed answer at a time (the suite: `evals.chat.chat` with scripted input, a capture of the "
            "decode loop per answer included; raw: `generate` with TextStreamer after one untimed compiling answer):",
            ["path", "sampling", "answers:", "new tokens:", "new tokens/s:", "ms/token:"],
            lambda r: [
                r["path"] + (f" ({r['decode_path']})" if r.get("decode_path") else ""),
                r["sampling"],
                r["answers"],
                f"{r['new_tokens']:,}",
                _f(r["new_tokens_per_s"]),
                f"{r['ms_per_token']:.2f}",
            ],
        )
        probe = [r for r in mine if r["kind"] == "probe-run"]
        if probe:
            lines += [
                "",
                "Default probe run (one pool of all answers; the decode loop that ran in brackets):",
                "",
                "| model | answers | batch | calls | new tokens | new tokens/s | first call s |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {r['variant']} | "
                + (
                    f"**failed**: {r['error']} | | | | | |"
                    if "error" in r
                    else f"{r['prompts']}×{r['samples_per_prompt']} ({r.get('decode_path', 'static')}) | "
                    f"{r['batch']} | "
                    f"{r['calls']} | {r['new_tokens']:,} | "
                    f"{_f(r['new_tokens_per_s'])} | {_f(r['cold_s'], '.1f')} |"
                )
                for r in probe
            ]
        lines += _section(
            [r for r in mine if r["kind"] == "lm-eval-ll"],
            "lm-eval loglikelihood tasks, every document unless limited, no chat template: wall time of "
            "simple_evaluate with lm-eval's own HFLM and with the suite's model class on the same model; the largest "
            "difference between their metric values:",
            ["runner", "repeat:", "tasks", "documents:", "batch:", "seconds:", "max metric difference:"],
            lambda r: [
                r["runner"],
                r.get("repeat", 0) + 1,
                r["tasks"],
                f"{r['documents']:,}",
                r["batch"],
                _f(r["seconds"], ".1f"),
                _f(r.get("max_metric_difference"), ".2g"),
            ],
        )
        lme = [r for r in mine if r["kind"] == "lm-eval"]
        if lme:
            lines += [
                "",
                "lm-eval generate_until (tunebench_arith_gen: 80 documents, greedy, up to 64 new tokens, chat "
                "template), wall time of simple_evaluate; runner `lm-eval HFLM` is lm-eval's own model, `tunebench` "
                "the suite's (evals/lm_eval_model.py):",
                "",
                "| runner | batch | KV cache | pass | seconds |",
                "|---|---:|---|---|---:|",
            ]
            lines += [
                f"| {r.get('runner', 'lm-eval HFLM')} | {r.get('batch', '')} | {r['cache']} | "
                + (f"**failed**: {r['error']} | |" if "error" in r else f"{r['pass']} | {r['seconds']:.1f} |")
                for r in lme
            ]
        merge = [r for r in mine if r["kind"] == "merge-base"]
        if merge:
            lines += [
                "",
                "Which base a QLoRA adapter is merged into (next-token distributions over one "
                "512-token conversation; random weights):",
                "",
                "| comparison | positions | KL nats/token | top-1 agreement |",
                "|---|---:|---:|---:|",
            ]
            lines += [
                f"| {r['comparison']} | "
                + (
                    f"{r.get('error')} | | |"
                    if "error" in r
                    else f"{r['positions']} | {r['kl_nats_per_token']:.2e} | {r['top1_agreement']:.2%} |"
                )
                for r in merge
            ]
        lines.append("")
    lines += target_table(results.get("targets") or [])
    if results.get("notes"):  # what the person who ran it adds: conditions the numbers depend on
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"
