"""lm-eval's own HF model (``HFLM``) as ``TunebenchLM``: batched tokenization, logits only where scored, and a
faster ``generate_until``. Imports lm-eval, transformers and torch at its top: callers import this module when they
run lm-eval (``model.model_class()`` does), never at their own import.

Why: lm-eval generates at the loglikelihood batch size, each batch at its own shape, until every row has printed
a stop string, and tokenizes every request one string at a time; for a small model both are most of a standard
evaluation's time (figures: docs/evaluation.md, "How lm-eval runs", and
reports/published/2026-11-28-h100-eval-issue13.md).

What changes is only how the tokens are produced, never which prompts, settings or post-processing:

- generate_until is the suite's ``Generator`` contract (``generation.TransformersGenerator``), as the probes, the
  chat and the judge use it: each group of requests with one generation setting is one ``generate`` call on
  lm-eval's token ids, with lm-eval's stop strings. So on CUDA every batch goes through the suite's decode loop
  (``evals.decoding``, each step one CUDA graph replay) or, where the model does not allow it, transformers'
  compiled static cache for calls long enough to repay compiling (``decode_loops.decode_path``), every batch of a
  call at one shape (rows padded with copies of the last, contexts left-padded to the widest of the call): one
  capture or one compiled step serves the call. Settings the contract does not carry (top_k, beams, ...) go
  through lm-eval's own ``HFLM.generate_until``;
- one stopping criterion (``stop_strings.StopStrings``) marks each row done as soon as any of its stop strings
  occurs in what it generated (the decode loop asks every ``decoding.STOP_CHECK_EVERY`` steps), and the batch ends
  when every row is done. lm-eval cuts each answer at the first stop string anyway (``postprocess_generated_text``),
  so where generation stops never changes the answer; it only saves steps.
- generation runs at its own batch size (``eval.lm_eval_generate_batch_size``);
- loglikelihood asks the model for the logits of scored positions only (``TunebenchLM._loglikelihood_tokens``),
  so its batches can be large;
- the distinct strings of a call are tokenized up front in batches on every core (the fast tokenizer's batch
  encoding gives the same ids as lm-eval's one-string ``tok_encode``, which then reads them from a memo).

Tokenization, left truncation, the stop strings (with EOS), the order of requests, post-processing and lm-eval's
request cache stay lm-eval's. Greedy answers equal lm-eval's plain path up to the numerics of another batch shape
(bf16 on GPUs), as with another lm-eval batch size.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM, eval_logger
from lm_eval.models.utils import (
    Collator,
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    postprocess_generated_text,
)

from tunebench.core import output
from tunebench.core.errors import LmEvalError
from tunebench.core.threads import tokenizer_threads
from tunebench.evals.generation import TransformersGenerator
from tunebench.evals.lm_eval.text import by_settings, lm_eval_sampling, stop_strings

LOGITS_BUDGET = 2**28
"""Most logits one loglikelihood forward may return (batch x kept positions x vocabulary; 1 GiB in float32): a
batch whose scored positions spread wider is scored in consecutive parts."""


class TunebenchLM(HFLM):
    """``HFLM`` whose generation runs at fixed shapes on a static cache (see the module docstring)."""

    def __init__(
        self, *args: Any, generate_batch_size: int | None = None, cache_implementation: str = "auto", **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.generate_batch_size = int(generate_batch_size or self.batch_size_per_gpu)
        self.cache_implementation = cache_implementation
        self.decode_loop = "dynamic"  # decided per generate_until call, as for the probes (decode_path)
        self.loop_batches = 0  # batches the suite's decode loop generated (the rest went through generate)
        self._encoded: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ tokenization, batched up front

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        hit = self._encoded.get(string) if add_special_tokens is None and not kwargs else None
        if hit is None:
            return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
        return hit[-left_truncate_len:] if left_truncate_len else list(hit)

    def _encode_all(self, strings: set[str]) -> None:
        """Fill the memo: each string with the special-token setting ``HFLM.tok_encode`` gives it."""
        bos = self.tokenizer.decode(self.prefix_token_id)
        groups: dict[bool | None, list[str]] = {}
        for text in strings:
            special = _add_special_kwargs(None, self.add_bos_token).get("add_special_tokens")
            groups.setdefault(False if has_bos_prefix(text, bos) else special, []).append(text)
        with tokenizer_threads():
            for special, texts in groups.items():
                kw = {} if special is None else {"add_special_tokens": special}
                for start in range(0, len(texts), 4096):
                    chunk = texts[start : start + 4096]
                    self._encoded.update(zip(chunk, self.tokenizer(chunk, **kw)["input_ids"], strict=True))

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        strings: set[str] = set()
        for context, continuation in (r.args for r in requests):
            if not context:
                strings.add(continuation)
                continue
            spaces = len(context) - len(context.rstrip())  # as TemplateLM._encode_pair splits the pair
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            strings.update((context, context + continuation))
        self._encode_all(strings)
        try:  # lm-eval's own bars ("Tokenizing inputs") only with -v; the scoring's below is ours
            return super().loglikelihood(requests, disable_tqdm or not output.is_verbose())
        finally:
            self._encoded = {}

    # ------------------------------------------------------------------ loglikelihood, scored positions only

    def _loglikelihood_tokens(
        self, requests: list[Any], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        """``HFLM._loglikelihood_tokens`` with the LM head applied only where a continuation is scored.

        The same collation (longest first; one-token continuations of one context share a row), left
        truncation, right padding, log-softmax and per-request operations in the same order. The model is asked
        for the logits of the batch's last positions only, from the first scored position of any row on
        (``logits_to_keep``): lm-eval computed and log-softmaxed ``[batch, length, vocab]`` for every position,
        most of the work and memory for short answers after long contexts (MMLU: one scored position in
        hundreds). So batches can be many times larger (``eval.lm_eval_batch_size``), and fewer forwards matter
        for a small model, whose forwards cost about their eager host overhead (reports/published/README.md).
        Values equal lm-eval's up to the LM head's matmul
        running on fewer rows (float rounding, as with another batch size; tested). Inputs go to the device as one
        tensor and the answers come back as one list per batch. Falls back to lm-eval's own for seq2seq models
        and ``auto`` batch sizes.
        """
        if self.backend != "causal" or self.batch_size == "auto":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)

        def _collate(req: Any) -> tuple[int, tuple[int, ...]]:
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        def _lookup_one_token_cont(req: Any) -> list[int]:
            return req[-2] + req[-1][:-1]

        re_ord = Collator(
            requests,
            sort_fn=_collate,
            group_by="contexts" if self.logits_cache else None,
            group_fn=_lookup_one_token_cont,
        )
        res: list[tuple[float, bool]] = []
        pbar = output.bar(total=len(requests), disable=self.rank != 0, desc="Running loglikelihood requests")
        for chunk in re_ord.get_batched(n=self.batch_size, batch_fn=None):
            rows = []
            for _, context_enc, continuation_enc in chunk:
                assert len(context_enc) > 0 and len(continuation_enc) > 0
                assert len(continuation_enc) <= self.max_length
                total = len(context_enc) + len(continuation_enc)
                if total > self.max_length + 1:
                    eval_logger.warning(
                        f"Combined length of context ({len(context_enc)}) and continuation "
                        f"({len(continuation_enc)}) exceeds model's maximum length ({self.max_length}). "
                        f"Truncating {total - self.max_length + 1} tokens from the left."
                    )
                rows.append((context_enc + continuation_enc)[-(self.max_length + 1) :][:-1])
            chunk = list(chunk)
            for lo, hi in self._logit_parts(rows, chunk):
                for req_str, answer in self._score_part(rows[lo:hi], chunk[lo:hi], re_ord):
                    res.append(answer)
                    if req_str is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str, answer)
                    pbar.update(1)
        pbar.close()
        return re_ord.get_original(res)

    def _score_part(self, rows: list[list[int]], part: list[Any], re_ord: Any) -> list[tuple[Any, tuple[float, bool]]]:
        """(request strings, (log-likelihood, is greedy)) of one forward's requests, in lm-eval's order."""
        width, first = _scored_span(rows, part)
        batched = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        multi_logits = F.log_softmax(
            self._scored_logits(batched.to(self.device), width - first), dim=-1, dtype=self.softmax_dtype
        )  # [batch, width - first, vocab]
        scored = []  # (request strings, continuation, its logits, the row's greedy tokens)
        for (request_str, ctx_tokens, cont_toks), logits, row in zip(part, multi_logits, rows, strict=True):
            logits = logits[len(row) - len(cont_toks) - first : len(row) - first].unsqueeze(0)
            greedy = logits.argmax(dim=-1)
            for req_str, cont, cont_logits in re_ord.get_cache(
                req_str=request_str, cxt_toks=ctx_tokens, cont_toks=cont_toks, logits=logits
            ):
                scored.append((req_str, cont, cont_logits, greedy))
        conts = torch.tensor([t for _, cont, _, _ in scored for t in cont], dtype=torch.long)
        conts = conts.to(self.device).split([len(cont) for _, cont, _, _ in scored])
        sums, equal = [], []
        for (_, _, logits, greedy), cont in zip(scored, conts, strict=True):
            cont = cont.unsqueeze(0)  # [1, seq]
            equal.append((greedy[:, -cont.shape[1] :] == cont).all())
            sums.append(torch.gather(logits, 2, cont.unsqueeze(-1)).squeeze(-1).sum())
        return [
            (req_str, (float(lp), bool(eq)))
            for (req_str, _, _, _), lp, eq in zip(
                scored, torch.stack(sums).tolist(), torch.stack(equal).tolist(), strict=True
            )
        ]

    def _logit_parts(self, rows: list[list[int]], chunk: list[Any]) -> list[tuple[int, int]]:
        """Consecutive (start, end) slices of a batch whose kept logits stay within ``LOGITS_BUDGET`` elements
        (one slice unless the batch's scored positions spread wide, as in the first, longest batch)."""
        vocab = int(getattr(self._config, "vocab_size", 0) or 1)
        width, first = _scored_span(rows, chunk)
        step = max(1, LOGITS_BUDGET // ((width - first) * vocab))
        return [(lo, min(lo + step, len(rows))) for lo in range(0, len(rows), step)]

    def _scored_logits(self, inps: Any, keep: int) -> Any:
        """Logits of the last ``keep`` positions (lm-eval's ``_model_call``, asking the model for fewer)."""
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            logits = self.model(inps, logits_to_keep=keep).logits
        if logits.shape[1] != keep:
            raise RuntimeError(
                f"{type(self.model).__name__} returned logits for {logits.shape[1]} positions "
                f"when asked for the last {keep} (logits_to_keep)"
            )
        return logits

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """lm-eval's generate_until through the suite's ``Generator`` (``generation.TransformersGenerator``): each
        group of requests with the same generation settings is one ``generate`` call on lm-eval's own token ids
        (left-truncated as lm-eval truncates), with its stop strings (``until`` and EOS), then lm-eval's
        post-processing and request cache. Settings the contract does not carry (``text.lm_eval_sampling``),
        mixed precision, thinking tokens, seq2seq and ``auto`` batch sizes go through lm-eval's own
        ``HFLM.generate_until``."""
        if not requests:
            return []
        own = self.backend != "causal" or self.batch_size == "auto" or self.mixed_precision_dtype is not None
        if own or self.think_end_token is not None:
            return self._lm_eval_generate_until(requests, disable_tqdm)
        self._encode_all({r.args[0] for r in requests})
        answers: list[str] = [""] * len(requests)
        try:
            for idx in by_settings(requests):
                mine = [requests[i] for i in idx]
                for i, text in zip(idx, self._generate_group(mine, disable_tqdm), strict=True):
                    answers[i] = text
        finally:
            self._encoded = {}
        return answers

    def _generate_group(self, requests: list[Any], disable_tqdm: bool) -> list[str]:
        """One ``Generator.generate`` call for requests of one generation setting, answers in their order."""
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        sampling = lm_eval_sampling(requests[0].args[1], self.max_gen_toks)
        if sampling is None:  # knobs the contract has not
            return self._lm_eval_generate_until(requests, disable_tqdm)
        until = handle_stop_sequences(stop_strings(requests[0].args[1]), eos=eos)
        max_gen_toks = sampling.max_new_tokens
        if self.max_length - max_gen_toks <= 0:
            raise LmEvalError(
                f"an lm-eval task asks for {max_gen_toks} new tokens, not less than the model's maximum length "
                f"({self.max_length}): lower the task's max_gen_toks"
            )
        # lm-eval's order (longest context first, then the text), so batches hold the requests lm-eval's would
        contexts = [r.args[0] for r in requests]
        order = sorted(range(len(requests)), key=lambda j: (-len(self.tok_encode(contexts[j])), contexts[j]))
        prompts = [self.tok_encode(contexts[j], left_truncate_len=self.max_length - max_gen_toks) for j in order]
        # sampled tasks: a seed drawn from lm-eval's seeded torch RNG, so runs reproduce
        seed = int(torch.randint(2**62, (1,)).item()) if sampling.temperature > 0 else 0
        gen = self._generator(disable_tqdm).generate(prompts, sampling, seed, stop=until)
        if gen.decode_loop:
            self.decode_loop = gen.decode_loop
        self.loop_batches += gen.generate_calls if gen.decode_loop == "graph" else 0
        answers = [""] * len(requests)
        for j, text in zip(order, gen.texts, strict=True):
            answers[j] = postprocess_generated_text(text, until, None)
            self.cache_hook.add_partial("generate_until", requests[j].args, answers[j])
        return answers

    def _generator(self, disable_tqdm: bool) -> TransformersGenerator:
        """This model as the suite's Generator: lm-eval keeps its own request cache, so the answer cache is off."""
        quantized = bool(getattr(self.model, "is_loaded_in_4bit", False))
        model = SimpleNamespace(
            model=self.model, tokenizer=self.tokenizer, device=str(self.device), load_in_4bit=quantized
        )
        return TransformersGenerator(
            model,
            batch_size=self.generate_batch_size,
            use_cache=False,
            decode_loop=self.cache_implementation,
            progress=not disable_tqdm and self.rank == 0,
        )

    def _lm_eval_generate_until(self, requests: list[Any], disable_tqdm: bool) -> list[str]:
        """lm-eval's own generate_until (``model.generate`` at lm-eval's batching), at the generation batch size."""
        loglikelihood_batch = self.batch_size_per_gpu
        self.batch_size_per_gpu = self.generate_batch_size
        try:
            return super().generate_until(requests, disable_tqdm or not output.is_verbose())
        finally:
            self.batch_size_per_gpu = loglikelihood_batch


def _scored_span(rows: list[list[int]], requests: list[Any]) -> tuple[int, int]:
    """(padded width, first scored position) of a batch: logits at position p score token p + 1, so row r's
    continuation is scored at [len(r) - len(continuation), len(r))."""
    first = min(len(row) - len(cont) for row, (_, _, cont) in zip(rows, requests, strict=True))
    return max(len(r) for r in rows), first
