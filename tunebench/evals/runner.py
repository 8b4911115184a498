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
from tunebench.core.config_schema import EvalConfig
from tunebench.core.errors import DataError, ModelError
from tunebench.core.io import atomic_write_json, fingerprint
from tunebench.core.runtimes import TRANSFORMERS
from tunebench.core.shards import Shard
from tunebench.data.conversations import load_split
from tunebench.data.data_report import read_report
from tunebench.data.encode import TemplateInfo, encode_split, tokens_fingerprint
from tunebench.evals import perplexity
from tunebench.evals.contamination import contamination, conversation_text
from tunebench.evals.driver import CONTINUATION_LOGPROBS, GENERATE, SHARDS, TOKEN_LOGPROBS, Job, evaluate
from tunebench.evals.generation import TransformersGenerator
from tunebench.evals.lm_eval.load import task_documents
from tunebench.evals.lm_eval.runner import run_lm_eval
from tunebench.evals.modeling import Loaded
from tunebench.evals.parity import HIDDEN_FILE, save_scored_hidden
from tunebench.evals.probes.sets import load_probe_set
from tunebench.evals.results import SHARD_ORDER, Results
from tunebench.evals.settings import EvalSettings, load_model
from tunebench.models.loading import ModelSource, resolve_model

log = logging.getLogger(__name__)


def encoded_test_split(run_dir: Path, tokenizer: Any, settings: EvalSettings) -> tuple[list[Any], dict[str, Any]]:
    """Re-encode the run's test split with the evaluation tokenizer and check it is the data step's tokens.

    Raises:
        DataError: the tokens differ from the data report's fingerprint (another template or tokenizer).
    """
    report = read_report(run_dir / "data")
    info = TemplateInfo(**report["template"])
    convs = load_split(run_dir / "data", "test")
    encoded, _ = encode_split(
        tokenizer, convs, info.end_of_turn, settings.max_length, settings.truncation, desc="encode test"
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
    run_dir: Path, ev: EvalConfig, probe_prompts: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """Overlap of training conversations with the test split, lm-eval documents and probe prompts."""

    train = load_split(run_dir / "data", "train")
    test = load_split(run_dir / "data", "test")
    sets: dict[str, list[tuple[str, str]]] = {"test split": [(c.id, conversation_text(c.messages)) for c in test]}
    if ev.lm_eval_tasks:
        try:
            for task, docs in task_documents(ev.lm_eval_tasks, ev.lm_eval_limit, ev.lm_eval_source).items():
                sets[f"lm_eval/{task}"] = docs
        except Exception as e:  # a task whose documents cannot be read offline is reported, not fatal here
            log.warning("contamination: could not read lm-eval documents (%s)", e)
    if probe_prompts:
        sets["probes"] = probe_prompts
    return contamination((conversation_text(c.messages) for c in train), sets, n=ev.contamination_ngram)


def probe_prompt_texts(ev: EvalConfig) -> list[tuple[str, str]]:
    """(id, prompt text) of every probe prompt, for the contamination check."""

    out = []
    for name in ev.probe_files:
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
    settings: EvalSettings,
    run_dir: str | Path,
    label: str,
    adapter: str | Path | None = None,
    out_path: str | Path | None = None,
    contamination: dict[str, Any] | None = None,
    progress: bool = True,
    shard: Shard | None = None,
) -> Results:
    """Perplexity, probes and lm-eval tasks for one model in transformers (``evals.driver.evaluate`` on a
    ``TransformersRuntime``); writes results.json atomically.

    Args:
        settings: ``settings.artifact``: ``settings.model.ref`` is an exported GGUF of this run: its metadata must
            carry the run's chat template (checked before loading), and it is loaded as written (never 4-bit).
        shard: score one shard of the items (``core.shards``): metrics over its items, the inputs of the whole
            evaluation, and every metric's unsharded item order (``artifacts["shard_order/..."]``), which
            ``evals.shard_merge`` joins with the other shards' into the unsharded results.

    Raises:
        ModelError, AdapterError, DataError, ProbeError, LmEvalError: with what to do.
    """
    # an adapter's perplexity pass is kept for parity with its exports (evals.parity), beside its results
    runtime = TransformersRuntime.open(
        settings, run_dir, adapter, keep_logprobs=adapter is not None and out_path is not None
    )
    return evaluate(runtime, settings, run_dir, label, out_path, contamination, progress, shard)


class TransformersRuntime:
    """A model in transformers, in process (base, base + adapter, or an exported GGUF through transformers' loader):
    a ``evals.driver.Runtime``. Under torchrun, perplexity and probe batches are split across processes and lm-eval
    runs data-parallel from the main process."""

    name = TRANSFORMERS
    capabilities = frozenset({GENERATE, TOKEN_LOGPROBS, CONTINUATION_LOGPROBS, SHARDS})

    def __init__(
        self,
        settings: EvalSettings,
        adapter: str | Path | None,
        source: ModelSource,
        loaded: Loaded,
        started: float,
        distributed: bool,
        keep_logprobs: bool,
    ) -> None:
        self.settings, self.adapter, self.source = settings, adapter, source
        self.loaded: Loaded | None = loaded
        self.started, self.distributed = started, distributed
        self.template = loaded.template
        self.kept: dict[int, Any] | None = {} if keep_logprobs else None

    @classmethod
    def open(
        cls, settings: EvalSettings, run_dir: str | Path, adapter: str | Path | None = None, keep_logprobs: bool = False
    ) -> TransformersRuntime:
        """Load the model (an artifact's chat template checked first).

        Args:
            keep_logprobs: keep the perplexity pass's scored hidden states and save them beside the results, for
                the parity of this adapter's exports (``evals.parity``)."""
        run_dir = Path(run_dir)
        if settings.eval.perplexity or settings.artifact:
            read_report(run_dir / "data")  # a damaged data report stops here, not after minutes of model loading
        started = time.perf_counter()
        distributed = dist.init()  # under torchrun: perplexity and probe batches are split across processes
        if settings.artifact:
            check_artifact_template(settings.model.ref, run_dir)
        source = resolve_model(settings.model.ref, settings.model.revision)
        # merging evaluates the 16-bit model users ship; the base is then scored in 16 bit too, so the pair differs
        # only by the adapter (unmerged keeps a QLoRA adapter on the 4-bit base it was trained against)
        loaded = load_model(settings, adapter, source=source)
        return cls(settings, adapter, source, loaded, started, distributed, keep_logprobs)

    def identity(self) -> dict[str, Any]:
        ident = self.loaded.identity()
        if self.settings.artifact:
            ident["artifact"] = Path(self.settings.model.ref).name
        return ident

    def check(self, job: Job) -> None:
        job.results.environment["world_size"] = dist.world_size()

    def generator(self, job: Job) -> TransformersGenerator:
        ev = job.settings.eval
        return TransformersGenerator(
            self.loaded, ev.probe_batch_size, None, True, ev.decode_loop, job.progress, job.shard
        )

    def score_perplexity(self, job: Job) -> None:
        job.scratch["encoded"] = _score_perplexity(
            job.results, self.loaded, job.run_dir, job.settings, job.progress, self.kept, job.shard
        )

    def score_lm_eval(self, job: Job) -> None:
        import torch  # heavy: torch, imported when needed

        if not dist.is_main():
            return
        # under torchrun on GPUs the main process launches lm-eval data-parallel over the same GPUs, in a child
        # that loads its own copy: free ours first. One process runs lm-eval on the model it already holds.
        procs = dist.world_size() if self.distributed and torch.cuda.is_available() else 1
        if procs > 1:
            self.loaded = None
            _release_memory()
        _score_lm_eval(
            job.results,
            self.loaded,
            self.source.path,
            self.adapter,
            self.template,
            job.settings,
            job.label,
            procs,
            job.shard,
        )

    def close(self) -> None:
        self.loaded = None
        _release_memory()
        dist.barrier()

    def save(self, job: Job, out_path: Path) -> None:
        if not dist.is_main():
            return
        job.results.save(out_path)
        if self.kept is not None:
            save_scored_hidden(
                out_path.parent / HIDDEN_FILE, self.kept, job.scratch.get("encoded", []), job.results.model
            )


def _score_perplexity(
    results: Results,
    loaded: Loaded,
    run_dir: Path,
    settings: EvalSettings,
    progress: bool,
    hidden: dict[int, Any] | None = None,
    shard: Shard | None = None,
) -> list[Any]:
    """Held-out perplexity on the run's test tokens (checked to be the data step's) into ``results``; ``hidden`` gets
    the pass's scored hidden states (``perplexity.score``); ``shard``: only that shard's batches.

    Returns:
        The encoded test split."""
    encoded, report = encoded_test_split(run_dir, loaded.tokenizer, settings)
    t = time.perf_counter()
    metric, items, inputs = perplexity.evaluate(
        loaded.model,
        loaded.tokenizer,
        encoded,
        split="test",
        batch_tokens=settings.eval.ppl_batch_tokens,
        n_boot=settings.eval.bootstrap_samples,
        alpha=settings.alpha,
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


def _score_lm_eval(
    results: Results,
    loaded: Loaded | None,
    model_path: str,
    adapter: str | Path | None,
    template: Any,
    settings: EvalSettings,
    label: str,
    procs: int,
    shard: Shard | None = None,
) -> None:
    """The lm-eval tasks into ``results``: on ``loaded`` in this process, or (``loaded`` None) in a child over
    ``procs`` processes that loads its own copy."""
    ev = settings.eval
    t = time.perf_counter()
    lm = run_lm_eval(
        model_path,
        str(adapter) if adapter else None,
        list(ev.lm_eval_tasks),
        ev.lm_eval_limit,
        ev.lm_eval_batch_size,
        ev.lm_eval_chat_template,
        dtype=settings.model.dtype,
        label=label,
        template=template,
        num_processes=procs,
        source=ev.lm_eval_source,
        merge_adapter=ev.merge_adapter,
        loaded=loaded,
        generate_batch_size=ev.lm_eval_generate_batch_size,
        cache_implementation=ev.decode_loop,
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


def save_contamination(run_dir: Path, ev: EvalConfig) -> dict[str, Any]:
    """Compute the contamination report once per run (it depends on data, not on the model; ``ev``: the run's eval
    section)."""
    path = run_dir / "eval" / "contamination.json"
    rep = contamination_report(run_dir, ev, probe_prompt_texts(ev) if ev.probe_files else None)
    atomic_write_json(path, rep)
    return rep


__all__ = ["TransformersRuntime", "evaluate_model", "save_contamination", "encoded_test_split"]
