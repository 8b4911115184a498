"""An interactive chat with a loaded model (behind ``tunebench chat``): history, streamed answers, commands.

It renders the conversation with the same chat template and decoding settings as the probes, so what
you see here is what the evaluation sees.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from tunebench.core.config_schema import SamplingConfig
from tunebench.evals.decode_loops import decode_path
from tunebench.evals.generation import Generation, TransformersGenerator
from tunebench.evals.prompting import batch_seed, render_prompt

COMMANDS = {
    "/help": "list these commands",
    "/reset": "clear the conversation (the system prompt stays)",
    "/exit": "quit (also /quit or Ctrl-D); Ctrl-C stops an answer, not the chat",
}
HELP = "/help lists the commands, /exit (or Ctrl-D) quits"
CHATTY_LOGGERS = ("transformers", "torch", "peft", "accelerate", "huggingface_hub", "bitsandbytes", "torchao")
"""Libraries whose load-time warnings and progress bars would bury the chat's first prompt."""


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Load a model without the libraries' chatter (deprecation warnings, weight-loading bars) before the first
    prompt; errors still surface, and ``-v`` (which skips this) shows everything."""
    import torch  # noqa: F401  (imported first: its import configures the "torch" loggers this then quiets)
    from transformers.utils import logging as hf_logging  # heavy: transformers, imported when needed

    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def context_limit(loaded: Any) -> int | None:
    """The model's context length in tokens (``max_position_embeddings``), or None when it does not say."""
    return getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)


def _fit_context(loaded: Any, history: list[dict[str, str]], keep: int, max_new: int) -> tuple[list[int], str | None]:
    """Prompt ids of ``history`` that leave ``max_new`` tokens of the model's context for the answer.

    Drops the oldest exchanges first (never the system prompt), then keeps only the end of the new message
    (where the question usually is); ``history`` is edited to what the model will see.

    Returns:
        The prompt ids (empty when nothing of the message fits) and a notice naming the limit and what was
        kept and dropped, or None when everything fit.
    """
    limit = context_limit(loaded)
    ids = render_prompt(loaded.tokenizer, history)
    if not limit or len(ids) + max_new <= limit:
        return ids, None
    asked, dropped = len(ids), 0
    while len(ids) + max_new > limit and len(history) > keep + 1:
        del history[keep : keep + 2]  # one user turn and its answer
        dropped += 1
        ids = render_prompt(loaded.tokenizer, history)
    done = [f"dropped the {dropped} oldest exchange{'s' * (dropped > 1)}"] if dropped else []
    if len(ids) + max_new > limit:
        ids, kept = _truncate_message(loaded.tokenizer, history, limit - max_new)
        if not ids:
            history.pop()
            return [], (
                f"(not sent: the model's context is {limit:,} tokens and {max_new:,} are kept for the "
                "answer; the system prompt leaves no room for the message. Lower --max-new-tokens or "
                "shorten --system)"
            )
        done.append(f"kept the last {kept[0]:,} of your message's {kept[1]:,} tokens")
    return ids, (
        f"(context: {asked:,} prompt tokens + {max_new:,} for the answer exceed the model's {limit:,}-token "
        f"context; {' and '.join(done)}: the model reads {len(ids):,} tokens)"
    )


def _truncate_message(tok: Any, history: list[dict[str, str]], budget: int) -> tuple[list[int], tuple[int, int]]:
    """Cut the last message to its final tokens so the rendered prompt holds at most ``budget`` tokens.

    Returns:
        The prompt ids ([] when even an empty message is over budget) and (tokens kept, tokens it had).
    """
    content = history[-1]["content"]
    msg = tok(content, add_special_tokens=False)["input_ids"]
    history[-1]["content"] = ""
    room = budget - len(render_prompt(tok, history))  # what the template and the earlier turns leave
    keep = min(room, len(msg))
    while keep > 0:  # decoding and re-encoding a cut can merge tokens differently: shrink until it fits
        history[-1]["content"] = tok.decode(msg[-keep:], skip_special_tokens=True)
        ids = render_prompt(tok, history)
        if len(ids) <= budget:
            return ids, (keep, len(msg))
        keep -= len(ids) - budget
    history[-1]["content"] = content
    return [], (0, len(msg))


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
        cache_implementation: decode loop (``decode_loops.decode_path``; ``auto``: on CUDA the probes' CUDA graph loop,
            one capture per answer, else transformers' static compiled cache, its size rounded up so that the step
            recompiles only when the conversation outgrows it; dynamic on CPU). Every loop streams.
        on_answer: called after each answer with ``{"turn", "path", "prompt_tokens", "new_tokens", "seconds"}``
            (``path``: the decode loop; new tokens up to and including the stop token; seconds from the prompt to
            the last streamed token).

    Returns:
        The conversation as it stood when the chat ended.
    """
    base: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    history = list(base)
    decode_loop = decode_path(loaded, cache_implementation)
    who = loaded.source.ref + (f" + {loaded.adapter}" if loaded.adapter else "")
    limit = context_limit(loaded)
    context = f", context {limit:,} tokens" if limit else ""
    print_fn(f"chatting with {who} ({sampling.name}: temperature {sampling.temperature}{context}). {HELP}")
    turn = 0
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print_fn("")
            break
        cmd = line.strip()
        if cmd in ("/exit", "/quit"):
            break
        if not cmd or _command(cmd, print_fn):
            if cmd == "/reset":
                history = list(base)
            continue
        history.append({"role": "user", "content": line})
        ids, notice = _fit_context(loaded, history, len(base), sampling.max_new_tokens)
        if notice:
            print_fn(notice)
        if not ids:
            continue
        started = time.perf_counter()
        try:  # history is what the model sees (``_fit_context`` edited it): its rendering is ``ids``
            gen = _answer(loaded, history, sampling, decode_loop, seed, turn)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            history.pop()
            print_fn("\n(answer interrupted)")
            continue
        if on_answer is not None:  # the streamer printed the last token: the answer is on the host
            seconds = time.perf_counter() - started
            n_new = gen.token_counts[0][0]
            on_answer(
                {
                    "turn": turn,
                    "path": gen.decode_loop,
                    "prompt_tokens": len(ids),
                    "new_tokens": n_new,
                    "seconds": seconds,
                }
            )
        history.append({"role": "assistant", "content": gen.texts[0]})
        turn += 1
    return history


def _command(cmd: str, print_fn: Callable[..., Any]) -> bool:
    """Handle a chat command other than /exit (``/reset`` is the caller's: it owns the history); False for a
    line that is a message."""
    if cmd == "/reset":
        print_fn("(conversation cleared)")
    elif cmd == "/help":
        print_fn("\n".join(f"  {name:<7} {what}" for name, what in COMMANDS.items()))
    elif cmd.startswith("/"):
        print_fn(f"unknown command {cmd!r}: {HELP}")
    else:
        return False
    return True


def _answer(
    loaded: Any, history: list[dict[str, str]], sampling: SamplingConfig, decode_loop: str, seed: int | None, turn: int
) -> Generation:
    """One answer through the suite's Generator, streamed to stdout as it comes (``on_token``); the turn's seed
    derives from ``seed``. No generation cache: a chat is a conversation, not an evaluation."""
    import torch  # heavy: torch, imported when needed

    turn_seed = batch_seed(seed, 0, turn) if seed is not None else int(torch.randint(2**62, (1,)).item())
    generator = TransformersGenerator(loaded, batch_size=1, use_cache=False, decode_loop=decode_loop)
    out = generator.generate([history], sampling, turn_seed, on_token=_print_piece)
    print(flush=True)  # the stream's end, as TextStreamer ends it
    return out


def _print_piece(text: str) -> None:
    print(text, end="", flush=True)
