"""lm-eval's own output files read as tunebench Results: ``tunebench compare --lm-eval A B`` pairs two runs of
lm-eval document by document.

What lm-eval 0.4.13 writes with ``--output_path OUT --log_samples`` (``loggers/evaluation_tracker.py``):
``OUT/<model_name_sanitized>/results_<date>.json`` (the aggregated results: ``results``, ``configs``,
``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``, ``config``, ``group_subtasks``, ...) and beside it
one ``samples_<task>_<date>.jsonl`` per task: a line per document and filter with ``doc_id``, ``filter``, the
per-document value of every metric, and ``doc_hash``/``prompt_hash``/``target_hash``. With ``--output_path
FILE.json`` the results file is ``FILE_<date>.json`` and the samples lie beside it.

A run is given as that results file, the folder holding it, or ``OUT`` (when it holds one model's folder). Its
metrics, per-document items, inputs and artifacts are built by ``convert.task_results``, the function that
converts tunebench's own lm-eval runs, so rows, report and gate are those of tunebench's runs: metric names
``lm_eval/<task>/<metric>[/<filter>]``, items ``{"id": doc_id, "num": value, "den": 1}`` for every metric lm-eval
averages over documents, intervals from lm-eval's stderr; a group's members pooled as ``groups`` pools
them. ``check_same_documents`` refuses two runs whose tasks, documents or targets differ.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core.errors import ComparisonError, MissingRunFile, RunFileError
from tunebench.core.io import fingerprint, read_json, read_json_lines
from tunebench.evals.lm_eval.convert import TaskRun, task_results
from tunebench.evals.lm_eval.groups import pool_group
from tunebench.evals.results import SCHEMA, Results

RESULTS_KEYS = ("results", "configs", "versions", "n-samples")
"""Keys every lm-eval results file has (``EvalResults``); a JSON file without them is not one."""
SOURCE = {"source": "lm-eval output files"}
_DATE = re.compile(r"_(\d{4}-\d{2}-\d{2}T[\d\-.]+)$")


@dataclass
class LmEvalRun:
    """One lm-eval run read from its files."""

    path: Path
    """Its results file."""
    results: Results
    documents: dict[str, list[tuple[str, str, str]]]
    """task -> (doc_id, doc_hash, target_hash) of every document, by doc_id: what ``check_same_documents`` pairs."""


@dataclass
class TaskView:
    """What ``task_results`` reads of an lm-eval task, from its dumped config in the results file."""

    OUTPUT_TYPE: str
    aggregations: dict[str, str]
    """metric -> aggregation name (``mean``, ``bleu``, ...)."""

    def aggregation(self) -> dict[str, str]:
        return self.aggregations


def find_results(path: str | Path) -> Path:
    """The results file of one lm-eval run: ``path`` itself, or the one ``results_*.json`` in ``path`` or in one
    folder below it (lm-eval's ``OUT/<model>/``).

    Raises:
        MissingRunFile: no such path, or no results file there.
        RunFileError: several runs' results files (the message lists them: name one).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise MissingRunFile(f"{path}: no such file or folder; give the folder lm-eval's --output_path wrote")
    found = sorted(path.glob("results_*.json")) or sorted(path.glob("*/results_*.json"))
    if not found:
        raise MissingRunFile(
            f"{path}: no lm-eval results_*.json here or one folder below; give the folder lm-eval's --output_path "
            "wrote (run lm-eval with --output_path DIR --log_samples)"
        )
    if len(found) > 1:
        shown = ", ".join(str(p) for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise RunFileError(f"{path} holds {len(found)} lm-eval runs ({shown}); give the results file of one")
    return found[0]


def read_lm_eval_run(path: str | Path, label: str) -> LmEvalRun:
    """One lm-eval run (``--log_samples`` output), its Results labelled ``label``.

    Raises:
        MissingRunFile: no results file, or a task's samples file missing (run lm-eval with --log_samples).
        RunFileError: a file that is not lm-eval's (names the file and line).
    """
    results_path = find_results(path)
    out = _results_file(results_path)
    tasks = sorted(out["configs"])
    out["samples"] = {task: list(_samples(results_path, task)) for task in tasks}
    groups = _leaf_groups(out.get("group_subtasks") or {})
    res = Results(
        label=label,
        model={
            "runner": "lm-eval output files",
            "results_file": str(results_path),
            "model": out.get("model_name") or (out.get("config") or {}).get("model"),
            "model_args": (out.get("config") or {}).get("model_args"),
            "lm_eval_version": out.get("lm_eval_version"),
        },
        inputs={},
        environment={k: out[k] for k in ("lm_eval_version", "transformers_version", "date") if k in out},
    )
    limit = (out.get("config") or {}).get("limit")  # lm-eval writes --limit 6 as 6.0; below 1, a fraction
    limit = int(limit) if isinstance(limit, (int, float)) and limit >= 1 and float(limit).is_integer() else None
    chat = out.get("chat_template") is not None
    for task in tasks:
        config = out["configs"][task]
        view = TaskView(str(config.get("output_type", "")), _aggregations(config, out["results"].get(task, {})))
        run = TaskRun(limit, chat, SOURCE, groups.get(task))
        task_results(res, task, view, out, run)
        # lm-eval copies the model's arguments into every task's metadata: not part of what the task asks
        config = res.artifacts[f"lm_eval/{task}"]["config"]
        config["metadata"] = {k: v for k, v in (config.get("metadata") or {}).items() if k == "version"}
        res.inputs[f"lm_eval/{task}"]["config"] = fingerprint(config)
        res.inputs[f"lm_eval/{task}"]["targets"] = fingerprint(
            [s.get("target_hash") for s in _first_filter(out["samples"][task])]
        )
    for group in dict.fromkeys(groups.values()):
        pool_group(res, group, [t for t in tasks if groups.get(t) == group])
    documents = {
        task: [(str(s["doc_id"]), str(s.get("doc_hash")), str(s.get("target_hash"))) for s in _first_filter(samples)]
        for task, samples in out["samples"].items()
    }
    return LmEvalRun(results_path, res, documents)


def check_same_documents(a: LmEvalRun, b: LmEvalRun) -> None:
    """Two lm-eval runs scored the same tasks on the same documents (doc_ids, and lm-eval's hashes of each
    document and target), so their per-document scores pair.

    Raises:
        ComparisonError: naming the tasks, or the task and the first document that differ.
    """
    if set(a.documents) != set(b.documents):
        raise ComparisonError(
            f"the two lm-eval runs evaluated different tasks: {_names(set(a.documents) - set(b.documents))} only "
            f"in {a.path}, {_names(set(b.documents) - set(a.documents))} only in {b.path}. Run both with the same "
            "--tasks"
        )
    for task in sorted(a.documents):
        da, db = a.documents[task], b.documents[task]
        ids_a, ids_b = [d[0] for d in da], [d[0] for d in db]
        if ids_a != ids_b:
            only = sorted(set(ids_a) ^ set(ids_b), key=int)
            raise ComparisonError(
                f"lm-eval task {task}: the runs scored different documents ({len(ids_a)} in {a.path.name}, "
                f"{len(ids_b)} in {b.path.name}; doc_id {only[0]} is in one only). Run both with the same --limit "
                "(or --samples)"
            )
        for (doc, hash_a, target_a), (_, hash_b, target_b) in zip(da, db, strict=True):
            if (hash_a, target_a) != (hash_b, target_b):
                what = "document" if hash_a != hash_b else "target"
                raise ComparisonError(
                    f"lm-eval task {task}: doc_id {doc} is another {what} in the two runs (lm-eval's "
                    f"{what}_hash differs): another version of the task or its dataset. Pair runs of the same task "
                    "data"
                )


def _results_file(path: Path) -> dict[str, Any]:
    """An lm-eval results file, checked to be one."""
    fix = "give the results_*.json that lm-eval's --output_path wrote"
    data = read_json(path, fix)
    if isinstance(data, dict) and data.get("schema") == SCHEMA:
        raise RunFileError(
            f"{path} is a tunebench results file, not lm-eval's: compare tunebench run folders with "
            "`tunebench compare RUN_A RUN_B`"
        )
    missing = [k for k in RESULTS_KEYS if not isinstance(data, dict) or not isinstance(data.get(k), dict)]
    if missing:
        raise RunFileError(f"{path}: not an lm-eval results file (no {', '.join(repr(k) for k in missing)}); {fix}")
    return data


def _samples(results_path: Path, task: str) -> Iterator[dict[str, Any]]:
    """The logged samples of ``task`` beside the results file (same date as the results file)."""
    m = _DATE.search(results_path.stem)
    date = m.group(1) if m else "*"
    found = sorted(results_path.parent.glob(f"samples_{task}_{date}.jsonl"))
    if not found:
        raise MissingRunFile(
            f"{results_path.parent}: no samples_{task}_{date}.jsonl beside {results_path.name}: run lm-eval with "
            "--log_samples, which writes each document's scores (needed to pair the two runs)"
        )
    path = found[-1]
    lines = read_json_lines(path, "give the samples file lm-eval wrote")
    if lines.bad or lines.cut_last:
        n, why = (lines.cut_last, "cut short") if lines.cut_last else lines.bad[0]
        raise RunFileError(f"{path}:{n}: not JSON ({why}); give the samples file lm-eval wrote")
    for n, sample in lines.records:
        if not isinstance(sample, dict) or not {"doc_id", "filter"} <= set(sample):
            raise RunFileError(f"{path}:{n}: not an lm-eval sample (no doc_id and filter); give lm-eval's file")
        yield sample


def _aggregations(config: dict[str, Any], task_results: dict[str, Any]) -> dict[str, str]:
    """metric -> aggregation name, from the task's metric_list (a name, or a function's source), else lm-eval's
    default for the metric."""
    out: dict[str, str] = {}
    for entry in config.get("metric_list") or []:
        agg = entry.get("aggregation") if isinstance(entry, dict) else None
        if isinstance(agg, str):
            m = re.match(r"\s*def\s+(\w+)\s*\(", agg)
            out[str(entry["metric"])] = m.group(1) if m else agg
    for key in task_results:
        metric = key.split(",", 1)[0]
        if "," in key and not metric.endswith("_stderr") and metric not in out:
            from lm_eval.api.registry import get_metric_aggregation  # heavy: lm-eval

            fn = get_metric_aggregation(metric)
            out[metric] = getattr(fn, "__name__", "") if fn is not None else ""
    return out


def _leaf_groups(subtasks: dict[str, list[str]]) -> dict[str, str]:
    """task -> the top-level group it belongs to (lm-eval nests groups: mmlu > mmlu_stem > its subjects)."""
    children = {c for kids in subtasks.values() for c in kids}
    out: dict[str, str] = {}

    def leaves(name: str) -> list[str]:
        kids = subtasks.get(name)
        return [name] if kids is None else [leaf for k in kids for leaf in leaves(k)]

    for top in (g for g in subtasks if g not in children):
        for leaf in leaves(top):
            out.setdefault(leaf, top)
    return out


def _first_filter(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples of the first filter, by doc_id (one line per document)."""
    first = min((s["filter"] for s in samples), default=None)
    return sorted((s for s in samples if s["filter"] == first), key=lambda s: s["doc_id"])


def _names(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"
