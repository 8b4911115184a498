"""Offline lm-eval tasks shipped with tunebench, passed to lm-eval as ``TaskManager(include_path=TASKS_DIR)``.

Each task is a YAML file here; its data is a JSONL file beside it, read by ``utils.py`` (lm-eval resolves
``!function utils.<name>`` relative to the YAML file, so nothing depends on the working directory).
"""

from tunebench.core.io import package_path

TASKS_DIR = package_path("evals", "lm_eval", "tasks")
SHIPPED_TASKS = ("tunebench_facts_mc", "tunebench_arith_gen")
SHIPPED_GROUP = "tunebench"
