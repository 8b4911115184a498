"""Join the results of every shard of one model (``tunebench merge``) into the results an unsharded evaluation
writes: the same metrics, per-item records in the same order, values and intervals computed again from the joined
records by each family's own function (perplexity's bootstrap, the probes' Wilson interval, lm-eval's mean and
stderr), lm-eval groups pooled again over all their members.

Each shard's results list, under ``artifacts["shard_order/<family>"]``, every metric's item ids in unsharded order
(``evals.runner.evaluate_model`` with a ``shard``). The join refuses, naming the shard and the item: a model or
inputs that differ between shards, an item two shards scored, an item no shard scored, and a metric that no family
here can rebuild.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunebench.core.errors import ShardError
from tunebench.evals.lm_eval.convert import mean_metric
from tunebench.evals.lm_eval.groups import pool_group
from tunebench.evals.lm_eval.shard import TASKS
from tunebench.evals.perplexity import perplexity_metric
from tunebench.evals.probes.sets import pass_rate
from tunebench.evals.results import SHARD_ORDER, Metric, Results

MODEL_FACTS = ("adapter_sha256", "template", "dtype", "adapter_merged", "weights")
"""What must agree between the shards' models besides the base weights (``model.base.identity``); paths and the
device may differ from machine to machine."""


@dataclass
class Part:
    """One shard's results of one model."""

    where: str
    """The shard, as messages name it (its results file)."""
    results: Results


def merge_parts(parts: Sequence[Part], n_boot: int, alpha: float) -> Results:
    """One model's unsharded results from its shards' (see the module docstring).

    Args:
        parts: every shard's results, in shard order.
        n_boot: bootstrap resamples of the perplexity interval (``eval.bootstrap_samples``).
        alpha: its level (``report.alpha``).

    Raises:
        ShardError: what does not join, naming the shards and the item.
    """
    first = parts[0].results
    _check_models(parts)
    merged = Results(
        label=first.label,
        model=dict(first.model),
        inputs=_joined(parts, lambda r: r.inputs, "inputs"),
        environment=dict(first.environment),
        created=max(p.results.created for p in parts),
    )
    orders = _joined(parts, lambda r: _orders(r), "the unsharded order of the items of")
    lm_eval = _joined(parts, lambda r: r.artifacts.get(TASKS, {}), "the lm-eval")
    for name in _in_order([*orders, *(m.name for p in parts for m in p.results.metrics)], parts, lm_eval):
        metric, items = _metric(parts, name, orders.get(name), n_boot, alpha)
        merged.add(metric, items)
    for group, members in lm_eval.get("groups", {}).items():
        pool_group(merged, group, members)
    merged.artifacts = _artifacts(parts, orders)
    merged.artifacts["sharded"] = {
        "shards": len(parts),
        "environments": [p.results.environment for p in parts],
        "timings": [p.results.timings for p in parts],
    }
    merged.timings = {k: round(sum(p.results.timings.get(k, 0.0) for p in parts), 3) for k in _keys(parts)}
    return merged


def _in_order(names: list[str], parts: Sequence[Part], lm_eval: dict[str, Any]) -> list[str]:
    """Metric names in the order an unsharded run lists them: perplexity and probes first (every shard records all
    of theirs), then lm-eval's by task (a shard records only the tasks it scored a document of)."""
    tasks = list(lm_eval.get("tasks", []))
    task_of = {m.name: m.details.get("task") for p in parts for m in p.results.metrics if m.group == "lm_eval"}

    def rank(name: str) -> tuple[int, int]:
        task = task_of.get(name)
        return (0, 0) if task is None else (1, tasks.index(task) if task in tasks else len(tasks))

    return sorted(dict.fromkeys(names), key=rank)


def _keys(parts: Sequence[Part]) -> list[str]:
    return list(dict.fromkeys(k for p in parts for k in p.results.timings))


def _check_models(parts: Sequence[Part]) -> None:
    """Every shard scored the same model: base weights, adapter hash, template, dtype."""

    def facts(r: Results) -> dict[str, Any]:
        base = r.model.get("base") if isinstance(r.model.get("base"), dict) else {}
        return {"base.identity": base.get("identity"), **{k: r.model.get(k) for k in MODEL_FACTS}}

    want = facts(parts[0].results)
    for p in parts[1:]:
        got = facts(p.results)
        for key in want:
            if got[key] != want[key]:
                raise ShardError(
                    f"{p.where} scored another model than {parts[0].where}: model.{key} is {_short(got[key])} "
                    f"there but {_short(want[key])} in {parts[0].where}. Evaluate every shard of the same run "
                    "with the same model and settings"
                )


def _orders(r: Results) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in r.artifacts.items():
        if key.startswith(f"{SHARD_ORDER}/"):
            out.update(value)
    return out


def _joined(parts: Sequence[Part], get: Any, what: str) -> dict[str, Any]:
    """The union of a mapping of every shard's; a key that two shards give different values is refused."""
    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for p in parts:
        for key, value in get(p.results).items():
            if key in out and out[key] != value:
                raise ShardError(
                    f"{p.where} and {owner[key]} differ in {what} {key}: {_short(value)} against "
                    f"{_short(out[key])}. They were evaluated on other data or settings; evaluate every shard "
                    "of the run with the same data and settings"
                )
            out.setdefault(key, value)
            owner.setdefault(key, p.where)
    return out


def _metric(
    parts: Sequence[Part], name: str, order: list[str] | None, n_boot: int, alpha: float
) -> tuple[Metric, list[dict[str, Any]]]:
    """One metric of every shard, joined: its items checked against ``order`` and put in it, its value rebuilt."""
    found = [(p, m) for p in parts for m in p.results.metrics if m.name == name]
    if order is None:
        raise ShardError(
            f"metric {name} of {found[0][0].where} has no unsharded item order: it was not written by "
            "`tunebench eval RUN --shard` (or by another version); evaluate that shard again"
        )
    seen: dict[str, str] = {}
    items: dict[str, dict[str, Any]] = {}
    for p, m in found:
        if m.items is None or m.items not in p.results.items:
            raise ShardError(f"{p.where}: metric {name} has no per-item records to merge; evaluate that shard again")
        for item in p.results.items[m.items]:
            if item["id"] in seen:
                raise ShardError(
                    f"item {item['id']!r} of {name} was scored by two shards, {seen[item['id']]} and {p.where}: "
                    "they are not shards of one split. Remove the stray shard folder and evaluate the right one"
                )
            seen[item["id"]] = p.where
            items[item["id"]] = item
    missing = [i for i in order if i not in items]
    unknown = sorted(set(items) - set(order))
    if missing or unknown:
        what = f"no shard scored {len(missing)} of its {len(order)} items (first: {missing[0]!r})" if missing else ""
        what = what or f"{len(unknown)} items are not in the unsharded evaluation (first: {unknown[0]!r})"
        raise ShardError(
            f"metric {name}: {what}. The shards were evaluated with other settings or are incomplete; evaluate "
            "every shard of the run again with the same settings"
        )
    joined = [items[i] for i in order]
    return _rebuild([m for _, m in found], joined, n_boot, alpha), joined


def _rebuild(shard_metrics: list[Metric], items: list[dict[str, Any]], n_boot: int, alpha: float) -> Metric:
    """The metric over every shard's items, by the family's own function."""
    m = shard_metrics[0]
    if m.group == "perplexity":
        return perplexity_metric(
            items,
            m.name.split("/", 1)[1],
            sum(int(s.details.get("input_tokens") or 0) for s in shard_metrics),
            n_boot=n_boot,
            alpha=alpha,
            seconds=sum(float(s.details.get("seconds") or 0.0) for s in shard_metrics),
            runtime=m.details.get("runtime"),
        )
    if m.group == "probes":
        return pass_rate(m.name, items, {k: v for k, v in m.details.items() if k != "passed"})
    if m.group == "lm_eval":
        return mean_metric(m, items)
    raise ShardError(f"metric {m.name} (group {m.group}) has no merge rule; evaluate it without --shard")


def _artifacts(parts: Sequence[Part], orders: dict[str, list[str]]) -> dict[str, Any]:
    """The artifacts of the unsharded results: transcripts and lm-eval answers joined in item order, generation
    statistics summed, the rest (contamination, task configs) as every shard has it."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for p in parts for k in p.results.artifacts):
        values = [p.results.artifacts[key] for p in parts if key in p.results.artifacts]
        if key.startswith(f"{SHARD_ORDER}/") or key == TASKS:
            continue
        if key == "probe_transcripts":
            out[key] = _transcripts(values, orders)
        elif key == "probe_generation":
            out[key] = _generation(values)
        elif key.startswith("lm_eval/") and isinstance(values[0], dict) and "samples" in values[0]:
            rows = sorted((r for v in values for r in v["samples"]), key=lambda r: int(r["id"]))  # by doc_id
            out[key] = {**values[0], "samples": rows}
        elif other := [v for v in values if v != values[0]]:
            raise ShardError(
                f"the shards differ in {key} ({_short(values[0])} against {_short(other[0])}): they were evaluated "
                "on other data or settings; evaluate every shard of the run with the same ones"
            )
        else:
            out[key] = values[0]
    return out


def _transcripts(values: list[dict[str, Any]], orders: dict[str, list[str]]) -> dict[str, Any]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for value in values:
        for pset, by_sampling in value.items():
            for sampling, rows in by_sampling.items():
                out.setdefault(pset, {}).setdefault(sampling, []).extend(rows)
    for pset, by_sampling in out.items():
        for sampling, rows in by_sampling.items():
            rank = {i: k for k, i in enumerate(orders.get(f"probes/{pset}/{sampling}/pass_rate", []))}
            rows.sort(key=lambda r: rank.get(r["id"], len(rank)))
    return out


def _generation(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Generation statistics of every shard, summed (throughput recomputed from the sums)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    summed = ("new_tokens", "seconds", "cache_hits", "cache_misses", "generate_calls")
    for value in values:
        for pset, by_sampling in value.items():
            for sampling, stats in by_sampling.items():
                have = out.setdefault(pset, {}).get(sampling)
                if have is None:
                    out[pset][sampling] = dict(stats)
                    continue
                for k in summed:
                    have[k] = (have.get(k) or 0) + (stats.get(k) or 0)
    for by_sampling in out.values():
        for stats in by_sampling.values():
            stats["tokens_per_s"] = stats["new_tokens"] / stats["seconds"] if stats.get("seconds") else 0.0
    return out


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."
