"""Where a metric's paired items come from: the setting that gives an inconclusive gate rule more of them.

A rule that cannot conclude says how many paired items would (``core.stats.items_needed``); that number helps only
beside the knob that supplies them (``eval.lm_eval_limit``, a probe sampling's ``n_samples``, the test split's size)
or the plain fact that the source has no more (a task of 80 documents cannot give 1,584).
"""

from __future__ import annotations

from typing import Any

from tunebench.compare.comparison import Comparison


def get_path(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, None where a level is missing or not a dict."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


_UNKNOWN = object()


def _lm_eval_documents(
    metric: str, task: str, comparison: Comparison | None, cfg: dict[str, Any]
) -> tuple[int | None, Any]:
    """(documents the task has, eval.lm_eval_limit it ran under, or _UNKNOWN), from the compared row and the
    comparison's inputs, else the config."""
    inputs = ((comparison.inputs if comparison else None) or {}).get(f"lm_eval/{task}")
    inputs = inputs if isinstance(inputs, dict) else {}
    row = next((r for r in comparison.rows if r.metric == metric), None) if comparison else None
    docs = (row.details.get("documents_in_task") if row else None) or get_path(inputs, "data_source", "documents")
    if "limit" in inputs:
        limit = inputs["limit"]
    else:
        limit = cfg["eval"].get("lm_eval_limit") if isinstance(cfg.get("eval"), dict) else _UNKNOWN
    return (docs if isinstance(docs, int) else None), limit


def _sampling_spec(name: str, comparison: Comparison | None, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """A probe sampling setting as it ran (the comparison's inputs), else as the config gives it."""
    inputs = (comparison.inputs if comparison else None) or {}
    legacy = inputs.get("sampling")
    if isinstance(legacy, dict) and isinstance(legacy.get(name), dict):  # {name: settings}
        return legacy[name]
    listed = inputs.get("probe_sampling") or get_path(cfg, "eval", "probe_sampling") or []
    return next((sp for sp in listed if isinstance(sp, dict) and sp.get("name") == name), None)


def more_items(
    metric: str,
    n: int,
    need: int,
    comparison: Comparison | None = None,
    config: dict[str, Any] | None = None,
    data_report: dict[str, Any] | None = None,
) -> str:
    """The setting that gives a metric more paired items, or why its source cannot supply ``need`` of them.

    Args:
        metric: The gated metric (``perplexity/test``, ``lm_eval/<task>/...``, ``probes/<set>/<sampling>/...``;
            an artifact rule's ``... [q8_0 vs adapter]`` suffix is ignored).
        n: Paired items the interval rests on now.
        need: Paired items that would conclude.
        comparison: The comparison (its inputs hold each lm-eval task's document count and limit).
        config: The run's resolved config as a dict (current values of the settings named).
        data_report: The data report (conversations in the test split and in the whole data set).

    Returns:
        A clause such as "raise eval.lm_eval_limit (now 12; the task has 80 documents)", or "" for a metric
        of no known source.
    """
    cfg = config or {}
    parts = metric.split(" [", 1)[0].split("/")
    if parts[0] == "perplexity":
        clean = (data_report or {}).get("clean")
        if isinstance(clean, int) and need > clean:
            return (
                f"the data set has only {clean:,} clean conversations: it cannot supply them (a larger data "
                "set, or a wider margin)"
            )
        cap, share = get_path(cfg, "data", "max_test"), get_path(cfg, "data", "test_fraction")
        drawn = round(share * clean) if isinstance(share, float) and isinstance(clean, int) else None
        fraction = (
            f"data.test_fraction (now {share}" + (f": about {drawn:,} conversations)" if drawn else ")")
            if share is not None
            else "data.test_fraction"
        )
        if isinstance(cap, int) and cap < need:
            return f"raise data.max_test (now {cap})" + (f" and {fraction}" if drawn is None or drawn < need else "")
        return f"raise {fraction}"
    if parts[0] == "lm_eval" and len(parts) > 2:
        task = parts[1]
        docs, limit = _lm_eval_documents(metric.split(" [", 1)[0], task, comparison, cfg)
        if docs is not None and need > docs:
            return (
                f"task {task} has only {docs:,} documents: it cannot supply them (gate on a larger task, or "
                "widen the margin)"
            )
        if isinstance(limit, int):
            return f"raise eval.lm_eval_limit (now {limit}" + (
                f"; task {task} has {docs:,} documents)" if docs else ")"
            )
        if limit is _UNKNOWN:
            return f"raise eval.lm_eval_limit if it was set, else task {task} cannot supply them (a larger task)"
        return f"task {task} has only its {n:,} documents (eval.lm_eval_limit is not set): it cannot supply them"
    if parts[0] == "probes" and len(parts) > 3:
        probe_set, sampling = parts[1], parts[2]
        spec = _sampling_spec(sampling, comparison, cfg)
        prompts = f"add prompts to probe set {probe_set} (eval.probe_files)"
        if spec is not None and not spec.get("temperature"):
            return f"{prompts}: greedy decoding gives one answer per prompt"
        now = f" (now {spec.get('n_samples', 1)})" if spec else ""
        return (
            f"raise n_samples of eval.probe_sampling {sampling}{now}, or {prompts}; samples of one prompt are "
            "not independent, so new prompts count for more"
        )
    return ""
