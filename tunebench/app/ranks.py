"""`tunebench run` under a launcher (torchrun, accelerate launch): the main process runs the pipeline, and the others
follow it into the stages that spread over every process.

The launcher starts WORLD_SIZE copies of `tunebench run`. Rank 0 runs the stages as it would alone and, before each
stage that spreads, tells the others what to do (a message on a gloo group of their own, which waits as long as the
data stage takes):

    train   every process starts its training child (`tunebench train`); the children meet at a port rank 0 chose,
            a rendezvous of their own (the launcher's belongs to their parents), and train one model data-parallel
    eval    every process evaluates the same model, each its share of the batches (evals.runner)
    done    the others exit 0; rank 0 goes on alone (the judge, the export and its evaluations, the report)

The run folder must be on a disk every process sees (one host, or a shared file system): the others read the
prepared data and the adapter from it, and write nothing to it.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.core import dist

WAIT = datetime.timedelta(days=7)
"""How long the other processes wait for rank 0's next message (the data stage and the judge run in between)."""


@dataclass
class Message:
    """What rank 0 tells the others."""

    kind: str
    """``train``, ``eval`` or ``done``."""
    port: int = 0
    """``train``: where the training children meet."""
    config: dict[str, Any] = field(default_factory=dict)
    """``eval``: the resolved config (``to_dict``)."""
    label: str = ""
    adapter: str | None = None


class Crew:
    """The processes of one launched `tunebench run`: rank 0 leads, the others follow.

    Created by every process at the start (``join``): it joins the launcher's process group and a gloo group for
    the messages.
    """

    def __init__(self) -> None:
        import torch.distributed as torch_dist  # heavy: torch, imported when needed

        self.launcher = {k: v for k, v in os.environ.items() if k in _RENDEZVOUS}
        dist.init()
        self.group = torch_dist.new_group(backend="gloo", timeout=WAIT)
        self.main = dist.is_main()
        self.alone = False

    def tell(self, message: Message) -> Message:
        """Rank 0: send ``message`` to the others; the others: wait for rank 0's. Returns the message."""
        import torch.distributed as torch_dist  # heavy: torch, imported when needed

        box: list[Any] = [message if self.main else None]
        torch_dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def training_env(self, port: int) -> dict[str, str]:
        """The environment of this process's training child: the launcher's ranks, a rendezvous of its own at
        ``port`` on the main process's host (the child's rank 0 opens it), never the launcher agent's store."""
        return {**self.launcher, "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "False"}

    def release(self) -> None:
        """Rank 0: tell the others they are done, then go on as one process (``dist`` reports a world of 1)."""
        if self.alone:
            return
        self.tell(Message("done"))
        import torch.distributed as torch_dist  # heavy: torch, imported when needed

        torch_dist.destroy_process_group()
        os.environ["WORLD_SIZE"] = "1"
        self.alone = True


_RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def join() -> Crew | None:
    """The crew of a launched run, or None when this process runs alone."""
    return Crew() if dist.world_size() > 1 else None


def free_port() -> int:
    """A port free on this host now, for the training children's rendezvous."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def follow(
    crew: Crew,
    run_dir: Path,
    train_child: Callable[[Path, dict[str, str]], None],
    evaluate: Callable[[dict[str, Any], str, str | None], Any],
) -> None:
    """The other processes: do what rank 0 says until it says done.

    Args:
        crew: this process's crew (not rank 0's).
        run_dir: the run folder (rank 0 writes it).
        train_child: ``(run_dir, env) -> None``, the pipeline's training child.
        evaluate: ``(config dict, label, adapter) -> None``, one evaluation of this process's share.
    """
    while True:
        message = crew.tell(Message(""))
        if message.kind == "done":
            return
        if message.kind == "train":
            train_child(run_dir, crew.training_env(message.port))
        elif message.kind == "eval":
            evaluate(message.config, message.label, message.adapter)
