"""What a speed figure depends on besides the card: the host's CPU and its load, the GPU's clocks, power limit and
driver. Recorded before and after each benchmark invocation, and shown beside the card in its Markdown."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from typing import Any

GPU_QUERY = "name,clocks.sm,clocks.max.sm,clocks.mem,power.limit,power.draw,temperature.gpu,driver_version"


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gpu_state(timeout: float = 10.0) -> list[dict[str, str]] | None:
    """One dict per GPU from ``nvidia-smi --query-gpu`` (None where nvidia-smi is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    keys = GPU_QUERY.split(",")
    return [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=False)) for line in out.splitlines() if line.strip()
    ]


def host_snapshot() -> dict[str, Any]:
    """CPU model and count, load average, and each GPU's clocks/power/driver at this moment."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": load,
        "gpus": gpu_state(),
    }


def host_lines(host: dict[str, Any] | None) -> list[str]:
    """Markdown bullet lines: the host before (and after) the measurements."""
    if not host:
        return ["- host: not recorded (a run from before hosts were recorded)"]
    before, after = host.get("before") or {}, host.get("after") or {}
    lines = [
        f"- host: {before.get('cpu') or 'unknown CPU'} × {before.get('cpu_count')} logical CPUs"
        f" (`{before.get('hostname')}`); load average (1/5/15 min) {before.get('loadavg_1_5_15')} before, "
        f"{after.get('loadavg_1_5_15', 'not recorded')} after"
    ]
    for i, g in enumerate(before.get("gpus") or []):
        a = ((after.get("gpus") or [])[i : i + 1] or [{}])[0]
        lines.append(
            f"- GPU {i}: {g.get('name')}, driver {g.get('driver_version')}; SM clock {g.get('clocks.sm')} "
            f"MHz before / {a.get('clocks.sm', '?')} after (max {g.get('clocks.max.sm')}), memory clock "
            f"{g.get('clocks.mem')} MHz, power limit {g.get('power.limit')} W, "
            f"{g.get('temperature.gpu')} °C before / {a.get('temperature.gpu', '?')} after"
        )
    if not before.get("gpus"):
        lines.append("- GPU clocks: not recorded (nvidia-smi absent or failed)")
    return lines
