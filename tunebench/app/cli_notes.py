"""What an interrupted command kept, and the command line that continues it: the notes `tunebench` prints on Ctrl-C
or SIGTERM (exit code ``EXIT_INTERRUPTED``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from tunebench.core.config_schema import RunConfig
from tunebench.core.io import cache_root, read_json
from tunebench.evals.settings import probes_on
from tunebench.train.checkpoints import latest_checkpoint


def again_command(args: argparse.Namespace, add: str | None = None) -> str:
    """The command line that continues an interrupted command: the same one, less ``--overwrite`` and ``--force``
    (which would discard or redo what was saved), plus ``add``."""
    argv = [a for a in args.argv if a not in ("--overwrite", "--force")]
    return shlex.join(["tunebench", *argv, *([add] if add and add not in argv else [])])


def checkpoint_note(run_dir: Path) -> str:
    """Where a stopped training run can continue from."""
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return f"its latest checkpoint is {ckpt}" if ckpt else "no checkpoint was saved yet (training starts over)"


def cache_note(cfg: RunConfig) -> str:
    """What a stopped evaluation kept."""
    if probes_on(cfg.eval):
        return (
            f"the probe answers generated so far are cached in {cache_root() / 'generations'} and are reused "
            "(perplexity and lm-eval tasks run again)"
        )
    return "nothing of it was kept (perplexity and lm-eval tasks run again)"


def run_interrupted_note(args: argparse.Namespace, cfg: RunConfig, run_dir: Path) -> str:
    """What a stopped `tunebench run` kept, and the command that continues it."""
    path = run_dir / "stages.json"
    done = list(read_json(path)) if path.exists() else []
    kept = [f"the finished stages ({', '.join(done)}) are recorded in {path}" if done else "no stage had finished"]
    if "train" not in done and "data" in done:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        kept.append(f"training resumes from {ckpt}" if ckpt else "training had saved no checkpoint yet")
    elif "train" in done and not all(f"eval_{side}" in done for side in ("base", "tuned")):
        kept.append(cache_note(cfg))
    again = again_command(args)
    return f"the run in {run_dir} stopped; {'; '.join(kept)}. Continue with `{again}`: finished stages are skipped"
