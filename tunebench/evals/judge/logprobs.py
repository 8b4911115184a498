"""Verdicts read from the judge's next-token probabilities (``eval.judge.verdict: logprobs``).

AlpacaEval 2's weighted annotator asks the judge for the verdict alone and reads it from the token probabilities
instead of decoding an explanation. Here the prompt asks for the verdict only (``verdict_only``), the judge's answer
is prefilled with ``[[`` and one forward pass gives p(A), p(B) and p(C) at the next position: no decoding, one
prefill per judgment. The verdict is the likeliest letter when the three letters hold at least ``MIN_MASS`` of the
probability; otherwise the judge gave no verdict (counted as unparsed, never read as a tie).

Both judges, in-process (``LogprobJudge``) and over an endpoint (``evals.endpoint.EndpointJudge`` with chat
``logprobs``), return the same judgment text (``verdict_text``), so ``prompts.parse_verdict`` and everything
after it are the same for either verdict mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunebench.core import output
from tunebench.core.config_schema import SamplingConfig
from tunebench.core.errors import JudgeError
from tunebench.core.io import cache_root
from tunebench.evals.generation_cache import GenerationCache, cache_group
from tunebench.evals.prompting import Messages, left_pad, pad_id, render_prompt

LETTERS = ("A", "B", "C")
PREFILL = "[["
"""What the judge's answer is made to begin with: MT-Bench's verdict format is ``[[A]]``."""
MIN_MASS = 0.5
"""Below this total probability of A, B and C after ``[[``, the judge gave no verdict."""
TOP_LOGPROBS = 20
"""Alternatives an endpoint is asked for at each position (OpenAI's maximum)."""


def verdict_text(probs: dict[str, float] | None, min_mass: float = MIN_MASS) -> str:
    """The judgment text of one probability reading: ``[[A]] p(A)=... p(B)=... p(C)=...`` or a no-verdict line.

    ``probs`` is None when the reply carried no probabilities at the verdict's position."""
    if probs is None:
        return "no verdict (the reply did not open with the brackets of the verdict format)"
    shown = " ".join(f"p({k})={probs.get(k, 0.0):.4f}" for k in LETTERS)
    mass = sum(probs.get(k, 0.0) for k in LETTERS)
    if mass < min_mass:
        return f"no verdict (mass on A, B and C after {PREFILL!r} is {mass:.3f}, below {min_mass:g}: {shown})"
    best = max(LETTERS, key=lambda k: (probs.get(k, 0.0), -LETTERS.index(k)))
    return f"[[{best}]] {shown}"


def letter_tokens(tokenizer: Any) -> tuple[list[int], dict[str, int]]:
    """(prefill ids, the token id of each letter right after them).

    The prefill is the common prefix of ``[[A``, ``[[B`` and ``[[C`` as the tokenizer splits them, and each
    letter must then be one token; otherwise the verdict cannot be read from one position.

    Raises:
        ValueError: a tokenizer that merges the letters differently (the caller says to use verdict: explain).
    """
    rows = {k: tokenizer.encode(PREFILL + k, add_special_tokens=False) for k in LETTERS}
    first = rows["A"]
    n = 0
    while all(len(r) > n and r[n] == first[n] for r in rows.values()):
        n += 1
    letters = {k: r[n] for k, r in rows.items() if len(r) == n + 1}
    if len(letters) != len(LETTERS) or len(set(letters.values())) != len(LETTERS):
        raise ValueError(f"the tokenizer splits {[PREFILL + k for k in LETTERS]} as {list(rows.values())}")
    return first[:n], letters


@dataclass
class LogprobJudge:
    """An in-process judge whose verdicts are next-token probabilities after the prefilled ``[[``.

    Prompts are batched by length (longest first) and left-padded; positions follow the mask, so a padded row
    sees the positions it would alone, and the model computes logits at the last position only.

    Raises:
        JudgeError: a judge whose tokenizer does not split ``[[A`` into the prefill and one letter token.
    """

    loaded: Any
    batch_size: int
    progress: bool = True
    min_mass: float = MIN_MASS
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        try:
            self.prefill, self.letters = letter_tokens(self.loaded.tokenizer)
        except ValueError as e:
            raise JudgeError(
                f"eval.judge.verdict: logprobs reads the verdict as one token after {PREFILL!r}, but "
                f"{self.loaded.source.ref}'s {e}; use eval.judge.verdict=explain for this judge"
            ) from None

    def identity(self) -> dict[str, Any]:
        return {"kind": "in-process", "verdict": "logprobs", **self.loaded.identity()}

    def group(self) -> dict[str, Any]:
        """Everything besides the messages that decides a reading (the judgments' cache group): what decides a
        greedy answer of this model (``generation_cache.cache_group``), the prefill and the verdict threshold."""
        greedy = SamplingConfig(name="judge", temperature=0.0, min_p=None, max_new_tokens=1)
        return {
            **cache_group(self.loaded, greedy, 0),
            "judge": self.identity(),
            "prefill": PREFILL,
            "min_mass": self.min_mass,
        }

    def complete(self, requests: list[Messages]) -> list[str]:
        """One judgment text per request, in order; cached readings are not computed again."""
        cache = GenerationCache(self.cache_dir or (cache_root() / "generations"), self.group())
        out: list[str | None] = [None] * len(requests)
        for i, msgs in enumerate(requests):
            hit = cache.get(msgs, 0)
            out[i] = hit["text"] if hit is not None else None
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            probs = self.probabilities([requests[i] for i in todo])
            new = {}
            for i, p in zip(todo, probs, strict=True):
                out[i] = verdict_text(p, self.min_mass)
                new[GenerationCache.key(requests[i], 0)] = {"text": out[i], "new_tokens": 0, "probs": p}
            cache.put_many(new)
        return [o or "" for o in out]

    def probabilities(self, requests: list[Messages]) -> list[dict[str, float]]:
        """p(A), p(B), p(C) at the position after the prefill, for every request (batched by length)."""
        import torch  # heavy: torch, imported when needed

        tok, model = self.loaded.tokenizer, self.loaded.model
        rows = [render_prompt(tok, m) + self.prefill for m in requests]
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
        device = getattr(model, "device", None) or self.loaded.device
        pad = pad_id(tok)
        out: list[dict[str, float]] = [{} for _ in rows]
        bar = output.bar(total=len(rows), desc="judge[logprobs]", disable=not self.progress)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                part = order[start : start + self.batch_size]
                ids, mask = left_pad([rows[i] for i in part], pad)
                ids, mask = ids.to(device), mask.to(device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = _last_logits(model, ids, mask, positions)
                p = torch.softmax(logits.float(), dim=-1)
                for j, i in enumerate(part):
                    out[i] = {k: float(p[j, t]) for k, t in self.letters.items()}
                bar.update(len(part))
        bar.close()
        return out


def _last_logits(model: Any, ids: Any, mask: Any, positions: Any) -> Any:
    """Logits at the last position of each row; only that position is projected where the model allows it."""
    try:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
    except TypeError:  # a model without logits_to_keep: project every position, keep the last
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return logits[:, -1, :]


def _letter(token: str) -> str | None:
    """The verdict letter a reply token stands for (``A``, ``" B"``, ``"[[C"``), or None."""
    s = token.replace("[", "").strip().upper()
    return s if s in LETTERS else None


def probs_from_chat_logprobs(content: list[dict[str, Any]] | None) -> dict[str, float] | None:
    """p(A), p(B), p(C) from an OpenAI chat reply's ``choices[0].logprobs.content``.

    An endpoint cannot be prefilled, so the reply itself must open with the verdict's brackets (``[[`` or ``[``,
    as the verdict-only prompt asks): the verdict's position is the first token past them, and the letters'
    probabilities are read from its ``top_logprobs`` (a letter missing from them counts 0; a token such as
    ``[[A`` carries its own brackets). None when the reply opens with anything else: the judge gave no verdict
    where one was asked for, and the letters' chances elsewhere in a reply say nothing about its preference."""
    opened = False
    for pos in content or []:
        token = str(pos.get("token", ""))
        if not token.replace("[", "").strip():
            opened = opened or "[" in token
            if opened or not token.strip():
                continue
        if not (opened or token.lstrip().startswith("[")):
            return None
        probs = {k: 0.0 for k in LETTERS}
        alternatives = pos.get("top_logprobs") or [{"token": token, "logprob": pos.get("logprob")}]
        for alt in alternatives:
            k, lp = _letter(str(alt.get("token", ""))), alt.get("logprob")
            if k is not None and lp is not None:
                probs[k] += math.exp(float(lp))
        return probs
    return None
