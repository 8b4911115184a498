"""An interactive chat with a loaded model (behind ``tunebench chat``): history, streamed answers, commands.

It renders the conversation with the same chat template and decoding settings as the probes, so what
you see here is what the evaluation sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tunebench.core.config import SamplingConfig
from tunebench.evals.generation import (
    batch_seed,
    count_new_tokens,
    decode_path,
    generation_kwargs,
    render_prompt,
    sampling_decoder,
    static_cache_kwargs,
)

HELP = "/reset clears the conversation, /exit (or Ctrl-D) quits"


def _fit_context(loaded: Any, history: list[dict[str, str]], keep: int, max_new: int) -> list[int]:
    """Prompt ids of ``history``, dropping the oldest exchanges (never the system prompt) until they fit."""
    limit = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    ids = render_prompt(loaded.tokenizer, history)
    while limit and len(ids) + max_new > limit and len(history) > keep + 1:
        del history[keep:keep + 2]  # one user turn and its answer
        ids = render_prompt(loaded.tokenizer, history)
    return ids


def chat(
    loaded: Any,
    sampling: SamplingConfig,
    system: str | None = None,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., Any] = print,
    seed: int | None = None,
    cache_implementation: str = "auto",
    on_answer: Callable[[dict[str, Any]], Any] | None = None,
) -> list[dict[str, str]]:
    """Talk to ``loaded`` until /exit or end of input, streaming each answer token by token.

    Args:
        loaded: an ``evals.modeling.Loaded`` (base, or base + adapter).
        sampling: decoding settings (temperature 0 = greedy; ``max_new_tokens`` caps each answer).
        system: optional system prompt, kept across /reset.
        input_fn: reads one user line (``input``; tests pass a scripted one).
        print_fn: prints messages that are not the streamed answer.
        seed: makes sampled answers reproducible (turn t uses a seed derived from seed and t).
        cache_implementation: decode loop (``generation.decode_path``; ``auto``: on CUDA the probes' CUDA graph loop,
            one capture per answer, else transformers' static compiled cache, its size rounded up so that the step
            recompiles only when the conversation outgrows it; dynamic on CPU). Every loop streams.
        on_answer: called after each answer with ``{"turn", "path", "prompt_tokens", "new_tokens", "seconds"}``
            (new tokens up to and including the stop token; seconds from the prompt to the last streamed token).

    Returns:
        The conversation as it stood when the chat ended.
    """
    import torch  # heavy: torch, imported when needed
    from transformers import TextStreamer  # heavy: transformers, imported when needed

    tok, model = loaded.tokenizer, loaded.model
    base: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    history = list(base)
    kwargs = generation_kwargs(loaded, sampling)
    stops = set(kwargs["eos_token_id"])
    path = decode_path(loaded, cache_implementation)
    device = getattr(model, "device", None) or loaded.device
    who = loaded.source.ref + (f" + {loaded.adapter}" if loaded.adapter else "")
    print_fn(f"chatting with {who} ({sampling.name}: temperature {sampling.temperature}). {HELP}")
    turn = 0
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print_fn("")
            break
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            break
        if cmd == "/reset":
            history = list(base)
            print_fn("(conversation cleared)")
            continue
        if cmd.startswith("/"):
            print_fn(f"unknown command {cmd!r}: {HELP}")
            continue
        history.append({"role": "user", "content": line})
        ids = _fit_context(loaded, history, len(base), sampling.max_new_tokens)
        input_ids = torch.tensor([ids], device=device)
        if path == "static":
            kwargs.update(static_cache_kwargs(len(ids) + sampling.max_new_tokens))
        streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        turn_seed = batch_seed(seed, 0, turn) if seed is not None else int(torch.randint(2**62, (1,)).item())
        started = time.perf_counter()
        try:
            if path == "graph":  # one answer: a decoder of this prompt's length, captured once
                decoder = sampling_decoder(model, 1, len(ids), sampling, kwargs)
                new = decoder(input_ids, torch.ones_like(input_ids), seed=turn_seed, streamer=streamer)[0].tolist()
            else:
                torch.manual_seed(turn_seed)
                with torch.inference_mode():
                    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                         streamer=streamer, **kwargs)
                new = out[0, len(ids):].tolist()
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            history.pop()
            print_fn("\n(answer interrupted)")
            continue
        n_new = count_new_tokens(new, stops)
        if on_answer is not None:  # the streamer printed the last token: the answer is on the host
            on_answer({"turn": turn, "path": path, "prompt_tokens": len(ids), "new_tokens": n_new,
                       "seconds": time.perf_counter() - started})
        answer = tok.decode(new[:n_new], skip_special_tokens=True).strip()
        history.append({"role": "assistant", "content": answer})
        turn += 1
    return history
