"""Checkpoint folders of a training run: which is the latest complete one, and why a broken one is broken.

Checkpoints appear only by atomic rename (trainer.py), but a file inside one can still be cut by a full disk or a
crash of the filesystem, or by hand: ``--resume`` names the broken file and falls back to the checkpoint before it.
Nothing here imports transformers or torch (``train`` looks before Unsloth is imported, and Unsloth must be first).
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path

from tunebench.core.errors import InvalidInput, TrainingError
from tunebench.core.io import parse_json, read_json

log = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The highest-step complete checkpoint; a broken one (a file cut by a crash or a full disk) is skipped with a
    warning that names the file, falling back to the one before it.

    The rule of transformers' ``get_last_checkpoint`` (folders named ``checkpoint-N``), without importing
    transformers: ``train`` looks before Unsloth is imported, and Unsloth must come first.
    """
    for path in checkpoints(ckpt_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s; falling back to the one before it", path, problem)
    return None


def checkpoints(ckpt_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, highest step first."""
    if not ckpt_dir.is_dir():
        return []
    steps = {
        int(m.group(1)): p
        for p in ckpt_dir.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    }
    return [steps[n] for n in sorted(steps, reverse=True)]


CHECKPOINT_ZIPS = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
"""torch.save files of a checkpoint: zip archives, so a cut one lacks its end-of-archive record."""


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be resumed (naming the file), or None when it is complete.

    Checks what a cut file cannot pass without reading tensors: trainer_state.json parses, the safetensors
    header's offsets end at the file's size, and each torch.save zip has its end record.
    """
    state = path / "trainer_state.json"
    try:
        data = read_json(state)
    except (InvalidInput, FileNotFoundError) as e:
        return f"{state} is missing or not valid JSON ({e})"
    if not isinstance(data, dict) or not isinstance(data.get("global_step"), int):
        return f"{state} has no global_step"
    weights = path / "adapter_model.safetensors"
    if (problem := _safetensors_problem(weights)) is not None:
        return f"{weights} {problem}"
    for name in CHECKPOINT_ZIPS:
        if (path / name).exists() and not zipfile.is_zipfile(path / name):
            return f"{path / name} is cut short or not a torch.save file"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file: an 8-byte header length, a JSON header, then the data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 + n:
                return f"is cut short ({size} bytes, header alone needs {8 + n})"
            header = parse_json(f.read(n), str(path))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except FileNotFoundError:
        return "is missing"
    except (OSError, InvalidInput, AttributeError, TypeError, KeyError, IndexError) as e:
        return f"has an unreadable header ({type(e).__name__})"
    if size != 8 + n + end:
        return f"is cut short ({size} bytes of {8 + n + end})"
    return None


def require_resumable(ckpt_dir: Path) -> None:
    """Raise when checkpoints exist but none is complete: --resume has nothing to continue (no silent restart).

    Raises:
        TrainingError: naming each broken checkpoint's bad file and what to do.
    """
    found = checkpoints(ckpt_dir)
    if found and latest_checkpoint(ckpt_dir) is None:
        problems = "; ".join(f"{p.name}: {checkpoint_problem(p)}" for p in found)
        raise TrainingError(
            f"no complete checkpoint to resume in {ckpt_dir} ({problems}). Start over with "
            "--overwrite (or delete the broken checkpoint folders)."
        )
