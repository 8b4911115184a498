"""One shard of an lm-eval evaluation (``tunebench eval RUN --shard i/N``): which documents it scores, and what it
records so that ``tunebench merge`` rebuilds the unsharded results.

A shard scores the documents whose ``stable_hash("<task>/<doc_id>") % N == i`` among those an unsharded run scores
(the first ``eval.lm_eval_limit`` of each task), through lm-eval's own ``samples`` selection, so a document and all
its requests stay together. Its inputs are those of the whole evaluation (the fingerprint of every document's hash,
as lm-eval computes it), its metrics cover its documents, and ``artifacts["shard_order/lm_eval"]`` lists every
metric's document ids in unsharded order.

Refused, because a shard could not reproduce the unsharded numbers: a task whose few-shot examples are drawn at
random (lm-eval draws them from one random stream in document order, so a shard would draw others), and a metric
that is not a mean of per-document values (bleu, f1, ...: its value and stderr need every document at once).
"""

from __future__ import annotations

import json
from typing import Any

from tunebench.core.errors import LmEvalError
from tunebench.core.io import fingerprint
from tunebench.core.shards import Shard
from tunebench.evals.results import SHARD_ORDER, Results

TASKS = "shard_tasks/lm_eval"
"""Artifact of a shard's results: ``{"tasks": [every task, in order], "groups": {group: [member tasks]}}``, for the
merge to list the tasks' metrics in unsharded order and to pool each group again."""


def shard_documents(tasks: dict[str, Any], limit: int | None, shard: Shard) -> dict[str, list[int]]:
    """Each task's documents (ids, ascending, as lm-eval's ``samples`` needs them) that belong to ``shard``.

    Raises:
        LmEvalError: a task with randomly drawn few-shot examples, or a metric not averaged over documents.
    """
    from lm_eval.api.samplers import FirstNSampler  # heavy: lm-eval

    for name, task in tasks.items():
        shots = task.config.num_fewshot or 0
        if shots > 0 and not isinstance(getattr(task, "sampler", None), FirstNSampler):
            raise LmEvalError(
                f"lm-eval task {name!r} draws its {shots} few-shot examples at random, from one stream in document "
                "order: a shard would see other examples than an unsharded run. Evaluate it without --shard"
            )
        for metric, fn in task.aggregation().items():
            how = getattr(fn, "__name__", str(fn))
            if how != "mean":
                raise LmEvalError(
                    f"lm-eval task {name!r}: metric {metric!r} is aggregated by {how!r} over all documents at once, "
                    "not averaged per document, so shards of it cannot be merged. Evaluate it without --shard"
                )
    return {name: [i for i in _doc_ids(task, limit) if shard.owns(f"{name}/{i}")] for name, task in tasks.items()}


def record_shard(res: Results, tasks: dict[str, Any], limit: int | None, groups: dict[str, str]) -> None:
    """Give a shard's ``res`` the inputs of the whole evaluation and the unsharded order of every metric's items.

    Args:
        tasks: every task of the evaluation (those this shard scored no document of included).
        groups: task -> the lm-eval group it belongs to.

    Raises:
        LmEvalError: a metric without per-document items (it could not be merged).
    """
    from lm_eval.utils import handle_non_serializable, hash_string  # heavy: lm-eval

    order: dict[str, list[str]] = {}
    for name, task in tasks.items():
        docs = list(task.doc_iterator(limit=limit))
        entry = res.inputs.get(f"lm_eval/{name}")
        if entry is not None:  # lm-eval's doc_hash of every document, not only of this shard's
            hashes = [
                hash_string(json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False))
                for _, doc in docs
            ]
            entry["docs"] = fingerprint(hashes)
        for m in res.metrics:
            if m.details.get("task") == name:
                if m.items is None:
                    raise LmEvalError(
                        f"lm-eval metric {m.name} has no per-document values, so shards of it cannot be merged. "
                        "Evaluate the task without --shard"
                    )
                order[m.name] = [str(i) for i, _ in docs]
    # pooled over this shard's members only: the merge pools every member's documents again
    res.metrics = [m for m in res.metrics if "members" not in m.details]
    res.items = {k: v for k, v in res.items.items() if k in {m.items for m in res.metrics}}
    res.inputs = {k: v for k, v in res.inputs.items() if k.removeprefix("lm_eval/") not in set(groups.values())}
    res.artifacts[f"{SHARD_ORDER}/lm_eval"] = order
    res.artifacts[TASKS] = {
        "tasks": list(tasks),
        "groups": {g: [t for t in tasks if groups.get(t) == g] for g in dict.fromkeys(groups.values())},
    }


def _doc_ids(task: Any, limit: int | None) -> list[int]:
    """The ids of the documents an unsharded run scores: the first ``limit`` (all when None)."""
    total = len(task.eval_docs)
    return list(range(total if limit is None else min(limit, total)))
