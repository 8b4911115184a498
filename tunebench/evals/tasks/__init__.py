"""Offline lm-eval tasks shipped with tunebench, passed to lm-eval as ``TaskManager(include_path=TASKS_DIR)``.

Each task is a YAML file here; its data is a JSONL file beside it, read by ``utils.py`` (lm-eval resolves
``!function utils.<name>`` relative to the YAML file, so nothing depends on the working directory).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
SHIPPED_TASKS = ("tunebench_facts_mc", "tunebench_arith_gen")
SHIPPED_GROUP = "tunebench"
