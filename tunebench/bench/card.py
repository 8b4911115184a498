"""The card a benchmark runs on: its name, memory and compute capability, its datasheet bf16 peak, and the dense
bf16 matmul rate it actually reaches (the denominator of every MFU)."""

from __future__ import annotations

from typing import Any

# Dense bf16 tensor-core peaks from the vendor datasheets (TFLOP/s), matched by substring, most specific first.
DATASHEET_BF16_TFLOPS = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
    ("L4", 121.0),
]


def datasheet_tflops(device_name: str | None) -> float | None:
    """The datasheet dense bf16 peak of a card, or None for an unknown card."""
    for key, value in DATASHEET_BF16_TFLOPS:
        if device_name and key in device_name:
            return value
    return None


def measure_matmul_peak(n: int = 8192, iters: int = 50, repeats: int = 3) -> dict[str, Any]:
    """The card's achievable dense bf16 rate: ``repeats`` timed loops of ``iters`` n×n×n matmuls, best kept."""
    import torch  # heavy: torch, imported when needed

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):  # clocks up, cuBLAS heuristics chosen
        torch.mm(a, b, out=c)
    rates = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        end.record()
        end.synchronize()
        rates.append(2 * n**3 * iters / (start.elapsed_time(end) / 1e3) / 1e12)
    del a, b, c
    torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0)
    return {
        "method": f"torch.mm bf16 {n}x{n}x{n}, {repeats} loops of {iters}, best loop",
        "tflops_per_loop": [round(r, 1) for r in rates],
        "peak_tflops": round(max(rates), 1),
        "datasheet_tflops": datasheet_tflops(name),
    }


def cuda_facts() -> dict[str, Any]:
    """Card name, memory and compute capability (empty without CUDA)."""
    import torch  # heavy: torch, imported when needed

    if not torch.cuda.is_available():
        return {}
    p = torch.cuda.get_device_properties(0)
    return {
        "name": p.name,
        "memory_gib": round(p.total_memory / 2**30, 1),
        "capability": f"{p.major}.{p.minor}",
        "sms": p.multi_processor_count,
    }
