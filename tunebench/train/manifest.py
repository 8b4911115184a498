"""The manifest every adapter carries, and the loss-curve image beside it."""

from __future__ import annotations

import io
import resource
import time
from pathlib import Path
from typing import Any

from tunebench.core.io import atomic_write_bytes, environment, git_commit

SCHEMA = "tunebench.manifest/1"


def peak_memory() -> dict[str, Any]:
    """Peak memory of this process: CUDA allocator peaks on GPU, max RSS on CPU."""
    import torch  # heavy: torch, imported when needed

    if torch.cuda.is_available():
        return {
            "kind": "cuda",
            "allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
        }

    return {"kind": "cpu_rss", "rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit packed weights are counted by their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # two 4-bit values per stored byte
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def history(log_history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split the trainer's log history into (train loss points, validation loss points)."""
    train = [
        {"step": h["step"], "loss": h["loss"], "lr": h.get("learning_rate")}
        for h in log_history
        if "loss" in h and "step" in h
    ]
    val = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in log_history if "eval_loss" in h]
    return train, val


def build(
    *,
    cfg: dict[str, Any],
    model: dict[str, Any],
    template: dict[str, Any],
    backend: dict[str, Any],
    data: dict[str, Any],
    trainable: int,
    total: int,
    steps: int,
    tokens_seen: int,
    wall_time_s: float,
    log_history: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the manifest (schema tunebench.manifest/1)."""
    train, val = history(log_history)
    m = {
        "schema": SCHEMA,
        "name": cfg.get("name"),
        "config": cfg,
        "model": model,
        "template": template,
        "backend": backend,
        "versions": environment(),
        "data": data,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": round(100.0 * trainable / max(1, total), 4),
        "steps": steps,
        "tokens_seen": tokens_seen,
        "wall_time_s": round(wall_time_s, 2),
        "tokens_per_s": round(tokens_seen / wall_time_s, 1) if wall_time_s > 0 else None,
        "peak_memory": peak_memory(),
        "loss_history": train,
        "eval_history": val,
        "final_train_loss": train[-1]["loss"] if train else None,
        "final_eval_loss": val[-1]["eval_loss"] if val else None,
        "git_commit": git_commit(),
        "created": time.time(),
    }
    if extra:
        m.update(extra)
    return m


def plot_loss_curve(manifest: dict[str, Any], path: str | Path) -> Path:
    """Train (and validation) loss against step, written atomically as PNG."""

    import matplotlib  # heavy: matplotlib, imported when needed

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib, imported when needed

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    tr = manifest["loss_history"]
    if tr:
        ax.plot([p["step"] for p in tr], [p["loss"] for p in tr], label="train (assistant tokens)")
    va = manifest["eval_history"]
    if va:
        ax.plot([p["step"] for p in va], [p["eval_loss"] for p in va], "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{manifest.get('name')} · {manifest['backend']['name']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
