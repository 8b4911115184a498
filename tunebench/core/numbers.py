"""Numbers for people: the one formatter of messages, reports and tables (stdlib only, so light to import)."""

from __future__ import annotations

import math


def fmt(x: float | None, signed: bool = False, pattern: str | None = None, missing: str | None = "n/a") -> str | None:
    """Four significant digits (``n/a`` for missing): the one number style of messages and reports.

    Args:
        x: The number (None, NaN or infinite is missing).
        signed: A leading ``+`` on positive values.
        pattern: A ``str.format`` pattern (``"{:,}"``, ``"{:.2f} GiB"``) for a count, a size or a time, in place
            of the four significant digits.
        missing: What a missing value reads (None lets a two-column table leave its row out).
    """
    if x is None or not math.isfinite(x):
        return missing
    if pattern is not None:
        return pattern.format(x)
    x = x + 0.0  # -0.0 -> 0.0: no "-0" in reports
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def fmt_p(p: float | None) -> str:
    """A p-value, floored at <0.001."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_interval(low: float | None, high: float | None, signed: bool = True) -> str:
    """``[low, high]`` or ``n/a``."""
    if low is None or high is None:
        return "n/a"
    return f"[{fmt(low, signed)}, {fmt(high, signed)}]"
