"""Sharded evaluation across machines: which part of an evaluation shard ``i`` of ``N`` runs.

``tunebench eval RUN --shard i/N`` (0-based: shards ``0/N`` .. ``N-1/N``) scores one part of the items, and
``tunebench merge RUN`` joins the parts. Two rules decide the part, each chosen so that the merged records equal an
unsharded evaluation's:

- Families whose numbers depend on how items are batched (perplexity: batch shapes; probes: one random stream per
  batch) plan their batches exactly as an unsharded run does, over every item, and shard ``i`` runs the batches
  ``i, i + N, i + 2N, ...`` of that plan (``owns_batch``): every answer is drawn from the same batch and seed as
  unsharded, as under torchrun (``dist.shard``), only across machines.
- lm-eval batches documents itself, so it is given the documents whose ``stable_hash("<task>/<doc_id>") % N == i``
  (``owns``): a document and all its requests stay in one shard.

``stable_hash`` is SHA-256, never Python's ``hash()`` (salted per process: two machines would disagree). Shards
may also come from a SLURM job array (``--shard slurm``, ``from_slurm``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tunebench.core.errors import ConfigError

_SPEC = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")
SLURM = "slurm"
"""``--shard slurm``: index and count from the job array's environment (``from_slurm``)."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"--shard {self.index}/{self.count}: the number of shards must be at least 1")
        if not 0 <= self.index < self.count:
            last = f"{self.count - 1}/{self.count}"
            raise ConfigError(
                f"--shard {self.index}/{self.count}: shards count from 0, so the shards of {self.count} are "
                f"0/{self.count} .. {last}"
            )

    @property
    def name(self) -> str:
        """``i-of-N``: the shard's folder name."""
        return f"{self.index}-of-{self.count}"

    def owns_batch(self, b: int) -> bool:
        """Whether batch ``b`` of an unsharded run's plan is this shard's."""
        return b % self.count == self.index

    def owns(self, key: str) -> bool:
        """Whether the item ``key`` (an lm-eval ``<task>/<doc_id>``) is this shard's."""
        return stable_hash(key) % self.count == self.index

    def to_list(self) -> list[int]:
        """``[index, count]``: how a shard crosses into a child process."""
        return [self.index, self.count]


def stable_hash(key: str) -> int:
    """The same integer for the same key on every machine and in every process (the first 8 bytes of SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def parse_shard(text: str, env: Mapping[str, str] | None = None) -> Shard:
    """``"i/N"`` (0-based) or ``"slurm"`` as a Shard.

    Raises:
        ConfigError: not ``i/N`` with 0 <= i < N, or ``slurm`` outside a usable job array.
    """
    if text.strip().lower() == SLURM:
        return from_slurm(os.environ if env is None else env)
    m = _SPEC.match(text)
    if not m:
        raise ConfigError(
            f"--shard {text!r}: give INDEX/COUNT with the index counting from 0 (e.g. --shard 0/4 .. --shard 3/4), "
            "or --shard slurm inside a SLURM job array"
        )
    return Shard(int(m.group(1)), int(m.group(2)))


def from_slurm(env: Mapping[str, str]) -> Shard:
    """The shard of this task of a SLURM job array: count ``SLURM_ARRAY_TASK_COUNT``, index
    ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP``, so ``--array=0-3`` and ``--array=1-4``
    both give shards 0..3 of 4.

    Raises:
        ConfigError: not in a job array, or an array that is not one evenly stepped range (``--array=1,5,7``).
    """
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX")
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise ConfigError(
            f"--shard slurm: {', '.join(missing)} not set; run it as a task of a SLURM job array "
            "(sbatch --array=0-3 ...), or give the shard as --shard INDEX/COUNT"
        )
    try:
        task, low, high = (int(env[n]) for n in names)
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        count = int(env.get("SLURM_ARRAY_TASK_COUNT") or (high - low) // step + 1)
    except ValueError:
        shown = ", ".join(f"{n}={env.get(n)!r}" for n in (*names, "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_TASK_COUNT"))
        raise ConfigError(f"--shard slurm: the array variables are not whole numbers ({shown})") from None
    if step < 1 or low + (count - 1) * step != high or (task - low) % step:
        raise ConfigError(
            f"--shard slurm: the job array (tasks {low}..{high}, step {step}, {count} tasks) is not one evenly "
            "stepped range, so its tasks cannot number the shards; submit it as --array=0-(N-1)"
        )
    return Shard((task - low) // step, count)
