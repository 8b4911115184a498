"""`tunebench bench speed` / `bench eval`: training and evaluation speed of the suite's own code paths on a
CUDA GPU, with every backend in its own process, measured in one invocation and written as JSON + Markdown.

    python -m tunebench.bench.speed speed --shape llama-3.2-1b --out bench-out     # unsloth vs hf vs hf-padfree
    python -m tunebench.bench.speed speed --find-best --memory-limit-gib 40       # + the fastest setting that fits
    python -m tunebench.bench.speed eval --shape llama-3.2-1b --out bench-out      # perplexity + generation speed
    python -m tunebench.bench.speed export-data --n 3000 --out sharegpt-3000.jsonl # data for a machine without it
    python -m tunebench.bench.speed export-tokenizer --out llama3-tokenizer         # tokenizer for such a machine

One invocation: a setup process measures the card's bf16 matmul peak and builds the random-weight shapes;
the parent encodes the conversations once through the suite's data pipeline; then one worker process per
(shape, backend, batch point) runs the real ``train.trainer.train`` with a StepTimer callback (Unsloth is
imported first in its own process, so it never patches the others). Results are rewritten after every
worker, so a run cut short still leaves valid files. Exit codes: 0 every row measured, 1 some row failed or
was skipped (the files say which), 2 bad input, 3 no CUDA GPU.

Where each part lives (this module is the entry point and keeps the old names importable):
    metrics.py     arithmetic: MFU, step summaries, points, ratios, targets, the find-best choice
    timer.py       the StepTimer callback          worker.py    worker processes (train point, sweep, setup, eval)
    spawn.py       budget, process spawning, setup  cli.py       flags and dispatch
    trainspeed.py  the training benchmark and --find-best         markdown.py  speed.md from speed.json
"""

from __future__ import annotations

import sys

from tunebench.bench.cli import DEFAULT_TARGETS, NO_CUDA, build_parser, common_flags, main
from tunebench.bench.markdown import _f, header_lines, render_speed_md, target_table, write_speed
from tunebench.bench.metrics import (
    EVAL_TARGETS,
    SEED_POINT,
    SPEED_TARGETS,
    _ratio,
    _target,
    config_line,
    find_best,
    mfu,
    parse_int_list,
    parse_names,
    percentile,
    points_of,
    speed_ratios,
    speed_targets,
    summarize_steps,
)
from tunebench.bench.spawn import (
    EXIT_INCOMPLETE,
    EXIT_INPUT,
    EXIT_NO_CUDA,
    EXIT_OK,
    Budget,
    SetupError,
    setup,
    spawn,
    work_dir,
)
from tunebench.bench.timer import make_step_timer
from tunebench.bench.trainspeed import run_speed
from tunebench.bench.worker import BACKENDS, LAYOUTS, run_sweep, run_train_point, worker_main

__all__ = [
    "BACKENDS",
    "DEFAULT_TARGETS",
    "EVAL_TARGETS",
    "EXIT_INCOMPLETE",
    "EXIT_INPUT",
    "EXIT_NO_CUDA",
    "EXIT_OK",
    "LAYOUTS",
    "NO_CUDA",
    "SEED_POINT",
    "SPEED_TARGETS",
    "Budget",
    "SetupError",
    "_f",
    "_ratio",
    "_target",
    "build_parser",
    "common_flags",
    "config_line",
    "find_best",
    "header_lines",
    "main",
    "make_step_timer",
    "mfu",
    "parse_int_list",
    "parse_names",
    "percentile",
    "points_of",
    "render_speed_md",
    "run_speed",
    "run_sweep",
    "run_train_point",
    "setup",
    "spawn",
    "speed_ratios",
    "speed_targets",
    "summarize_steps",
    "target_table",
    "work_dir",
    "worker_main",
    "write_speed",
]

if __name__ == "__main__":
    sys.exit(main())
