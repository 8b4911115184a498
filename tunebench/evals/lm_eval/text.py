"""lm-eval tasks scored through a text completions API: a served endpoint's ``/v1/completions``, or llama.cpp in
process through the same ``create_completion`` the llama-cpp-python server calls.

lm-eval's own ``local-completions`` model finds a continuation in the echoed prompt by counting tokens of its own
tokenizer (``ctxlen``). A server that tokenizes differently, adds or drops a BOS, or leaves special tokens out of the
echo (llama-cpp-python does, for the BOS id) shifts that count, and the task scores silently wrong (llama.cpp #27174
is the extreme case: no prompt tokens at all, so chance). Here the continuation is found by the server's own
token strings and ``text_offset``: the echoed prompt ends where the generated token starts, and the continuation
is its last characters. A token that starts inside
the context and ends inside the continuation (the server merged the two across the boundary) is scored with the
continuation and counted (``boundary_merges``), so the results say how often that happened. The context's
trailing whitespace moves into the continuation first, as lm-eval's own models split a pair.

Loglikelihood (multiple choice) and generate_until tasks run; rolling loglikelihood (perplexity tasks) does not:
a text API gives no log-prob for the first token, so the sum would not be HFLM's (the run's own perplexity is
scored on its token ids instead, see ``evals.served``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lm_eval.api.model import LM  # heavy: lm-eval; this module is imported only when tasks run

from tunebench.core import output
from tunebench.core.config_schema import SamplingConfig
from tunebench.core.errors import LmEvalError
from tunebench.evals.generation import Generator

Complete = Callable[[dict[str, Any]], dict[str, Any]]
"""One completions request (an OpenAI ``/v1/completions`` body) -> its JSON answer."""
GREEDY_SLACK = 1e-6


def _generated_count(response: dict[str, Any], n_tokens: int) -> int:
    """How many of the echoed entries the server generated (a request asks for one): ``usage.completion_tokens``
    where given, else one unless the answer stopped at once (an end-of-sequence token is not echoed)."""
    usage = response.get("usage") or {}
    n = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(n, int):
        n = 0 if response["choices"][0].get("finish_reason") == "stop" else 1
    return max(0, min(n, n_tokens))


def continuation_score(response: dict[str, Any], continuation: str) -> tuple[float, bool, bool]:
    """(sum of the continuation's log-probs, whether each of its tokens was the top-1, whether a token spanned the
    context/continuation boundary) from an echoed completion of context + ``continuation``.

    Everything is read in the echo's own text space (each token's string and offset), never by positions of the
    request's string: servers differ in what that space holds (llama-cpp-python's offsets skip special tokens and
    the BOS, OpenAI's index the returned text). The echoed prompt ends where the generated tokens begin; the
    continuation is its last ``len(continuation)`` characters, and the tokens that reach into them are scored.

    Raises:
        LmEvalError: no echoed log-probs, no offsets, no token of the continuation in them, or an echo that does
            not end in the continuation's text.
    """
    try:
        lp = response["choices"][0]["logprobs"]
        values, offsets, tokens = lp["token_logprobs"], lp["text_offset"], lp["tokens"]
        tops = lp.get("top_logprobs") or [None] * len(values)
    except (KeyError, IndexError, TypeError):
        raise LmEvalError(
            "the completions answer has no choices[0].logprobs with tokens, token_logprobs and "
            "text_offset (echo with logprobs): lm-eval loglikelihood tasks cannot be scored on it"
        ) from None
    if not (isinstance(values, list) and isinstance(offsets, list) and isinstance(tokens, list)) or not len(
        offsets
    ) == len(values) == len(tokens):
        raise LmEvalError("the completions answer's tokens, token_logprobs and text_offset do not line up")
    end_k = len(tokens) - _generated_count(response, len(tokens))  # first generated entry
    if end_k == 0:
        raise LmEvalError(
            f"no echoed token covers the continuation {continuation[:40]!r}: the server's echo leaves "
            "out the prompt's tokens (llama.cpp #27174's behaviour), so the task cannot be scored"
        )
    end = int(offsets[end_k - 1]) + len(tokens[end_k - 1])
    start = end - len(continuation)
    picked = [k for k in range(end_k) if int(offsets[k]) + len(tokens[k]) > start]
    echoed = "".join(str(tokens[k]) for k in picked)
    if not picked or not echoed.endswith(continuation):
        raise LmEvalError(
            f"the server's echo does not end in the continuation {continuation[:40]!r} (it ends "
            f"{echoed[-40:]!r}): its token strings do not reproduce the prompt's text, so the "
            "continuation cannot be located"
        )
    merged = int(offsets[picked[0]]) < start
    total, greedy = 0.0, True
    for k in picked:
        v = values[k]
        if v is None or not math.isfinite(float(v)):
            raise LmEvalError(
                f"the server gave no finite log-prob for echoed token {k} ({tokens[k]!r}) of the "
                f"continuation {continuation[:40]!r}"
            )
        total += float(v)
        top = tops[k] if k < len(tops) else None
        if isinstance(top, dict) and top:
            greedy = greedy and float(v) >= max(float(x) for x in top.values()) - GREEDY_SLACK
        else:
            greedy = False
    return total, greedy, merged


def lm_eval_sampling(gen_kwargs: dict[str, Any], default_max: int, strict: bool = True) -> SamplingConfig | None:
    """lm-eval's generation settings (normalized as lm-eval's own models normalize them) as the ``Generator``
    contract's ``SamplingConfig``: greedy, or temperature and top-p sampling with every other knob off. A knob the
    contract has not (top_k, beams, ...) gives None when ``strict``, else it is left out (a text API's own)."""
    from lm_eval.models.utils import normalize_gen_kwargs  # heavy: lm-eval

    rest = normalize_gen_kwargs(gen_kwargs, default_max)
    rest.pop("until", None)
    max_new = int(rest.pop("max_gen_toks"))
    sample = bool(rest.pop("do_sample", False))
    temperature = float(rest.pop("temperature", 0.0) or 0.0)
    top_p = rest.pop("top_p", None)
    if rest and strict:
        return None
    if not sample or temperature == 0:
        return SamplingConfig(name="lm-eval", temperature=0.0, min_p=None, max_new_tokens=max_new)
    top_p = None if top_p is None else float(top_p)
    return SamplingConfig(name="lm-eval", temperature=temperature, min_p=None, top_p=top_p, max_new_tokens=max_new)


def stop_strings(gen_kwargs: dict[str, Any]) -> list[str]:
    """A request's ``until`` as a list."""
    until = gen_kwargs.get("until") or []
    return [until] if isinstance(until, str) else list(until)


def by_settings(requests: list[Any]) -> list[list[int]]:
    """Indices of the requests, grouped by their generation settings (one ``generate`` call each)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
    return list(groups.values())


class TextCompletionsLM(LM):
    """lm-eval's LM contract over a runtime's text completions: generate_until through its ``Generator`` (text
    prompts, the request's stop strings), loglikelihood through ``complete`` (one completions request with echo ->
    its answer), ``concurrency`` requests in flight (1 for an in-process llama.cpp, which is not thread-safe).
    ``score_text`` (context, continuation) -> (log-prob, greedy, merged) replaces the echo request where the runtime
    scores token ids itself (in-process llama.cpp: its server's echo path sorts the whole vocabulary in Python per
    token)."""

    def __init__(
        self,
        complete: Complete | None,
        generator: Generator,
        model_name: str,
        tokenizer: Any = None,
        template_name: str = "",
        concurrency: int = 1,
        describe: str = "completions",
        score_text: Callable[[str, str], tuple[float, bool, bool]] | None = None,
    ) -> None:
        super().__init__()
        self.score_text = score_text
        self.complete, self.generator, self.model_name, self.tok = complete, generator, model_name, tokenizer
        self.template_name, self.concurrency, self.describe = template_name, max(1, concurrency), describe
        self.boundary_merges = 0
        self.requests_sent = 0

    def _map(self, fn: Callable[[Any], Any], items: list[Any], desc: str, disable: bool) -> list[Any]:
        """``fn`` over ``items`` in order, ``concurrency`` at a time, under one progress bar."""
        bar = output.bar(total=len(items), desc=f"{desc}[{self.describe}]", disable=disable)
        try:
            if self.concurrency == 1:
                out = []
                for x in items:
                    out.append(fn(x))
                    bar.update(1)
                return out
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = [pool.submit(fn, x) for x in items]
                out = []
                for f in futures:
                    out.append(f.result())
                    bar.update(1)
                return out
        finally:
            bar.close()

    def _score(self, args: tuple[str, str]) -> tuple[float, bool, bool]:
        context, continuation = args
        # as lm-eval's own models split a pair (TemplateLM._encode_pair): the context's trailing whitespace is
        # scored with the continuation, so a tokenizer that merges "\n" with " Paris" does not straddle the split
        stripped = context.rstrip()
        context, continuation = stripped, context[len(stripped) :] + continuation
        if self.score_text is not None:
            return self.score_text(context, continuation)
        if self.complete is None:
            raise LmEvalError("loglikelihood needs a completions request with echo (complete) or score_text")
        body = {
            "model": self.model_name,
            "prompt": context + continuation,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        return continuation_score(self.complete(body), continuation)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        scored = self._map(self._score, [r.args for r in requests], "loglikelihood", disable_tqdm)
        self.boundary_merges += sum(m for _, _, m in scored)
        self.requests_sent += len(scored)
        return [(v, g) for v, g, _ in scored]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise LmEvalError(
            "rolling-loglikelihood (perplexity) tasks are not scored through a text completions "
            "API: it gives no log-prob for the first token. Leave them out of eval.lm_eval_tasks "
            "for artifacts and endpoints (the run's own perplexity is scored on its token ids)"
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each group of requests with one generation setting is one ``Generator.generate`` call on the contexts as
        text, with the requests' stop strings (answers cut at the first)."""
        out = [""] * len(requests)
        for idx in by_settings(requests):
            kwargs = requests[idx[0]].args[1] or {}
            sampling = lm_eval_sampling(kwargs, 256, strict=False)
            assert sampling is not None  # not strict: always a setting
            gen = self.generator.generate([requests[i].args[0] for i in idx], sampling, 0, stop=stop_strings(kwargs))
            for i, text in zip(idx, gen.texts, strict=True):
                out[i] = text
        self.requests_sent += len(out)
        return out

    @property
    def tokenizer_name(self) -> str:
        return self.template_name or self.model_name

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The run's chat template, as HFLM renders it (the export contract checks the GGUF's is the same)."""
        if self.tok is None:
            raise LmEvalError("eval.lm_eval_chat_template is on but no tokenizer was given to render it")
        return self.tok.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )


__all__ = ["TextCompletionsLM", "continuation_score", "lm_eval_sampling"]
