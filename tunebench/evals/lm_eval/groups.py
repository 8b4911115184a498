"""lm-eval groups (``mmlu``: 57 subjects) as one pooled, paired metric, with the members beneath it.

A group asked for by name (``eval.lm_eval_tasks: [mmlu]``) runs as its leaf tasks. Gated one by one, MMLU's 57
subjects of ~100-1,500 documents each can rarely conclude on a 5-point margin, and they fill the report's decision
with 57 lines. What a user gates on is the group: ``lm_eval/mmlu/acc`` pools every member's per-document items
(ids ``<subtask>/<doc_id>``), so base and tuned stay paired document by document over all 14,042 questions. Its
value is the mean over all member documents, which is lm-eval's own ``weight_by_size`` aggregate for MMLU.

Members keep their metrics, renamed ``lm_eval/<group>/<subtask>/<metric>``: the report lists them as the
group's breakdown (not headlines), and the default gate globs (``lm_eval/*/acc**``) match the group only.
"""

from __future__ import annotations

import math
from collections import defaultdict

from tunebench.core.io import fingerprint
from tunebench.core.stats import Z95
from tunebench.evals.results import Metric, Results


def member_prefix(group: str | None, task: str) -> str:
    """Metric-name prefix of a task: ``lm_eval/<task>``, or ``lm_eval/<group>/<task>`` for a group's member."""
    return f"lm_eval/{group}/{task}" if group else f"lm_eval/{task}"


def pool_group(res: Results, group: str, members: list[str]) -> list[Metric]:
    """Add ``lm_eval/<group>/<metric>`` for every per-document metric all ``members`` report (see module doc).

    Returns:
        The pooled metrics added (none when the members share no metric with items).
    """
    by_leaf: dict[str, dict[str, Metric]] = defaultdict(dict)
    for m in res.metrics:
        task = m.details.get("task")
        if task in members and m.items is not None:
            suffix = m.name.removeprefix(member_prefix(group, task) + "/")
            by_leaf[suffix][task] = m
    added = []
    for suffix, per_task in by_leaf.items():
        if set(per_task) != set(members):
            continue  # a metric some members lack cannot be pooled over the group
        items = [{**item, "id": f"{task}/{item['id']}"} for task in members for item in res.items[per_task[task].items]]
        values = [i["num"] / i["den"] for i in items]
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        stderr = sd / math.sqrt(n)
        low, high = mean - Z95 * stderr, mean + Z95 * stderr
        if all(0.0 <= v <= 1.0 for v in values):  # a proportion
            low, high = max(0.0, low), min(1.0, high)
        first = per_task[members[0]]
        details = {
            k: v for k, v in first.details.items() if k not in ("task", "task_version", "documents_in_task", "in_group")
        }
        details.update(
            task=group,
            members=list(members),
            pooled="mean over all member documents (lm-eval's weight_by_size group aggregate)",
            documents_in_task=sum(per_task[t].details.get("documents_in_task") or 0 for t in members),
        )
        metric = Metric(
            name=f"lm_eval/{group}/{suffix}",
            value=mean,
            higher_is_better=first.higher_is_better,
            n=n,
            unit="documents",
            ci_low=low,
            ci_high=high,
            ci_method="normal over pooled documents",
            stderr=stderr,
            aggregate="mean",
            group="lm_eval",
            details=details,
        )
        added.append(res.add(metric, items))
    if added:  # the group's inputs: its members' (compared between base and tuned like theirs) and their source
        source = {
            k: v
            for k, v in (added[0].details.get("data_source") or {}).items()
            if k not in ("dataset", "split", "documents")
        }
        res.inputs[f"lm_eval/{group}"] = {
            "members": fingerprint([res.inputs.get(f"lm_eval/{t}") for t in members]),
            "data_source": {**source, "documents": added[0].details["documents_in_task"]} if source else None,
        }
    return added
