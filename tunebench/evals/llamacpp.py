"""An exported GGUF scored by llama.cpp itself (llama-cpp-python, in-process), the engine users run it with.

transformers' GGUF loader dequantizes the file into a float model, so scoring through it measures weight
rounding only. Here the file runs through llama.cpp's kernels, and probes are rendered with the chat
template stored in the GGUF and tokenized the way llama.cpp's chat handler does (``Jinja2ChatFormatter``
from ``tokenizer.chat_template``, then ``Llama.tokenize(special=True)`` with no extra BOS).

Perplexity is computed from llama.cpp's logits of every position on the run's own test token ids (the
assistant-token mask the suite's perplexity uses), so each conversation pairs with the adapter's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.core import output
from tunebench.core.config_schema import SamplingConfig
from tunebench.core.errors import DataError, ModelError
from tunebench.core.io import package_version, sha256_file
from tunebench.core.runtimes import LLAMA_CPP
from tunebench.data.encode import Encoded
from tunebench.evals.generation import Generation, stream_whole
from tunebench.evals.perplexity import metric_from_items
from tunebench.evals.prompting import Prompt, batch_seed, cut_at_stops, is_chat, samples_per_prompt
from tunebench.evals.results import Metric

log = logging.getLogger(__name__)

PARITY_METRICS = ("parity/kl_mean", "parity/kl_p99", "parity/top1_agree", "parity/ppl_ratio")
"""What an artifact scored in llama.cpp adds to its results: its agreement with the adapter (evals.parity)."""

GGUF_TEMPLATE_FORMAT = "chat_template.default"
"""llama-cpp-python's name for the GGUF's own template: pinned, so it never swaps in a built-in look-alike."""
Messages = list[dict[str, str]]


def require_llama_cpp() -> Any:
    """The ``llama_cpp`` module, or a ModelError naming the extra to install."""
    try:
        import llama_cpp  # heavy: llama.cpp's shared library

        return llama_cpp
    except ImportError as e:
        raise ModelError(
            f'the llama.cpp runtime needs llama-cpp-python ({e}); install it with `pip install "tunebench[serve]"` '
            "(builds llama.cpp from source, about 7 minutes on 2 cores; on CPUs with AMX set CMAKE_ARGS as "
            "scripts/setup.sh does)"
        ) from None


def cpu_threads() -> int:
    """Threads for llama.cpp: the cores this process may use (2 on the CI machine), at most ``OMP_NUM_THREADS`` where
    that is set (the usual cap when several processes share the cores: llama.cpp's threads spin while they wait, so
    more threads than free cores made a perplexity pass several times slower, not a share slower)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(cap)) if cap.isdigit() and int(cap) > 0 else cores


def open_gguf(path: str | Path, n_ctx: int = 2048, logits_all: bool = False, seed: int = 0) -> Any:
    """A ``llama_cpp.Llama`` on the file, with the GGUF's chat template pinned as its chat format.

    Raises:
        ModelError: no such file, or llama.cpp cannot load it.
    """
    require_llama_cpp()
    from tunebench.evals import llamacpp_whole  # heavy: llama.cpp (the serve extra, checked above)

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file; export it with `tunebench export RUN --gguf`")
    try:  # every prompt evaluated whole, as the server does: greedy answers depend on the prompt alone
        return llamacpp_whole.WholePromptLlama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            logits_all=logits_all,
            seed=seed,
            n_threads=cpu_threads(),
            verbose=False,
            chat_format=GGUF_TEMPLATE_FORMAT if "tokenizer.chat_template" in _meta(path) else None,
        )
    except ValueError as e:
        raise ModelError(f"{path}: llama.cpp could not load the file ({e}); re-export it") from None


def _meta(path: Path) -> dict[str, Any]:
    from tunebench.models.loading import gguf_field

    text = gguf_field(path, "tokenizer.chat_template")
    return {"tokenizer.chat_template": text} if text else {}


def chat_formatter(llm: Any) -> Any:
    """The ``Jinja2ChatFormatter`` llama-cpp-python builds from the GGUF metadata (same arguments)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # heavy: llama.cpp

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelError(
            f"{llm.model_path}: the GGUF metadata has no tokenizer.chat_template; llama.cpp would fall "
            "back to a built-in format. Re-export with `tunebench export RUN --gguf`"
        )
    eos, bos = llm.token_eos(), llm.token_bos()
    return Jinja2ChatFormatter(
        template=template, eos_token=_token_text(llm, eos), bos_token=_token_text(llm, bos), stop_token_ids=[eos]
    )


def _token_text(llm: Any, token: int) -> str:
    return llm._model.token_get_text(token) if token != -1 else ""


def chat_prompt_ids(llm: Any, formatter: Any, messages: Messages) -> list[int]:
    """Token ids llama.cpp's chat handler feeds the model for ``messages`` (generation prompt opened)."""
    result = formatter(messages=messages)
    return list(llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))


@dataclass
class LlamaCppModel:
    """A GGUF opened in llama.cpp, with what results record about it (the ``Loaded`` of this runtime)."""

    path: Path
    llm: Any
    template: str | None
    """The run's template name (as the adapter's results record it): results pair only on the same one."""
    sha256: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    """A progress bar over a ``generate`` call's answers."""

    @classmethod
    def open(cls, path: str | Path, template: str | None, n_ctx: int = 2048) -> LlamaCppModel:
        path = Path(path)
        return cls(path, open_gguf(path, n_ctx=n_ctx, logits_all=True), template, sha256_file(path))

    def identity(self) -> dict[str, Any]:
        return {
            "runtime": LLAMA_CPP,
            "engine": f"llama-cpp-python {package_version('llama_cpp_python')}",
            "gguf": self.path.name,
            "gguf_sha256": self.sha256,
            "template": self.template,
            "chat_format": GGUF_TEMPLATE_FORMAT,
            "device": "cpu",
        }

    def generate(
        self,
        prompts: list[Prompt],
        sampling: SamplingConfig,
        seed: int,
        on_token: Callable[[str], None] | None = None,
        stop: list[str] | None = None,
    ) -> Generation:
        """Answer every prompt: a conversation through ``create_chat_completion`` (the GGUF's template), a text or
        token ids through ``create_completion`` (llama.cpp's tokenizer, special tokens parsed, with BOS); llama.cpp's
        sampler, ``stop`` as its stop strings.

        Each (prompt, sample) gets its own seed from (seed, sample, prompt index), so a re-run draws the same
        answers. llama.cpp applies min_p before temperature (transformers after): sampled answers are paired
        per prompt, not per random stream; greedy answers are exact.
        """
        n = samples_per_prompt(sampling)
        out = Generation(
            samples=[[""] * n for _ in prompts], token_counts=[[0] * n for _ in prompts], decode_loop=LLAMA_CPP
        )
        stops = {"stop": [x for x in stop if x]} if stop else {}
        jobs = [(i, s) for s in range(n) for i in range(len(prompts))]
        bar = output.bar(total=len(jobs), desc=f"generate[{sampling.name}, llama.cpp]", disable=not self.progress)
        for i, s in jobs:
            prompt = prompts[i]
            t0 = time.perf_counter()
            kw = chat_kwargs(sampling, batch_seed(seed, s, i)) | stops
            if is_chat(prompt):
                r = self.llm.create_chat_completion(messages=prompt, **kw)
                out.samples[i][s] = cut_at_stops(r["choices"][0]["message"]["content"] or "", stop).strip()
            else:
                r = self.llm.create_completion(prompt=prompt, **kw)
                out.samples[i][s] = cut_at_stops(r["choices"][0]["text"] or "", stop)
            out.seconds += time.perf_counter() - t0
            out.token_counts[i][s] = int(r["usage"]["completion_tokens"])
            out.new_tokens += out.token_counts[i][s]
            out.generate_calls += 1
            bar.update(1)
        bar.close()
        out.cache_misses = out.generate_calls
        return stream_whole(out, on_token)


def chat_kwargs(sampling: SamplingConfig, seed: int) -> dict[str, Any]:
    """Sampling settings for llama-cpp-python, every knob pinned (its defaults are top_k 40, min_p 0.05)."""
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.top_p is not None else 1.0,
        "min_p": sampling.min_p if sampling.min_p is not None else 0.0,
        "top_k": 0,
        "repeat_penalty": 1.0,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
    }


def position_logprobs(llm: Any, ids: list[int], rows: Any = None) -> Any:
    """Log-softmax of llama.cpp's logits at the positions ``rows`` of ``ids`` (all when None; row t predicts token
    t + 1). Only the asked rows are converted: a full vocabulary per position is most of the cost."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    scores = llm.scores[: len(ids)]
    logits = np.asarray(scores if rows is None else scores[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
    return logits - _logsumexp(logits)


def completion_prompt_ids(llm: Any, text: str) -> list[int]:
    """Token ids ``create_completion`` feeds the model for a text prompt: special tokens parsed, the BOS added
    where the GGUF asks for one (llama-cpp-python's rule)."""
    ids = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    bos = llm.token_bos()
    if llm._model.add_bos_token() and bos != -1:
        ids = [bos, *ids]
    return ids


def continuation_logprob(llm: Any, context: str, continuation: str) -> tuple[float, bool, bool]:
    """(summed log-prob of ``continuation`` after ``context``, whether each of its tokens is the top-1, whether the
    tokenizer merged a token across the boundary) on the ids ``create_completion`` would feed: lm-eval's own split
    (the context's tokens, then what the whole adds), scored from llama.cpp's logits of every position."""
    import numpy as np

    whole = completion_prompt_ids(llm, context + continuation)
    ctx = completion_prompt_ids(llm, context)
    if len(whole) > llm.n_ctx():
        raise ModelError(
            f"an lm-eval request has {len(whole)} tokens, more than the llama.cpp context "
            f"({llm.n_ctx()}); open it with a larger n_ctx or lower the task's length"
        )
    n = next(
        (i for i, (a, b) in enumerate(zip(whole, ctx, strict=False)) if a != b), len(ctx)
    )  # ctx a prefix: its length
    merged = n < len(ctx)
    n = max(1, min(n, len(whole) - 1))
    rows, targets = np.arange(n - 1, len(whole) - 1), np.asarray(whole[n:])
    lp = position_logprobs(llm, whole, rows)
    picked = lp[np.arange(len(rows)), targets]
    return float(picked.sum()), bool((lp.argmax(axis=-1) == targets).all()), bool(merged)


def _logsumexp(x: Any) -> Any:
    import numpy as np

    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def scored_positions(e: Encoded) -> tuple[list[int], list[int]]:
    """(positions whose next token is an assistant token, those next tokens): the suite's perplexity mask."""
    pos = [t for t in range(len(e.input_ids) - 1) if e.labels[t + 1] != -100]
    return pos, [e.input_ids[t + 1] for t in pos]


def perplexity_items(
    model: LlamaCppModel, encoded: list[Encoded], keep: bool = False
) -> tuple[list[dict[str, Any]], list[Any], float]:
    """Summed NLL and scored-token count per conversation, from llama.cpp's logits.

    Returns:
        (items ``{"id", "num", "den"}``, the scored rows' log-probs per conversation when ``keep``, seconds)
    """
    import numpy as np

    items, kept, t0 = [], [], time.perf_counter()
    for e in encoded:
        if len(e.input_ids) > model.llm.n_ctx():
            raise ModelError(
                f"{model.path}: conversation {e.id} has {len(e.input_ids)} tokens, more than the "
                f"llama.cpp context ({model.llm.n_ctx()}); open it with a larger n_ctx"
            )
        pos, targets = scored_positions(e)
        lp = position_logprobs(model.llm, e.input_ids, pos) if pos else np.zeros((0, 1))
        nll = -float(lp[np.arange(len(pos)), targets].sum()) if pos else 0.0
        items.append({"id": e.id, "num": nll, "den": len(pos)})
        if keep:
            kept.append(lp)
    return items, kept, time.perf_counter() - t0


def perplexity_metric(
    model: LlamaCppModel,
    encoded: list[Encoded],
    split: str = "test",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[Metric, list[dict[str, Any]], dict[str, Any], list]:
    """``perplexity/<split>`` from llama.cpp, defined as the suite's (evals.perplexity): it pairs with the adapter's.

    Returns:
        (metric, items, inputs fingerprint entries, the scored log-probs per conversation for parity)
    """
    if not encoded:
        raise DataError(f"the {split} split is empty: nothing to score (raise data.max_{split} or test_fraction)")
    items, kept, seconds = perplexity_items(model, encoded, keep=True)
    metric, items, inputs = metric_from_items(
        items, encoded, split, n_boot=n_boot, alpha=alpha, seed=seed, seconds=seconds, runtime=LLAMA_CPP
    )
    return metric, items, inputs, kept


__all__ = [
    "LlamaCppModel",
    "open_gguf",
    "chat_formatter",
    "chat_prompt_ids",
    "perplexity_metric",
    "PARITY_METRICS",
    "require_llama_cpp",
]
