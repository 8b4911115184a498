"""lm-eval's output for one task turned into tunebench metrics, per-document items, an input fingerprint and
artifacts (named under its group's, if it is a group member: see ``evals.lm_eval.groups``).

Metric names are ``lm_eval/<task>/<metric>`` (``lm_eval/<task>/<metric>/<filter>`` when a task reports the
same metric under several filters, as gsm8k does). Per-document items ``{"id": doc_id, "num": value, "den": 1}``
come from lm-eval's logged samples, so base and tuned can be compared document by document.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tunebench.core.io import fingerprint, package_version
from tunebench.core.stats import Z95
from tunebench.evals.lm_eval.groups import member_prefix
from tunebench.evals.results import Metric, Results

RESPONSE_CHARS = 300
"""Model replies kept per document in the artifacts (for reports), cut to this many characters."""


@dataclass
class TaskRun:
    """What decides one task's results besides lm-eval's output: how it was asked and where its data came from."""

    limit: int | None
    """Documents per task asked for (None = all)."""
    apply_chat_template: bool
    """Whether prompts were wrapped in the chat template."""
    source: dict[str, Any]
    """The task's data source (``packaged_data``)."""
    group: str | None = None
    """The lm-eval group the task belongs to, if any."""


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


def task_results(res: Results, name: str, task: Any, out: dict[str, Any], run: TaskRun) -> None:
    """Add one task's metrics, per-document items, input fingerprint and artifacts to ``res``."""
    samples = sorted(out.get("samples", {}).get(name, []), key=lambda s: s["doc_id"])
    by_filter: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_filter[s["filter"]].append(s)
    task_res = out["results"][name]
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
        mname = f"{member_prefix(run.group, name)}/{metric}" + (f"/{filt}" if len(filters_of[metric]) > 1 else "")
        res.add(*_metric(mname, value, name, task, out, metric, filt, by_filter.get(filt, []), run))
    _task_inputs(res, name, task, out, by_filter, run)


def _metric(
    mname: str,
    value: float,
    name: str,
    task: Any,
    out: dict[str, Any],
    metric: str,
    filt: str,
    docs: list[dict[str, Any]],
    run: TaskRun,
) -> tuple[Metric, list[dict[str, Any]] | None]:
    """One (metric, filter) of a task as a Metric, with its per-document items where lm-eval averages them."""
    aggregations = {m: getattr(fn, "__name__", str(fn)) for m, fn in task.aggregation().items()}
    items = None
    if aggregations.get(metric) == "mean" and docs and all(_number(s.get(metric)) is not None for s in docs):
        items = [{"id": str(s["doc_id"]), "num": float(s[metric]), "den": 1} for s in docs]
    stderr = _number(out["results"][name].get(f"{metric}_stderr,{filt}"))
    ci_low = ci_high = None
    if stderr is not None:
        ci_low, ci_high = value - Z95 * stderr, value + Z95 * stderr
        if items is not None and all(0.0 <= i["num"] <= 1.0 for i in items):  # a proportion
            ci_low, ci_high = max(0.0, ci_low), min(1.0, ci_high)
    hib = out.get("higher_is_better", {}).get(name, {}).get(metric)
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
            "n_shot": out.get("n-shot", {}).get(name),
            "chat_template": run.apply_chat_template,
            "lm_eval_version": package_version("lm-eval"),
            "task_version": out.get("versions", {}).get(name),
            "output_type": task.OUTPUT_TYPE,
            "limit": run.limit,
            "documents_in_task": out.get("n-samples", {}).get(name, {}).get("original"),
            "lm_eval_aggregation": aggregations.get(metric),
            "higher_is_better_from_lm_eval": hib is not None,
            "data_source": run.source,
            **({"in_group": run.group} if run.group else {}),
        },
    )
    return metric_obj, items


def _task_inputs(
    res: Results, name: str, task: Any, out: dict[str, Any], by_filter: dict[str, list[dict[str, Any]]], run: TaskRun
) -> None:
    """The task's input fingerprint (config and documents) and its artifacts (config, answers) into ``res``."""
    config = json.loads(json.dumps(out.get("configs", {}).get(name, {}), default=str))
    config.get("metadata", {}).pop("config_source", None)  # an absolute path: not part of what was measured
    first = by_filter[min(by_filter)] if by_filter else []
    res.inputs[f"lm_eval/{name}"] = {
        "config": fingerprint(config),
        "docs": fingerprint([s.get("doc_hash") for s in first]),
        "limit": run.limit,
        "chat_template": run.apply_chat_template,
        "n_shot": out.get("n-shot", {}).get(name),
        "data_source": run.source,
    }
    res.artifacts[f"lm_eval/{name}"] = {
        "config": config,
        "data_source": run.source,
        "samples": [
            {"id": str(s["doc_id"]), "target": str(s.get("target")), **_response(s, task.OUTPUT_TYPE)} for s in first
        ],
    }


def mean_metric(template: Metric, items: list[dict[str, Any]]) -> Metric:
    """``template`` (one shard's metric) over ``items`` (every shard's documents, in document order): the value and
    stderr computed as lm-eval computes them for a ``mean`` metric (``api.metrics.mean`` and ``mean_stderr``, in
    the same order of operations, so the numbers equal an unsharded run's), and the interval as ``_metric`` makes
    it."""
    values = [float(i["num"]) for i in items]
    n = len(values)
    value = sum(values) / n
    stderr = None
    if n > 1:  # lm-eval reports "N/A" for one document
        stderr = math.sqrt(sum([(x - value) ** 2 for x in values]) / (n - 1)) / math.sqrt(n)
    ci_low = ci_high = None
    if stderr is not None:
        ci_low, ci_high = value - Z95 * stderr, value + Z95 * stderr
        if all(0.0 <= v <= 1.0 for v in values):  # a proportion
            ci_low, ci_high = max(0.0, ci_low), min(1.0, ci_high)
    return dataclasses.replace(
        template,
        value=value,
        n=n,
        ci_low=ci_low,
        ci_high=ci_high,
        stderr=stderr,
        ci_method="lm-eval stderr (normal)" if stderr is not None else None,
        details=dict(template.details),
    )
