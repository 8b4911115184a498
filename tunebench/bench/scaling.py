"""Data-parallel scaling for `tunebench bench speed --world-size N`: the hf backend under torchrun on N GPUs
of one host, against the same backend in one process, from the same invocation.

Scaling efficiency = real tokens/s on N processes ÷ (N × real tokens/s on one), at the same per-process
batch (so the N-process job takes N times as many conversations per optimizer step).
"""

from __future__ import annotations

import sys
from typing import Any

from tunebench.core.markdown import compact_table

WORKER_MODULE = "tunebench.bench.speed"
"""The module a worker runs (``python -m tunebench.bench.speed worker SPEC``)."""


def worker_launcher(world_size: int) -> list[str]:
    """What runs between ``python`` and ``-m MODULE``: nothing, or torchrun with one process per GPU."""
    if world_size <= 1:
        return []
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}"]


def worker_command(spec_path: str, world_size: int) -> list[str]:
    """The worker's command line: plain Python, or torchrun with one process per GPU."""
    return [sys.executable, *worker_launcher(world_size), "-m", WORKER_MODULE, "worker", spec_path]


def combine_rank_marks(per_rank: list[list[tuple[int, float, int, int]]]) -> list[tuple[int, float, int, int]]:
    """One job-wide timeline from every rank's (step, time, tokens, positions) marks.

    DDP ranks step in lockstep (gradients are all-reduced every optimizer step), so rank 0's clock times the
    job; tokens and positions are summed over ranks, since each rank reads different conversations.
    """
    base = per_rank[0]
    if any(len(m) != len(base) for m in per_rank):
        raise ValueError(f"ranks recorded different numbers of steps: {[len(m) for m in per_rank]}")
    out = []
    for k, (step, t, _, _) in enumerate(base):
        out.append((step, t, sum(m[k][2] for m in per_rank), sum(m[k][3] for m in per_rank)))
    return out


def scaling_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Efficiency of every ok multi-process row against its one-process twin (shape, backend, point)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    out = []
    for r in ok:
        n = r.get("world_size", 1)
        if n <= 1:
            continue
        one = next(
            (
                b
                for b in ok
                if b.get("world_size", 1) == 1
                and (b["shape"], b["backend"], b["point"]) == (r["shape"], r["backend"], r["point"])
            ),
            None,
        )
        if one is None:
            continue
        eff = r["real_tokens_per_s"] / (n * one["real_tokens_per_s"])
        out.append(
            {
                "shape": r["shape"],
                "backend": r["backend"],
                "batch_size": r["batch_size"],
                "grad_accum": r["grad_accum"],
                "world_size": n,
                "tokens_per_s_1": one["real_tokens_per_s"],
                "tokens_per_s_n": r["real_tokens_per_s"],
                "speedup": round(r["real_tokens_per_s"] / one["real_tokens_per_s"], 3),
                "efficiency": round(eff, 3),
                "effective_batch_1": r["batch_size"] * r["grad_accum"],
                "effective_batch_n": r["batch_size"] * r["grad_accum"] * n,
            }
        )
    return out


def render_scaling(scaling: list[dict[str, Any]]) -> list[str]:
    """Markdown section for speed.md (empty without multi-process rows)."""
    if not scaling:
        return []
    lines = [
        "## Data-parallel scaling (same invocation)",
        "",
        "Per-process batch unchanged, so N processes take N× the conversations per optimizer step. "
        "Efficiency = tokens/s on N ÷ (N × tokens/s on 1).",
        "",
    ]
    cols = [
        "shape",
        "backend",
        "batch × accum per process",
        "processes:",
        "tok/s on 1:",
        "tok/s on N:",
        "speed-up:",
        "efficiency:",
    ]
    body = [
        [
            s["shape"],
            s["backend"],
            f"{s['batch_size']} × {s['grad_accum']}",
            s["world_size"],
            f"{s['tokens_per_s_1']:,.0f}",
            f"{s['tokens_per_s_n']:,.0f}",
            f"{s['speedup']:.2f}×",
            f"{s['efficiency']:.0%}",
        ]
        for s in scaling
    ]
    lines += compact_table(cols, body)
    return lines + [""]
