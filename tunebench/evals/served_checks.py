"""Whether a server's likelihoods can be used: its echoed prompt log-probs against the in-process adapter's.

A canary conversation goes through ``/v1/completions`` with echo and logprobs (``likelihood_check``: on the run's
token ids; ``text_likelihood_check``: on text, the way lm-eval's loglikelihood requests are sent). A server that
drops the prompt's log-probs, mangles them or serves another model fails the check, and the results say why.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from tunebench.core.errors import EndpointError
from tunebench.data.conversations import encode_messages
from tunebench.evals.prompting import Messages

if TYPE_CHECKING:
    from tunebench.evals.served import EndpointModel

log = logging.getLogger("tunebench.evals.served")  # the messages read as the endpoint evaluation's, as before

CANARY: Messages = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
    {"role": "assistant", "content": "The capital of France is Paris, on the river Seine."},
]
"""The conversation whose echoed log-probs decide whether the server's likelihoods can be used."""
LOGPROB_TOLERANCE = 0.5
"""Largest mean |log p(server) - log p(adapter)| per canary token (nats) that still counts as the same model:
an 8-bit GGUF of the packaged model in llama.cpp stays far below it; an off-by-one or the top token's log-prob in
place of the prompt token's is nats away."""


def align_echo(
    tok: Any, ids: list[int], entries: list[tuple[str | None, int | None, float | None]]
) -> list[float | None] | str:
    """The server's log-prob of each of ``ids`` (None where it gave none), or why the echo does not line up.

    A server that scores every token returns len(ids) entries (+ the generated one) in order. llama-cpp-python
    leaves out every token whose id is the model's BOS, which for ChatML models is ``<|im_start|>``: there the
    entries are matched to the ids in order by their text pieces (a special token has none; a piece that is part of
    a character has none on the server's side), and an id the server left out gets None.
    """
    if len(entries) in (len(ids), len(ids) + 1):
        return [e[2] for e in entries[: len(ids)]]
    out: list[float | None] = []
    j = 0
    for m, token in enumerate(ids):
        piece = tok.decode([token], skip_special_tokens=True)
        e = entries[j] if j < len(entries) else None
        if e is not None and e[0] == piece.replace("\ufffd", ""):
            out.append(e[2])
            j += 1
        elif not piece:  # a special token the server left out of the echo
            out.append(None)
        else:
            return (
                f"its echo does not line up with the run's tokens at token {m} of {len(ids)} ({piece!r}; the "
                f"server has {e[0] if e else 'nothing'!r} there): it takes no token-id prompts, and its tokenizer "
                "makes other tokens of the text than the run's did"
            )
    return out


def prompt_logprobs(model: EndpointModel, ids: list[int], tok: Any) -> list[float | None] | str:
    """The server's log-probs of the run's token ``ids`` (one per id; None for the first and any it left out), or
    why they cannot be used.

    The ids go as their text with the template's markup (the server tokenizes it, special tokens included); the
    echo comes back as prompt tokens then the one generated token.
    """
    entries = None
    if model.takes_ids is not False:  # the run's own ids, as the API allows: nothing is re-tokenized
        try:
            entries = model.echo_logprobs(list(ids))
            model.takes_ids = True
        except EndpointError as e:
            if model.takes_ids:  # it took ids before: this is another failure
                raise
            model.takes_ids = False
            log.info("%s takes no token-id prompts (%s); scoring the ids' text instead", model.client.root, e)
    if entries is None:
        entries = model.echo_logprobs(tok.decode(ids, skip_special_tokens=False))
    if len(entries) <= 1:
        return (
            (
                "it returned log-probs for the generated token only, not the echoed prompt's (llama.cpp #27174's "
                "behaviour)"
            )
            if entries
            else "it returned no log-probs (logprobs with echo)"
        )
    return align_echo(tok, ids, entries)


def adapter_token_logprobs(loaded: Any, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1 from the in-process model."""
    import torch  # heavy: torch

    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        return [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


def likelihood_check(model: EndpointModel, loaded: Any) -> dict[str, Any]:
    """Whether the server's echoed prompt log-probs are the in-process adapter's on the canary conversation.

    Returns:
        ``{"ok", "why", "tokens", "mean_abs_diff", "max_abs_diff", "tolerance"}``; ``why`` names the server's
        behaviour when ``ok`` is False.
    """
    ids = encode_messages(loaded.tokenizer, CANARY)
    check: dict[str, Any] = {"ok": False, "tokens": len(ids), "tolerance": LOGPROB_TOLERANCE, "canary": CANARY}
    try:
        served = prompt_logprobs(model, ids, loaded.tokenizer)
    except EndpointError as e:
        check["why"] = f"its /v1/completions refused echo with logprobs ({e})"
        return check
    if isinstance(served, str):
        check["why"] = served
        return check
    ours = adapter_token_logprobs(loaded, ids)
    pairs = [(float(a), b) for a, b in zip(served[1:], ours, strict=True) if a is not None]
    check["left_out"] = len(ours) - len(pairs)
    if len(pairs) < len(ours) / 2 or any(not math.isfinite(a) for a, _ in pairs):
        check["why"] = f"it returned log-probs for {len(pairs)} of the {len(ours)} prompt tokens, or non-finite ones"
        return check
    diffs = [abs(a - b) for a, b in pairs]
    check.update(mean_abs_diff=sum(diffs) / len(diffs), max_abs_diff=max(diffs))
    if check["mean_abs_diff"] > LOGPROB_TOLERANCE:
        check["why"] = (
            f"its prompt log-probs differ from the in-process adapter's by {check['mean_abs_diff']:.3f} "
            f"nats per token on average (tolerance {LOGPROB_TOLERANCE}): mangled, shifted, or another "
            "model"
        )
        return check
    check.update(ok=True, why="")
    return check


def text_likelihood_check(model: EndpointModel, loaded: Any, chat_template: bool = True) -> dict[str, Any]:
    """Whether lm-eval's loglikelihood requests can be scored on this server the way ``evals.lm_eval_text`` sends
    them (the text of context + continuation, the continuation found in the server's echo): the canary reply's
    log-prob given its prompt, served against the in-process adapter's, per continuation token. The prompt is
    shaped as the tasks' are (the chat template on or off), because servers differ there: llama-cpp-python's echo
    is misaligned on a prompt that does not begin with the BOS, and is caught here.

    Unlike ``likelihood_check`` this needs no token-id agreement: each side scores the same string with its own
    tokenizer, which is what an lm-eval task asks of it.
    """
    from tunebench.core.errors import LmEvalError
    from tunebench.evals.lm_eval_text import continuation_score

    tok = loaded.tokenizer
    question, reply = CANARY[0]["content"], CANARY[-1]["content"]
    context = (
        tok.apply_chat_template(CANARY[:-1], tokenize=False, add_generation_prompt=True)
        if chat_template
        else f"Question: {question}\nAnswer: "
    )
    stripped = context.rstrip()  # lm-eval's split: the context's trailing whitespace goes with the continuation
    context, continuation = stripped, context[len(stripped) :] + reply
    full = context + continuation
    check: dict[str, Any] = {
        "ok": False,
        "tolerance": LOGPROB_TOLERANCE,
        "continuation": continuation,
        "chat_template": chat_template,
    }
    body = {"model": model.name, "prompt": full, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
    try:
        served, _, _ = continuation_score(model.client.request("/completions", body), continuation)
    except (EndpointError, LmEvalError) as e:
        check["why"] = f"its /v1/completions cannot score a continuation ({e})"
        return check
    special = not chat_template  # a rendered template carries its own BOS; plain text gets the tokenizer's
    ctx_ids = tok(context, add_special_tokens=special)["input_ids"]
    ids = tok(full, add_special_tokens=special)["input_ids"]
    if ids[: len(ctx_ids)] != ctx_ids or len(ids) == len(ctx_ids) or not ctx_ids:
        check["why"] = "the run's tokenizer merges the canary's prompt and reply across their boundary"
        return check
    ours = sum(adapter_token_logprobs(loaded, ids)[len(ctx_ids) - 1 :])
    n = len(ids) - len(ctx_ids)
    check.update(served_logprob=served, adapter_logprob=ours, tokens=n, mean_abs_diff=abs(served - ours) / n)
    if check["mean_abs_diff"] > LOGPROB_TOLERANCE:
        check["why"] = (
            f"its log-prob of the canary's reply differs from the in-process adapter's by "
            f"{check['mean_abs_diff']:.3f} nats per token (tolerance {LOGPROB_TOLERANCE})"
        )
        return check
    check.update(ok=True, why="")
    return check
