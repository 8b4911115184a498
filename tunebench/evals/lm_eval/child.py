"""The side of an lm-eval evaluation that runs lm-eval: ``python -m tunebench.evals.lm_eval.child SPEC OUT`` in
a child process (started by ``runner.run_lm_eval`` through ``core.child``), or the same steps in this
process on a model it already holds.

The child reads an ``LmEvalSpec`` (JSON), loads the tasks, the tokenizer and the model (+ adapter), runs lm-eval
and writes ``{"results": ...}`` or ``{"error": "..."}`` atomically.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunebench.core import output
from tunebench.core.errors import LmEvalError, ModelError
from tunebench.core.io import atomic_write_json, read_json
from tunebench.core.shards import Shard
from tunebench.evals.lm_eval import model as lm_eval_model
from tunebench.evals.lm_eval.convert import TaskRun, task_results
from tunebench.evals.lm_eval.groups import pool_group
from tunebench.evals.lm_eval.load import load_tasks, task_manager
from tunebench.evals.lm_eval.shard import record_shard, shard_documents
from tunebench.evals.lm_eval.spec import LmEvalSpec
from tunebench.evals.modeling import pick_device, pick_dtype
from tunebench.evals.results import Results
from tunebench.models.adapters import adapter_manifest
from tunebench.models.loading import load_tokenizer, resolve_model, template_sha

log = logging.getLogger(__name__)

BOOTSTRAP_ITERS = 1000
"""Only for metrics without a closed-form stderr (bleu, f1...); acc and exact_match use the closed form."""


def _identity(spec: LmEvalSpec, template_name: str, tok: Any, device: str, dtype: str, runner: str) -> dict[str, Any]:
    try:
        base: dict[str, Any] = resolve_model(spec.model_path).to_dict()
    except ModelError:
        base = {"ref": spec.model_path, "path": spec.model_path}
    return {
        "base": base,
        "adapter": spec.adapter,
        "adapter_sha256": spec.adapter_sha256,
        "template": template_name,
        "template_sha": template_sha(tok),
        "dtype": dtype,
        "device": device,
        "runner": runner,
        **({"adapter_merged": bool(spec.merge_adapter)} if spec.adapter else {}),
    }


def _tokenizer(spec: LmEvalSpec) -> tuple[Any, str]:
    """The tokenizer + chat template evaluation uses everywhere (see evals.modeling.load_for_eval)."""

    adapter = spec.adapter
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer  # heavy: transformers, imported when needed

        tok = AutoTokenizer.from_pretrained(adapter)
        name = adapter_manifest(adapter).get("template", {}).get("name", spec.template)
        return tok, name
    return load_tokenizer(resolve_model(spec.model_path), spec.template)


def _hflm(spec: LmEvalSpec, tok: Any, device: str, dtype: str, loaded: Any = None) -> Any:
    """lm-eval's HF model around ``loaded`` (this process's model, no second copy), else loaded from the spec's
    path (+ adapter, merged when the spec says so: the same model the rest of the evaluation scores)."""
    lm_class = lm_eval_model.model_class()
    fast = {"generate_batch_size": spec.generate_batch_size, "cache_implementation": spec.cache_implementation}
    if loaded is not None:
        return lm_class(pretrained=loaded.model, tokenizer=tok, batch_size=spec.batch_size, **fast)
    lm = lm_class(
        pretrained=spec.model_path,
        peft=spec.adapter,
        tokenizer=tok,
        dtype=dtype,
        device=device,
        batch_size=spec.batch_size,
        trust_remote_code=False,
        **fast,
    )
    if spec.adapter is not None and spec.merge_adapter:
        lm._model = lm._model.merge_and_unload()  # HFLM keeps peft's wrapper; fold it as load_for_eval does
    return lm


def evaluate(spec: LmEvalSpec, loaded: Any = None) -> Results | None:
    """Load tasks (and the model, unless ``loaded`` is given), run lm-eval, convert its output; of one shard's
    documents when ``spec.shard`` is set (``evals.lm_eval.shard``)."""
    manager = task_manager(spec.tasks)
    sources: dict[str, dict[str, Any]] = {}
    groups: dict[str, str] = {}
    everything = tasks = load_tasks(manager, spec.tasks, spec.source, sources, groups)
    samples = shard_documents(tasks, spec.limit, Shard(*spec.shard)) if spec.shard else None
    if samples is not None:
        tasks = {name: task for name, task in tasks.items() if samples[name]}  # lm-eval reads [] as every document
        if not tasks:
            empty = Results(label=spec.label, model={}, inputs={})
            record_shard(empty, everything, spec.limit, groups)
            return empty
    if loaded is not None:
        tok, template_name, device, dtype = loaded.tokenizer, loaded.template, loaded.device, loaded.dtype
    else:
        device = pick_device(spec.device)
        dtype = str(pick_dtype(spec.dtype, device)).replace("torch.", "")
        tok, template_name = _tokenizer(spec)
    for name, task in tasks.items():
        total = len(task.eval_docs)
        used = total if spec.limit is None else min(total, spec.limit)
        log.info(
            "lm-eval task %s: %d of %d documents, %s, chat template %s",
            name,
            used,
            total,
            task.OUTPUT_TYPE,
            "on" if spec.apply_chat_template else "off",
        )
    lm = _hflm(spec, tok, device, dtype, loaded)
    res = run_tasks(
        lm,
        tasks,
        manager,
        sources,
        groups,
        lambda: _identity(spec, template_name, tok, device, dtype, lm_eval_model.describe(lm)),
        label=spec.label,
        limit=spec.limit,
        apply_chat_template=spec.apply_chat_template,
        samples=samples,
    )
    if res is not None and samples is not None:
        record_shard(res, everything, spec.limit, groups)
    return res


def run_tasks(
    lm: Any,
    tasks: dict[str, Any],
    manager: Any,
    sources: dict[str, Any],
    groups: dict[str, str],
    identity: Callable[[], dict[str, Any]],
    *,
    label: str,
    limit: int | None,
    apply_chat_template: bool,
    samples: dict[str, list[int]] | None = None,
) -> Results | None:
    """lm-eval on ``lm`` over the loaded ``tasks``, converted to Results (None on a data-parallel worker); with
    ``samples`` (task -> document ids, one shard's) on those documents instead of the first ``limit``."""
    import lm_eval  # heavy: lm-eval, imported when needed

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks.values()),
        limit=None if samples is not None else limit,
        samples=samples,
        apply_chat_template=apply_chat_template,
        log_samples=True,
        task_manager=manager,
        bootstrap_iters=BOOTSTRAP_ITERS,
        # naming humaneval is the opt-in to run model-written code (in a child process, with a timeout)
        confirm_run_unsafe_code=any(getattr(t, "UNSAFE_CODE", False) for t in tasks.values()),
    )
    if out is None:  # a data-parallel worker: lm-eval gathered its documents onto the main process
        return None
    res = Results(label=label, model=identity(), inputs={})
    for name, task in tasks.items():
        run = TaskRun(limit, apply_chat_template, sources.get(name, {"source": "hub"}), groups.get(name))
        task_results(res, name, task, out, run)
        shown = ", ".join(f"{m.details['metric']}={m.value:.4f}" for m in res.metrics if m.details["task"] == name)
        log.info("lm-eval task %s done: %s", name, shown)
    for group in dict.fromkeys(groups.get(t) for t in tasks if t in groups):
        pooled = pool_group(res, group, [t for t in tasks if groups.get(t) == group])
        log.info(
            "lm-eval group %s (%d tasks): %s",
            group,
            sum(g == group for g in groups.values()),
            ", ".join(f"{m.name.rsplit('/', 1)[-1]}={m.value:.4f} (n={m.n})" for m in pooled),
        )
    return res


class _DropNoise(logging.Filter):
    """lm-eval warns on every custom_dataset task that metadata could be passed; nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m tunebench.evals.lm_eval.child SPEC.json OUT.json``; exit 0, 2 (usage error,
    message in OUT) or 1 (unexpected failure, traceback on stderr, summary in OUT)."""

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(
            "usage: python -m tunebench.evals.lm_eval.child SPEC.json OUT.json (started by run_lm_eval)",
            file=sys.stderr,
        )
        return 2
    output.setup()  # as the parent's: quiet unless -v, library lines to the run's log (inherited)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    spec_path, out_path = argv
    try:
        res = evaluate(LmEvalSpec.from_dict(read_json(spec_path)))
    except (LmEvalError, ModelError) as e:
        log.error("%s", e)
        atomic_write_json(out_path, {"error": str(e)})
        return 2
    except Exception as e:
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:500]
        atomic_write_json(out_path, {"error": f"lm-eval failed: {type(e).__name__}: {first} (traceback above)"})
        return 1
    if res is not None:  # data-parallel workers other than the main one have nothing to write
        atomic_write_json(out_path, {"results": res.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
