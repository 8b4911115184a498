"""`tunebench eval`: score one model (base, or base + adapter) on the run's fixed inputs.

Base and tuned go through this same function with the same test tokens, probe prompts, seeds and
lm-eval documents; only the adapter differs.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

from tunebench.core import dist
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import DataError, ModelError
from tunebench.core.io import atomic_write_json, environment, fingerprint
from tunebench.core.shards import Shard
from tunebench.data.conversations import load_split
from tunebench.data.data_report import read_report
from tunebench.data.encode import TemplateInfo, encode_split, tokens_fingerprint
from tunebench.evals import perplexity
from tunebench.evals.contamination import contamination, conversation_text
from tunebench.evals.lm_eval_load import task_documents
from tunebench.evals.lm_eval_runner import run_lm_eval
from tunebench.evals.modeling import Loaded, eval_in_4bit, load_for_eval
from tunebench.evals.parity import HIDDEN_FILE, save_scored_hidden
from tunebench.evals.probes import load_probe_set, run_probes
from tunebench.evals.results import SHARD_ORDER, Results
from tunebench.models.loading import ModelSource, resolve_model

log = logging.getLogger(__name__)


def encoded_test_split(run_dir: Path, tokenizer: Any, cfg: RunConfig) -> tuple[list[Any], dict[str, Any]]:
    """Re-encode the run's test split with the evaluation tokenizer and check it is the data step's tokens.

    Raises:
        DataError: the tokens differ from the data report's fingerprint (another template or tokenizer).
    """
    report = read_report(run_dir / "data")
    info = TemplateInfo(**report["template"])
    convs = load_split(run_dir / "data", "test")
    encoded, _ = encode_split(
        tokenizer, convs, info.end_of_turn, cfg.data.max_length, cfg.data.truncation, desc="encode test"
    )
    want = report["splits"]["test"]["fingerprint"]
    if tokens_fingerprint(encoded) != want:
        raise DataError(
            f"{run_dir}/data: the test split encodes to different tokens than the data step recorded "
            f"({tokens_fingerprint(encoded)} != {want}); the tokenizer or chat template changed. "
            "Re-run `tunebench data`."
        )
    return encoded, report


def contamination_report(
    run_dir: Path, cfg: RunConfig, probe_prompts: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """Overlap of training conversations with the test split, lm-eval documents and probe prompts."""

    train = load_split(run_dir / "data", "train")
    test = load_split(run_dir / "data", "test")
    sets: dict[str, list[tuple[str, str]]] = {"test split": [(c.id, conversation_text(c.messages)) for c in test]}
    if cfg.eval.lm_eval_tasks:
        try:
            for task, docs in task_documents(
                cfg.eval.lm_eval_tasks, cfg.eval.lm_eval_limit, cfg.eval.lm_eval_source
            ).items():
                sets[f"lm_eval/{task}"] = docs
        except Exception as e:  # a task whose documents cannot be read offline is reported, not fatal here
            log.warning("contamination: could not read lm-eval documents (%s)", e)
    if probe_prompts:
        sets["probes"] = probe_prompts
    return contamination((conversation_text(c.messages) for c in train), sets, n=cfg.eval.contamination_ngram)


def probe_prompt_texts(cfg: RunConfig) -> list[tuple[str, str]]:
    """(id, prompt text) of every probe prompt, for the contamination check."""

    out = []
    for name in cfg.eval.probe_files:
        s = load_probe_set(name)
        out += [(f"{s.name}/{p.id}", p.text) for p in s.prompts]
    return out


def check_artifact_template(gguf: str | Path, run_dir: Path) -> str:
    """An exported GGUF must carry the run's chat template in its metadata: the text llama.cpp and Ollama render.

    Returns:
        The template text.

    Raises:
        ModelError: no ``tokenizer.chat_template`` in the metadata, or one that differs from the run's.
    """
    from tunebench.models.loading import gguf_field

    text = gguf_field(gguf, "tokenizer.chat_template")
    if not text:
        raise ModelError(
            f"{gguf}: the GGUF metadata has no tokenizer.chat_template, so llama.cpp and Ollama would render prompts "
            "with a default template, not the run's. Re-export with `tunebench export RUN --gguf`"
        )
    report = read_report(run_dir / "data")
    want = report["template"]["sha"]
    if fingerprint(text) != want:
        raise ModelError(
            f"{gguf}: the chat template in the GGUF metadata ({fingerprint(text)}) is not the one run {run_dir} was "
            f"trained and evaluated with ({report['template']['name']}, {want}); scores would not be comparable. "
            "Export this run's adapter with `tunebench export RUN --gguf`"
        )
    return str(text)


def evaluate_model(
    cfg: RunConfig,
    run_dir: str | Path,
    label: str,
    adapter: str | Path | None = None,
    out_path: str | Path | None = None,
    contamination: dict[str, Any] | None = None,
    progress: bool = True,
    artifact: bool = False,
    shard: Shard | None = None,
) -> Results:
    """Perplexity, probes and lm-eval tasks for one model; writes results.json atomically.

    Args:
        artifact: ``cfg.model.ref`` is an exported GGUF of this run: its metadata must carry the run's chat
            template (checked before loading), and it is loaded as written (never re-quantized to 4-bit).
        shard: score one shard of the items (``core.shards``): metrics over its items, the inputs of the whole
            evaluation, and every metric's unsharded item order (``artifacts["shard_order/..."]``), which
            ``evals.shard_merge`` joins with the other shards' into the unsharded results.

    Raises:
        ModelError, AdapterError, DataError, ProbeError, LmEvalError: with what to do.
    """
    import torch  # heavy: torch, imported when needed

    run_dir = Path(run_dir)
    if cfg.eval.perplexity or artifact:
        read_report(run_dir / "data")  # a damaged data report stops here, not after minutes of model loading
    t0 = time.perf_counter()
    distributed = dist.init()  # under torchrun: perplexity and probe batches are split across processes
    source, loaded = _load_model(cfg, run_dir, adapter, artifact)
    template = loaded.template
    results = Results(label=label, model=loaded.identity(), inputs={}, environment=environment())
    if artifact:
        results.model["artifact"] = Path(cfg.model.ref).name
    results.timings["load_s"] = round(time.perf_counter() - t0, 2)

    # an adapter's perplexity pass is kept for parity with its exports (evals.parity), beside its results
    kept: dict[int, Any] | None = {} if adapter is not None and out_path is not None else None
    encoded: list[Any] = []
    if cfg.eval.perplexity:
        encoded = _score_perplexity(results, loaded, run_dir, cfg, progress, kept, shard)
    if cfg.eval.probe_files and cfg.eval.probe_sampling:
        _score_probes(results, loaded, cfg, label, progress, shard)
    if cfg.eval.lm_eval_tasks and dist.is_main():
        # under torchrun on GPUs the main process launches lm-eval data-parallel over the same GPUs, in a child
        # that loads its own copy: free ours first. One process runs lm-eval on the model it already holds.
        procs = dist.world_size() if distributed and torch.cuda.is_available() else 1
        if procs > 1:
            loaded = None
            _release_memory()
        _score_lm_eval(results, loaded, source.path, adapter, template, cfg, label, procs, shard)
    loaded = None
    _release_memory()
    dist.barrier()

    if contamination is not None:
        results.artifacts["contamination"] = contamination
    results.timings["total_s"] = round(time.perf_counter() - t0, 2)
    results.environment["world_size"] = dist.world_size()
    if out_path is not None and dist.is_main():
        results.save(out_path)
        if kept is not None:
            save_scored_hidden(Path(out_path).parent / HIDDEN_FILE, kept, encoded, results.model)
    return results


def _load_model(
    cfg: RunConfig, run_dir: Path, adapter: str | Path | None, artifact: bool
) -> tuple[ModelSource, Loaded]:
    """The model source and the model loaded for evaluation (an artifact's chat template checked first)."""
    if artifact:
        check_artifact_template(cfg.model.ref, run_dir)
    source = resolve_model(cfg.model.ref, cfg.model.revision)
    # merging evaluates the 16-bit model users ship; the base is then scored in 16 bit too, so the pair differs
    # only by the adapter (unmerged keeps a QLoRA adapter on the 4-bit base it was trained against)
    loaded = load_for_eval(
        source,
        adapter,
        cfg.model.chat_template,
        dtype=cfg.model.dtype,
        load_in_4bit=eval_in_4bit(cfg, artifact),
        trust_remote_code=cfg.model.trust_remote_code,
        merge_adapter=cfg.eval.merge_adapter,
    )
    return source, loaded


def _score_perplexity(
    results: Results,
    loaded: Loaded,
    run_dir: Path,
    cfg: RunConfig,
    progress: bool,
    hidden: dict[int, Any] | None = None,
    shard: Shard | None = None,
) -> list[Any]:
    """Held-out perplexity on the run's test tokens (checked to be the data step's) into ``results``; ``hidden`` gets
    the pass's scored hidden states (``perplexity.score``); ``shard``: only that shard's batches.

    Returns:
        The encoded test split."""
    encoded, report = encoded_test_split(run_dir, loaded.tokenizer, cfg)
    t = time.perf_counter()
    metric, items, inputs = perplexity.evaluate(
        loaded.model,
        loaded.tokenizer,
        encoded,
        split="test",
        batch_tokens=cfg.eval.ppl_batch_tokens,
        n_boot=cfg.eval.bootstrap_samples,
        alpha=cfg.report.alpha,
        progress=progress,
        scored_hidden=hidden,
        shard=shard,
    )
    if metric is not None:  # None: a shard without a batch of the test split
        results.add(metric, items)
    if shard is not None:
        results.artifacts[f"{SHARD_ORDER}/perplexity"] = {"perplexity/test": [e.id for e in encoded]}
    results.inputs.update(inputs)
    results.inputs["template_sha"] = report["template"]["sha"]
    results.timings["perplexity_s"] = round(time.perf_counter() - t, 2)
    return encoded


def _score_probes(
    results: Results, loaded: Loaded, cfg: RunConfig, label: str, progress: bool, shard: Shard | None = None
) -> None:
    """Every probe set under every sampling setting into ``results``."""
    t = time.perf_counter()
    probes = run_probes(
        loaded,
        list(cfg.eval.probe_files),
        list(cfg.eval.probe_sampling),
        batch_size=cfg.eval.probe_batch_size,
        seed=cfg.eval.probe_seed,
        label=label,
        progress=progress,
        cache_implementation=cfg.eval.decode_loop,
        shard=shard,
    )
    results.merge(probes)
    results.timings["probes_s"] = round(time.perf_counter() - t, 2)


def _score_lm_eval(
    results: Results,
    loaded: Loaded | None,
    model_path: str,
    adapter: str | Path | None,
    template: Any,
    cfg: RunConfig,
    label: str,
    procs: int,
    shard: Shard | None = None,
) -> None:
    """The lm-eval tasks into ``results``: on ``loaded`` in this process, or (``loaded`` None) in a child over
    ``procs`` processes that loads its own copy."""
    t = time.perf_counter()
    lm = run_lm_eval(
        model_path,
        str(adapter) if adapter else None,
        list(cfg.eval.lm_eval_tasks),
        cfg.eval.lm_eval_limit,
        cfg.eval.lm_eval_batch_size,
        cfg.eval.lm_eval_chat_template,
        dtype=cfg.model.dtype,
        label=label,
        template=template,
        num_processes=procs,
        source=cfg.eval.lm_eval_source,
        merge_adapter=cfg.eval.merge_adapter,
        loaded=loaded,
        generate_batch_size=cfg.eval.lm_eval_generate_batch_size,
        cache_implementation=cfg.eval.decode_loop,
        shard=shard.to_list() if shard is not None else None,
    )
    results.merge(lm)
    results.timings["lm_eval_s"] = round(time.perf_counter() - t, 2)


def _release_memory() -> None:
    """Hand a dropped model's GPU memory back (before a child loads its own copy, or at the end)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_contamination(run_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    """Compute the contamination report once per run (it depends on data, not on the model)."""
    path = run_dir / "eval" / "contamination.json"
    rep = contamination_report(run_dir, cfg, probe_prompt_texts(cfg) if cfg.eval.probe_files else None)
    atomic_write_json(path, rep)
    return rep


__all__ = ["evaluate_model", "save_contamination", "encoded_test_split"]
