"""The trainer subclass: TRL's ``SFTTrainer`` with atomic checkpoints, at module level so it reads alone.

Imported by ``trainer.build_trainer`` once the backend is resolved (this module imports transformers and trl, which
must come after Unsloth: ``SFTTrainer`` is then Unsloth's patched one). ``run_state`` is a ``run_state.RunState``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transformers import Trainer  # heavy: transformers (this module is imported lazily)
from trl import SFTTrainer  # heavy: trl (this module is imported lazily, after Unsloth)

from tunebench.core import dist
from tunebench.core.io import atomic_write_json, disk_full, is_disk_full
from tunebench.train.checkpoints import latest_checkpoint


class TunebenchTrainer(SFTTrainer):
    """``SFTTrainer`` whose checkpoints appear whole or not at all, and that carries the run's token counter.

    Args:
        run_state: the counters shared with the callbacks (tokens, seconds), written into each checkpoint.
        backend_name: the resolved backend (``hf`` on CPU computes transformers' own loss).
    """

    def __init__(self, *args: Any, run_state: Any, backend_name: str, **kwargs: Any) -> None:
        self.run_state = run_state
        self.backend_name = backend_name
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.backend_name == "hf" and self.args.device.type == "cpu":
            # TRL 1.15 computes the SFT loss through a fused LM head whose Triton kernel has no CPU driver;
            # transformers' own loss is the same token-mean NLL over the labels (and honours
            # num_items_in_batch under gradient accumulation).
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None and self.args.world_size > 1 and self.args.device.type == "cpu":
            # transformers maps the optimizer state to args.device ("cpu:N" under multi-CPU DDP), which
            # torch.load cannot restore to; on CPU the plain "cpu" location is the same memory
            import torch  # heavy: torch, imported when needed

            self.optimizer.load_state_dict(
                torch.load(os.path.join(checkpoint, "optimizer.pt"), map_location="cpu", weights_only=True)
            )
            self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))
            return
        super()._load_optimizer_and_scheduler(checkpoint)

    def _save_checkpoint(self, model, trial):
        # Build the checkpoint in a staging folder, then rename: a crash mid-save leaves no
        # checkpoint-N that looks complete.
        real = self.args.output_dir
        staging = os.path.join(real, ".staging")
        if dist.is_main():
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
        dist.barrier()  # every rank writes its RNG state into the same staging folder
        self.args.output_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            needed = _tree_size(latest_checkpoint(Path(real)))  # about what this one needs
            if not is_disk_full(e, staging, needed):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # the space it took; checkpoints before it are whole
            raise disk_full(e, os.path.join(real, f"checkpoint-{self.state.global_step}"), needed) from e
        finally:
            self.args.output_dir = real
        tokens = sum(dist.gather(self.run_state.tokens)) + self.run_state.prior_tokens
        dist.barrier()
        if dist.is_main():
            self._publish_checkpoint(real, staging, f"checkpoint-{self.state.global_step}", tokens)
        dist.barrier()

    def _publish_checkpoint(self, real: str, staging: str, name: str, tokens: int) -> None:
        """Add tunebench's state to the staged checkpoint, rename it into place and keep the last two."""
        atomic_write_json(
            os.path.join(staging, name, "tunebench_state.json"),
            {"tokens_seen": tokens, "seconds": self.run_state.seconds, "world_size": dist.world_size()},
        )
        final = os.path.join(real, name)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging, name), final)
        shutil.rmtree(staging, ignore_errors=True)
        for old in sorted(Path(real).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def _tree_size(path: Path | None) -> int | None:
    """Bytes under ``path`` (the size the next checkpoint will about need), or None without one."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path is not None else None
