"""Data loaders for the shipped lm-eval tasks (referenced from the YAML files as ``!function utils.<name>``).

lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)``, so the loaders take and ignore ``**kwargs``.
Paths are resolved from this file, never from the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def read_jsonl(name: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file in this folder, with an error that names the file and line."""
    path = HERE / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: missing task data; reinstall tunebench (it ships evals/lm_eval/tasks/*.jsonl)"
        )
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def _as_test_split(rows: list[dict[str, Any]]) -> Any:
    import datasets  # heavy: datasets, imported when needed

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_facts_mc(**kwargs: Any) -> Any:
    """General-knowledge questions with four choices: ``{id, question, choices, answer}``."""
    return _as_test_split(read_jsonl("facts_mc.jsonl"))


def load_arith_gen(**kwargs: Any) -> Any:
    """Arithmetic word problems with whole-number answers: ``{id, question, answer}``."""
    rows = read_jsonl("arith_gen.jsonl")
    for r in rows:  # the target is compared as text with the extracted integer
        r["answer"] = str(r["answer"])
    return _as_test_split(rows)
