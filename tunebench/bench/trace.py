"""Where a training step's time goes on the GPU: a torch.profiler window over a few optimizer steps after the measured
ones, summarised as the share of wall time the GPU was busy (kernels, copies), the host<->device copy time and how
much of it no kernel hid, and kernels launched per step.

The question it answers: is a backend host-bound (the GPU idles between kernels while Python and the launch path
catch up: busy share well under 1), and does Unsloth's offloaded gradient checkpointing wait on host<->device
bandwidth (copy time a kernel does not overlap)? The step-end sync wait cannot tell these apart under transformers'
Trainer, which syncs inside every step. Profiling adds its own overhead (CUPTI), so the shares are read side by side
across backends, not as absolute step times; the measured steps are never profiled. What it showed:
reports/published/2026-12-04-h200-speed-trace.
"""

from __future__ import annotations

import time
from typing import Any

Interval = tuple[float, float]


def union_length(intervals: list[Interval]) -> float:
    """Total length covered by the intervals (overlaps counted once)."""
    total, end = 0.0, None
    start = None
    for a, b in sorted(intervals):
        if end is None or a > end:
            if end is not None:
                total += end - start
            start, end = a, b
        else:
            end = max(end, b)
    if end is not None:
        total += end - start
    return total


def overlap_length(xs: list[Interval], ys: list[Interval]) -> float:
    """Length of the part of ``xs`` (after union) that ``ys`` (after union) also covers."""
    return union_length(xs) + union_length(ys) - union_length(xs + ys)


def classify(name: str) -> str:
    """A device event's kind from its name, as CUPTI names them: copies, memsets, else a kernel."""
    n = name.lower()
    if n.startswith("memcpy"):
        return "htod" if "htod" in n else "dtoh" if "dtoh" in n else "dtod"
    if n.startswith("memset"):
        return "memset"
    return "kernel"


def summarize_device_events(events: list[tuple[str, float, float]], wall_s: float, steps: int) -> dict[str, Any]:
    """``events``: (name, start_us, end_us) of every device-side event in the window; ``wall_s``: the window's wall
    time. Shares are of the window's wall time; per-step figures divide by ``steps``."""
    if steps <= 0 or wall_s <= 0:
        raise ValueError(f"steps={steps}, wall_s={wall_s}: a profiled window needs both > 0")
    by: dict[str, list[Interval]] = {}
    for name, a, b in events:
        by.setdefault(classify(name), []).append((a / 1e6, b / 1e6))
    kernels = by.get("kernel", [])
    copies = by.get("htod", []) + by.get("dtoh", [])
    busy = union_length([iv for ivs in by.values() for iv in ivs])

    def per_step(x: float) -> float:
        return round(x / steps, 4)

    copy_s = union_length(copies)
    return {
        "profiled_steps": steps,
        "wall_s_per_step": per_step(wall_s),
        "gpu_busy_share": round(busy / wall_s, 4),
        "kernel_busy_share": round(union_length(kernels) / wall_s, 4),
        "gpu_idle_s_per_step": per_step(max(0.0, wall_s - busy)),
        "kernels_per_step": round(len(kernels) / steps, 1),
        "htod_s_per_step": per_step(union_length(by.get("htod", []))),
        "dtoh_s_per_step": per_step(union_length(by.get("dtoh", []))),
        "copy_share": round(copy_s / wall_s, 4),
        # copy time no kernel ran beside: the part of the offload a step waits on, if the copies are in its path
        "copy_exposed_s_per_step": per_step(copy_s - overlap_length(copies, kernels)),
    }


def device_events(prof: Any) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of the device-side events a finished torch.profiler.profile recorded."""
    from torch.autograd import DeviceType  # heavy: torch, imported when needed

    out = []
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            out.append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return out


class ProfileWindow:
    """torch.profiler over optimizer steps ``first+1 .. first+steps`` (the steps after ``first``), started and stopped
    from a TrainerCallback's step ends. ``summary`` is None until the window closed; on CPU it holds no device time
    (``gpu_busy_share`` 0)."""

    def __init__(self, first: int, steps: int):
        self.first, self.steps = first, steps
        self.summary: dict[str, Any] | None = None
        self._prof: Any = None
        self._t0 = 0.0

    def active(self, step: int) -> bool:
        return self.steps > 0 and self.first < step <= self.first + self.steps

    def on_step_end(self, step: int, sync: Any) -> None:
        if self.steps <= 0:
            return
        if step == self.first:
            import torch  # heavy: torch, imported when needed

            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            sync()
            self._prof = torch.profiler.profile(activities=acts)
            self._prof.start()
            self._t0 = time.perf_counter()
        elif step == self.first + self.steps and self._prof is not None:
            sync()
            wall = time.perf_counter() - self._t0
            self._prof.stop()
            self.summary = summarize_device_events(device_events(self._prof), wall, self.steps)
            self._prof = None
