"""Which decode loop generates (``graph``, ``static`` or ``dynamic``) and the one call that runs a batch through it.

``generation.generate`` (the ``Generator`` behind the probes, the chat, the judge and lm-eval's generate_until)
chooses the loop with ``decode_path`` and runs every batch with ``decode``: the suite's
static-cache loop (``evals.decoding.StaticDecoder``, one CUDA graph per call on CUDA) where the model allows it,
else ``model.generate`` on transformers' static compiled cache or its default dynamic one.
"""

from __future__ import annotations

import logging
from typing import Any

from tunebench.core.config_schema import SamplingConfig

log = logging.getLogger(__name__)

STATIC_CACHE_STEP = 256
"""Static caches are sized up to a multiple of this, so nearby prompt lengths share one compiled step."""
STATIC_MIN_STEPS = 4096
"""Under ``auto``, for a model the decode loop does not support (``decode_path``), a call takes transformers' static
compiled cache only when it runs at least this many decode steps (batches x new tokens): compiling costs tens of
seconds per model and shape and saves milliseconds per step, so only long calls repay it (figures:
reports/published/2026-11-28-h100-eval-issue13.md and 2026-12-01-h200-smollm2-standard-full/)."""


def _cuda_16bit(loaded: Any) -> bool:
    """On a CUDA device, with weights that are not bitsandbytes 4-bit (the condition of both fast paths)."""
    on_cuda = str(getattr(loaded.model, "device", loaded.device)).startswith("cuda")
    return on_cuda and not getattr(loaded, "load_in_4bit", False)


def use_static_cache(loaded: Any, choice: str = "auto", decode_steps: int | None = None) -> bool:
    """Static (compiled) KV cache: asked for, or ``auto`` on CUDA for a call of at least ``STATIC_MIN_STEPS``
    decode steps (``None``: an open-ended session such as chat); never for 4-bit weights (bitsandbytes layers do
    not compile) or on CPU under ``auto`` (compiling costs more than the decode steps it saves)."""
    if choice != "auto":
        return choice == "static"
    long_enough = decode_steps is None or decode_steps >= STATIC_MIN_STEPS
    return _cuda_16bit(loaded) and long_enough


def decode_path(loaded: Any, choice: str = "auto", decode_steps: int | None = None) -> str:
    """Which loop generates: ``graph`` (the suite's static-cache loop, ``evals.decoding``; one CUDA graph per call
    on CUDA, eager elsewhere), ``static`` (transformers' static cache, compiled) or ``dynamic`` (transformers'
    default cache).

    ``auto``: ``graph`` on CUDA for every model the loop supports (capture costs about one step, so short calls
    gain too); otherwise ``use_static_cache``'s rule. ``graph`` asked for a model the loop does not support
    falls back to ``dynamic`` with a warning that says why."""
    from tunebench.evals.decoding import unsupported_reason

    if choice in ("static", "dynamic"):
        return choice
    why = unsupported_reason(loaded.model)
    if choice == "graph":
        if why is None:
            return "graph"
        log.warning("eval.decode_loop graph: %s, so transformers' dynamic cache generates instead", why)
        return "dynamic"
    if why is None and _cuda_16bit(loaded):
        return "graph"
    return "static" if use_static_cache(loaded, choice, decode_steps) else "dynamic"


def sampling_decoder(
    model: Any, rows: int, width: int, sampling: SamplingConfig, kwargs: dict[str, Any], graphs: bool = True
) -> Any:
    """The decode loop (``evals.decoding.StaticDecoder``) for batches of ``rows`` x ``width``, decoding as
    ``sampling`` says, stopping and padding with ``generation_kwargs``' ids."""
    from tunebench.evals.decoding import StaticDecoder

    return StaticDecoder(
        model,
        rows,
        width,
        sampling.max_new_tokens,
        kwargs["eos_token_id"],
        kwargs["pad_token_id"],
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        graphs=graphs,
    )


def static_cache_kwargs(total_len: int) -> dict[str, Any]:
    """``generate`` keywords for a static cache that holds ``total_len`` positions, rounded up so that calls
    of nearby lengths reuse one cache size and one compiled decode step."""
    step = STATIC_CACHE_STEP
    return {"cache_implementation": "static", "max_cache_len": -(-total_len // step) * step}


def decode(
    model: Any,
    input_ids: Any,
    mask: Any,
    kwargs: dict[str, Any],
    decoder: Any = None,
    seed: int | None = None,
    streamer: Any = None,
    stopped: Any = None,
    device: Any = None,
) -> Any:
    """One batch through the chosen loop: the new tokens of every row, ``[rows, new]``.

    Args:
        model: The model ``model.generate`` runs on when ``decoder`` is None.
        input_ids: ``[rows, width]`` left-padded prompts; ``mask`` their attention mask.
        kwargs: ``model.generate`` keywords (decoding settings, stop ids, a static cache's size): the ``static``
            and ``dynamic`` loops.
        decoder: The ``graph`` loop's ``decoding.StaticDecoder`` for this shape, or None for ``model.generate``.
        seed: Seeds the batch: the decoder's own generator, or torch's before ``generate``. None leaves torch's
            random state as it is and gives the decoder a seed drawn from it.
        streamer: Streams the answer as it comes (batch 1, as the chat does).
        stopped: The decoder's early stop (``rows done`` from the tokens so far: stop strings); ``generate`` takes
            its stopping criteria in ``kwargs``.
        device: Where ``generate``'s inputs go; None = the model's device.
    """
    import torch  # heavy: torch, imported when needed

    extra = {k: v for k, v in (("streamer", streamer), ("stopped", stopped)) if v is not None}
    if decoder is not None:
        if seed is None:
            seed = int(torch.randint(2**62, (1,)).item())  # from the caller's seeded torch RNG: reproducible
        return decoder(input_ids, mask, seed=seed, **extra)
    if seed is not None:
        torch.manual_seed(seed)
    device = device if device is not None else model.device
    extra.pop("stopped", None)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **extra, **kwargs)
    return out[:, input_ids.shape[1] :]
