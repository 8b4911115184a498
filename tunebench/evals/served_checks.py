"""A model behind an OpenAI-compatible server (``EndpointModel``: a generator, and its echoed log-probs), and whether
the server's likelihoods can be used: its echoed prompt log-probs against the in-process adapter's.

A canary conversation goes through ``/v1/completions`` with echo and logprobs (``likelihood_check``: on the run's
token ids; ``text_likelihood_check``: on text, the way lm-eval's loglikelihood requests are sent). A server that
drops the prompt's log-probs, mangles them or serves another model fails the check, and the results say why.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from tunebench.core import output
from tunebench.core.config_schema import SamplingConfig
from tunebench.core.errors import EndpointError
from tunebench.core.runtimes import ENDPOINT
from tunebench.data.encode import encode_messages
from tunebench.evals.endpoint import OpenAIClient
from tunebench.evals.generation import Generation, stream_whole
from tunebench.evals.prompting import Messages, Prompt, batch_seed, cut_at_stops, is_chat, samples_per_prompt

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


@dataclass
class EndpointModel:
    """A model behind an OpenAI-compatible server: a generator (``generate(prompts, sampling, seed)``) like
    ``generation.generate`` and ``LlamaCppModel``, with what results record about it."""

    client: OpenAIClient
    name: str
    template: str | None
    """The run's template name: results pair only on the same one."""
    concurrency: int = 8
    progress: bool = True
    takes_ids: bool | None = None
    """Whether /v1/completions takes token-id prompts (None: not tried yet; llama-cpp-python's server does not)."""

    def identity(self) -> dict[str, Any]:
        return {"runtime": ENDPOINT, "base_url": self.client.root, "served_model": self.name, "template": self.template}

    def body(
        self, prompt: Prompt, sampling: SamplingConfig, seed: int, stop: list[str] | None = None
    ) -> dict[str, Any]:
        """A chat request (a conversation) or a completions request (a text, token ids), every sampling knob pinned
        (servers' defaults differ: top_k 40, min_p 0.05, ...).

        Raises:
            EndpointError: token ids for a server known not to take them (``takes_ids`` False)."""
        if not is_chat(prompt) and not isinstance(prompt, str) and self.takes_ids is False:
            raise EndpointError(
                f"{self.client.root}/completions does not take token-id prompts (llama-cpp-python's server "
                "does not); send the prompt as text"
            )
        key = "messages" if is_chat(prompt) else "prompt"
        return {
            "model": self.name,
            key: prompt,
            **({"stop": [s for s in stop if s]} if stop else {}),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": 1.0 if sampling.top_p is None else sampling.top_p,
            "min_p": 0.0 if sampling.min_p is None else sampling.min_p,
            "top_k": 0,
            "repeat_penalty": 1.0,
            "seed": seed,
        }

    def generate(
        self,
        prompts: list[Prompt],
        sampling: SamplingConfig,
        seed: int,
        on_token: Callable[[str], None] | None = None,
        stop: list[str] | None = None,
    ) -> Generation:
        """Answer every prompt, ``concurrency`` requests in flight; answer (i, s) is drawn with seed
        ``batch_seed(seed, s, i)``, as in-process llama.cpp draws it. Conversations go to /chat/completions,
        texts and token ids to /completions; ``stop`` is sent as the API's ``stop`` and the answer cut at it too.

        Raises:
            EndpointError: a request that failed after its retries, named by prompt and sample.
        """
        n = samples_per_prompt(sampling)
        out = Generation(
            samples=[[""] * n for _ in prompts], token_counts=[[0] * n for _ in prompts], decode_loop=ENDPOINT
        )
        jobs = [(i, s) for s in range(n) for i in range(len(prompts))]
        bodies = [self.body(prompts[i], sampling, batch_seed(seed, s, i), stop) for i, s in jobs]  # refused: none sent
        headers = self.client.headers()
        t0 = time.perf_counter()
        bar = output.bar(total=len(jobs), desc=f"generate[{sampling.name}, endpoint]", disable=not self.progress)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._ask, body, headers): job for job, body in zip(jobs, bodies, strict=True)}
            try:
                for fut in as_completed(futures):
                    i, s = futures[fut]
                    try:
                        text, usage = fut.result()
                    except EndpointError as e:
                        asked = prompts[i][-1]["content"] if is_chat(prompts[i]) else str(prompts[i])
                        raise EndpointError(
                            f"request for prompt {i + 1} of {len(prompts)} (sample {s}, {asked[:60]!r}) failed: {e}"
                        ) from None
                    text = cut_at_stops(text, stop)
                    out.samples[i][s] = text.strip() if is_chat(prompts[i]) else text
                    out.token_counts[i][s] = int(usage.get("completion_tokens") or 0)
                    out.new_tokens += out.token_counts[i][s]
                    out.generate_calls += 1
                    bar.update(1)
            except BaseException:  # stop asking: nothing half-done is kept
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                bar.close()
        out.seconds = time.perf_counter() - t0
        out.cache_misses = out.generate_calls
        return stream_whole(out, on_token)

    def _ask(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, dict[str, Any]]:
        return self.client.chat(body, headers) if "messages" in body else self.client.complete(body, headers)

    def echo_logprobs(self, prompt: str | list[int]) -> list[tuple[str | None, int | None, float | None]]:
        """(token text, text offset, log-prob) of every token of ``prompt`` (text, or token ids as the OpenAI API
        allows) as the server scores it, then of the one token it generates (``/v1/completions`` with echo); []
        when it returns none."""
        body = {"model": self.name, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        data = self.client.request("/completions", body)
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{self.client.root}/completions answered without choices[0]; is it an "
                "OpenAI-compatible completions server?"
            ) from None
        lp = choice.get("logprobs") if isinstance(choice, dict) else None
        lp = lp if isinstance(lp, dict) else {}
        values, tokens, offsets = lp.get("token_logprobs"), lp.get("tokens"), lp.get("text_offset")
        if not isinstance(values, list):
            return []
        tokens = tokens if isinstance(tokens, list) and len(tokens) == len(values) else [None] * len(values)
        offsets = offsets if isinstance(offsets, list) and len(offsets) == len(values) else [None] * len(values)
        return list(zip(tokens, offsets, values, strict=True))


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
    """Whether lm-eval's loglikelihood requests can be scored on this server the way ``evals.lm_eval.text`` sends
    them (the text of context + continuation, the continuation found in the server's echo): the canary reply's
    log-prob given its prompt, served against the in-process adapter's, per continuation token. The prompt is
    shaped as the tasks' are (the chat template on or off), because servers differ there: llama-cpp-python's echo
    is misaligned on a prompt that does not begin with the BOS, and is caught here.

    Unlike ``likelihood_check`` this needs no token-id agreement: each side scores the same string with its own
    tokenizer, which is what an lm-eval task asks of it.
    """
    from tunebench.core.errors import LmEvalError
    from tunebench.evals.lm_eval.text import continuation_score

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
