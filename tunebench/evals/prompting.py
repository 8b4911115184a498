"""What a generator is asked: the prompt kinds (a chat, a text, token ids) and their token ids, the decoding
settings pinned for ``model.generate``, the seeds of batches, left padding and where an answer ends. Light: torch is
imported by the one helper that builds tensors."""

from __future__ import annotations

import hashlib
from typing import Any

from tunebench.core.config_schema import SamplingConfig
from tunebench.core.errors import ConfigError
from tunebench.data.encode import encode_messages

Messages = list[dict[str, str]]
Prompt = Messages | str | list[int]
"""What a ``Generator`` answers: a chat conversation (rendered with the engine's chat template, the assistant turn
opened), a text to continue as it is (tokenized by the engine's tokenizer with its own special-token rule), or token
ids to continue exactly (lm-eval's requests, tokenized by lm-eval)."""


def is_chat(prompt: Prompt) -> bool:
    """A chat conversation (a list of ``{"role", "content"}`` messages), not a text or token-id completion."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)


def cut_at_stops(text: str, stop: list[str] | None) -> str:
    """The answer up to its first stop string (a runtime may return text past one, or check every few tokens)."""
    cut = len(text)
    for s in stop or ():
        i = text.find(s) if s else -1
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def is_greedy(sampling: SamplingConfig) -> bool:
    """Temperature 0 means greedy decoding."""
    return sampling.temperature == 0


def samples_per_prompt(sampling: SamplingConfig) -> int:
    """Greedy decoding is deterministic, so extra samples would be copies."""
    return 1 if is_greedy(sampling) else sampling.n_samples


def stop_token_ids(loaded: Any) -> list[int]:
    """The chat template's end-of-turn (tokenizer.eos) plus the model's own EOS ids."""
    ids = [loaded.tokenizer.eos_token_id]
    model_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids += model_eos if isinstance(model_eos, list) else [model_eos]
    return list(dict.fromkeys(i for i in ids if i is not None))


def pad_id(tokenizer: Any) -> int:
    """The padding id (EOS when the tokenizer has none: the attention mask hides padding anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generation_kwargs(loaded: Any, sampling: SamplingConfig) -> dict[str, Any]:
    """Keyword arguments for ``model.generate`` that pin every decoding knob.

    Unset knobs in transformers fall back to the model's generation_config.json (Llama 3.2 ships
    temperature 0.6 / top_p 0.9) and to top_k=50, so each one is set here explicitly: the settings in
    the report are the ones that ran.
    """
    kw: dict[str, Any] = {
        "max_new_tokens": sampling.max_new_tokens,
        "pad_token_id": pad_id(loaded.tokenizer),
        "eos_token_id": stop_token_ids(loaded),
        "repetition_penalty": 1.0,
    }
    if is_greedy(sampling):
        # neutral values, so that a sampling default in the model's config cannot warn or leak in
        kw.update(do_sample=False, temperature=1.0, top_p=1.0)
    else:
        kw.update(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=1.0 if sampling.top_p is None else sampling.top_p,
            min_p=0.0 if sampling.min_p is None else sampling.min_p,
            top_k=0,
        )
    return kw


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of any ``Prompt``: a chat rendered (``render_prompt``), a text tokenized as the tokenizer's own call
    does (its BOS rule), token ids as given."""
    if is_chat(prompt):
        return render_prompt(tokenizer, prompt)  # type: ignore[arg-type]
    ids = list(tokenizer(prompt)["input_ids"]) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        raise ConfigError("an empty prompt: give a chat conversation, a text or token ids to continue")
    return ids


def render_prompt(tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of a conversation with the assistant turn opened (the template adds special tokens).

    Message contents stay text: control strings typed into a prompt or a chat never become control tokens
    (the same tokenization training uses, see ``data.encode.tokenize_rendered``)."""
    return encode_messages(tokenizer, list(messages), add_generation_prompt=True)


def batch_seed(seed: int, sample: int, batch: int) -> int:
    """A seed for one batch, derived so that neighbouring (sample, batch) pairs are unrelated."""
    digest = hashlib.sha256(f"{seed}:{sample}:{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63 - 1)


def left_pad(rows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[Any, Any]:
    """(input_ids, attention_mask) with padding on the left, so every row ends where generation starts.

    ``width`` pads to a fixed length (at least the longest row), as a static cache wants."""
    import torch  # heavy: torch, imported when needed

    width = max(width or 0, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def count_new_tokens(row: list[int], stops: set[int]) -> int:
    """Generated tokens up to and including the first stop token (the rest is padding)."""
    for i, t in enumerate(row):
        if t in stops:
            return i + 1
    return len(row)
