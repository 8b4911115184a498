"""The ``bench eval`` worker: every chosen part of one shape, side by side in one process, on one loaded model that
turns from the base into the same model with a random LoRA adapter unmerged (peft), then merged. A failing part
becomes a row that says so; the rows are saved after each one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.bench.evalcompare import chat_rows, lm_eval_generation_rows, lm_eval_loglikelihood_rows
from tunebench.bench.evalrows import (
    CACHE,
    Messages,
    _logits,
    decode_attention_rows,
    fixed_length_prompts,
    generation_row,
    graph_check_row,
    merge_base_rows,
    perplexity_row,
    probe_run_row,
    raw_generation_row,
    with_random_lora,
)
from tunebench.bench.prepared import load_prepared
from tunebench.bench.specs import EvalSpec
from tunebench.core.config_schema import SamplingConfig
from tunebench.core.io import atomic_write_json
from tunebench.evals.modeling import Loaded, load_for_eval

log = logging.getLogger("tunebench.speed")

PARTS = ("perplexity", "generation", "raw", "lm-eval", "lm-eval-ll", "probe", "merge", "decode", "chat")
"""What ``bench eval --parts`` can choose (default: all): perplexity and generation rows per model; raw
generate(static) and the CUDA graph check (base); lm-eval generate_until; the default probe run; the 4-bit merge
comparison; the decode attention comparison."""


class _Rows(list):
    """The worker's rows, also written to ``path`` after each one: a worker stopped by the budget keeps what it
    measured (the parent reads the file when the worker wrote no result)."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def _save(self) -> None:
        if self.path:
            atomic_write_json(Path(self.path), {"rows": list(self)})

    def append(self, row: dict[str, Any]) -> None:
        super().append(row)
        self._save()

    def __iadd__(self, more: Any) -> _Rows:
        super().__iadd__(more)
        self._save()
        return self


def _failed(kind: str, fn: Any, e: Exception, **fields: Any) -> dict[str, Any]:
    log.warning("%s failed: %s", fn.__name__, e)
    return {"kind": kind, **fields, "error": f"{type(e).__name__}: {str(e)[:300]}"}


def _guarded(kind: str, fn: Any, *args: Any) -> dict[str, Any]:
    """One row; a failure (a compile error, out of memory) becomes a row of ``kind`` that says so, and the others
    go on."""
    try:
        return fn(*args)
    except Exception as e:
        return _failed(kind, fn, e)


def _guarded_rows(kind: str, fn: Any, *args: Any, **fields: Any) -> list[dict[str, Any]]:
    """``_guarded`` for a function of several rows: on failure one row of ``kind`` (with ``fields``) says so."""
    try:
        return fn(*args)
    except Exception as e:
        return [_failed(kind, fn, e, **fields)]


@dataclass
class ShapeInputs:
    """What every part of one shape measures on: the scored conversations, the fixed-length prompts, the two
    samplings, and the token ids whose next-token distributions the merge comparison reads."""

    encoded: list[Any]
    """The encoded conversations perplexity scores."""
    prompts: list[Messages]
    """Prompts for the probe run (at least as many as the generation rows use)."""
    gen_prompts: list[Messages]
    """The generation rows' prompts."""
    prompt_info: dict[str, Any]
    """How the prompts were cut (``fixed_length_prompts``)."""
    samplings: list[Any]
    """Sampling at temperature 1.5 / min_p 0.1, then greedy."""
    probe: Any
    """The first 512 tokens of one conversation, on the model's device."""


def _load(spec: EvalSpec, cuda: bool) -> tuple[Any, ShapeInputs]:
    """The base model and everything its parts measure on."""
    import torch  # heavy: torch, imported when needed

    loaded = load_for_eval(
        spec.model_dir,
        template=spec.chat_template,
        dtype="bfloat16" if cuda else "float32",
        device="cuda" if cuda else "cpu",
    )
    prepared = load_prepared(spec.prepared)
    encoded = prepared.encoded["train"][: spec.ppl_conversations]
    n_prompts = max(spec.gen_batch * spec.gen_batches, spec.probe_prompts)
    prompts, prompt_info = fixed_length_prompts(
        loaded.tokenizer, prepared.conversations["train"], n_prompts, spec.prompt_tokens
    )
    samplings = [
        SamplingConfig(name="seed", temperature=1.5, min_p=0.1, max_new_tokens=spec.new_tokens),
        SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=spec.new_tokens),
    ]
    probe = torch.tensor([encoded[0].input_ids[:512]], device=loaded.model.device)
    gen_prompts = prompts[: spec.gen_batch * spec.gen_batches]
    return loaded, ShapeInputs(encoded, prompts, gen_prompts, prompt_info, samplings, probe)


def _as_variant(loaded: Any, variant: str, spec: EvalSpec) -> Any:
    """The model of ``variant``: the base as loaded, a random LoRA adapter attached, or that adapter merged."""
    if variant == "lora-unmerged":
        return with_random_lora(loaded, spec.r, spec.alpha, spec.targets)
    if variant == "lora-merged":  # the evaluation default: fold the same adapter into the 16-bit weights
        return Loaded(
            loaded.model.merge_and_unload(),
            loaded.tokenizer,
            loaded.template,
            loaded.source,
            adapter=loaded.adapter,
            adapter_sha=None,
            device=loaded.device,
            dtype=loaded.dtype,
            merged=True,
        )
    return loaded


def _lora_dtype(model: Any) -> str | None:
    return next((str(p.dtype).replace("torch.", "") for n, p in model.named_parameters() if "lora_" in n), None)


def _speed_rows(rows: _Rows, loaded: Any, variant: str, spec: EvalSpec, x: ShapeInputs, parts: set[str]) -> None:
    """Perplexity at each batch-token budget and generation at each sampling, for one variant."""
    lora_dtype = _lora_dtype(loaded.model)
    for bt in spec.ppl_batch_tokens if "perplexity" in parts else []:
        log.info("%s/%s: perplexity at %d batch tokens", spec.shape, variant, bt)
        rows.append({"variant": variant, "lora_dtype": lora_dtype, **perplexity_row(loaded, x.encoded, bt, spec)})
    for sampling in x.samplings if "generation" in parts else []:
        log.info("%s/%s: generation (%s), batch %d", spec.shape, variant, sampling.name, spec.gen_batch)
        rows.append(
            {
                "variant": variant,
                "lora_dtype": lora_dtype,
                "path": "suite generate",
                **_guarded("generation", generation_row, loaded, x.gen_prompts, sampling, spec.gen_batch),
            }
        )


def _raw_rows(rows: _Rows, loaded: Any, spec: EvalSpec, x: ShapeInputs) -> None:
    """The base model's CUDA graph check and raw ``generate(static)`` reference, at each sampling."""
    for sampling in x.samplings:
        log.info("%s/base: decode loop, CUDA graph vs eager (%s)", spec.shape, sampling.name)
        rows.append(
            {
                "variant": "base",
                **_guarded("graph-check", graph_check_row, loaded, x.gen_prompts, sampling, spec.gen_batch),
            }
        )
    for sampling in x.samplings:
        log.info("%s/base: raw generate(static) (%s), batch %d", spec.shape, sampling.name, spec.gen_batch)
        rows.append(
            {
                "variant": "base",
                "sampling": sampling.name,
                **_guarded("generation", raw_generation_row, loaded, x.gen_prompts, sampling, spec.gen_batch),
            }
        )


def _lm_eval_ll_rows(rows: _Rows, loaded: Any, spec: EvalSpec) -> None:
    """lm-eval's loglikelihood tasks through HFLM and through the suite, once per repeat this worker runs."""
    log.info("%s/base: lm-eval loglikelihood tasks, HFLM vs the suite", spec.shape)
    # --repeats-in-worker: every repeat here, on the one loaded model (a worker's setup is a large share of a
    # repeat: reports/published/2026-12-04-h200-lm-eval-repeats); the order still flips with each repeat
    for k in range(spec.inner_repeats):
        k = spec.repeat + k
        rows += [
            {**r, "repeat": k}
            for r in _guarded_rows(
                "lm-eval-ll",
                lm_eval_loglikelihood_rows,
                loaded,
                spec.lm_eval_ll_tasks,
                spec.lm_eval_ll_batch,
                spec.lm_eval_ll_limit,
                k,
            )
        ]


def _base_rows(rows: _Rows, loaded: Any, spec: EvalSpec, x: ShapeInputs, parts: set[str], cuda: bool) -> None:
    """The parts that run on the base model only: raw references, lm-eval, chat."""
    if cuda and "raw" in parts:
        _raw_rows(rows, loaded, spec, x)
    if spec.lm_eval_batches and cuda and "lm-eval" in parts:
        log.info("%s/base: lm-eval generate_until", spec.shape)
        rows += _guarded_rows("lm-eval", lm_eval_generation_rows, loaded, spec.lm_eval_batches, cache=CACHE)
    if "lm-eval-ll" in parts:
        _lm_eval_ll_rows(rows, loaded, spec)
    if cuda and "chat" in parts:
        log.info("%s/base: chat answers vs raw generate(static), batch 1", spec.shape)
        rows += [
            {"variant": "base", **r} for r in _guarded_rows("chat", chat_rows, loaded, x.gen_prompts, x.samplings[0], 9)
        ]


def _merge_rows(rows: _Rows, spec: EvalSpec, x: ShapeInputs, ref_logits: dict[str, Any]) -> None:
    """The 4-bit against 16-bit base comparison of a QLoRA adapter (skipped, with a row, when it cannot run)."""
    try:
        rows += [{"shape": spec.shape, **r} for r in merge_base_rows(spec, x.encoded, ref_logits, x.probe)]
    except Exception as e:  # bitsandbytes missing or failing: the speed rows stand without it
        log.warning("merge-base comparison skipped: %s", e)
        rows.append({"kind": "merge-base", "comparison": "skipped", "error": f"{type(e).__name__}: {e}"})


def run_eval_shape(spec: EvalSpec | dict[str, Any]) -> dict[str, Any]:
    """Worker: perplexity and generation speed for one shape, side by side in one process: the base model, the
    same model with a random LoRA adapter unmerged (peft) and then merged (as evaluation does by default), and
    raw ``generate(cache_implementation="static")`` at the same batch; then the default probe run."""
    import torch  # heavy: torch, imported when needed

    spec = spec if isinstance(spec, EvalSpec) else EvalSpec.from_dict(spec)
    cuda = torch.cuda.is_available()
    loaded, x = _load(spec, cuda)
    ref_logits: dict[str, Any] = {}
    rows = _Rows(spec.partial)
    parts = set(spec.parts or PARTS)
    if "decode" in parts and cuda:
        log.info("%s/base: decode attention, sdpa vs grouped", spec.shape)
        rows += _guarded_rows("decode-attention", decode_attention_rows, loaded, 128, [64, 1024], 64)
    for variant in ("base", "lora-unmerged", "lora-merged"):
        if cuda:  # each model compiles its own decode step: a graph recompiled for another model can turn dynamic
            torch._dynamo.reset()
        loaded = _as_variant(loaded, variant, spec)
        if variant != "lora-unmerged":
            ref_logits["base" if variant == "base" else "lora"] = _logits(loaded.model, x.probe)
        _speed_rows(rows, loaded, variant, spec, x, parts)
        if variant == "base":
            _base_rows(rows, loaded, spec, x, parts, cuda)
        if spec.probe_batch and variant in ("base", "lora-merged") and "probe" in parts:
            log.info("%s/%s: default probe run", spec.shape, variant)
            rows.append({"variant": variant, **_guarded("probe-run", probe_run_row, loaded, x.prompts, spec)})
    if spec.merge_base and cuda and "merge" in parts:
        _merge_rows(rows, spec, x, ref_logits)
    return {"rows": list(rows), "prompts": x.prompt_info, "dtype": "bfloat16" if cuda else "float32"}
