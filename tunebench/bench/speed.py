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

Where each part lives (this module is only the `python -m` entry point; `tunebench bench` runs cli.main):
    metrics.py     arithmetic: MFU, step summaries, points, ratios, targets, the find-best choice
    timer.py       the StepTimer callback          worker.py    worker processes (train point, sweep, setup, eval)
    spawn.py       budget, process spawning, setup  cli.py       flags and dispatch
    trainspeed.py  the training benchmark and --find-best         markdown.py  speed.md from speed.json
"""

from __future__ import annotations

import sys

from tunebench.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
