"""The speed benchmarks' arithmetic: MFU, step-time summaries, batch points, ratios against hf, targets and the
find-best choice. Pure functions over numbers and result rows (no torch), so all of it is tested on CPU."""

from __future__ import annotations

import argparse
from typing import Any

from tunebench.bench.repeats import aggregate, aggregate_targets, repeat_of, summarize_rows, usable
from tunebench.core.errors import BenchmarkError, did_you_mean

SEED_POINT = {"batch_size": 2, "grad_accum": 4, "max_length": 2048, "r": 16}
"""The seed notebook's settings: the point at which the Unsloth-vs-hf targets are judged."""

# The training targets: at the seed settings Unsloth >= 1.8x hf's real tokens/s with <= 0.55x its peak memory; the
# best settings reach >= 45% MFU.
SPEED_TARGETS = {"tokens_ratio": 1.8, "memory_ratio": 0.55, "mfu": 0.45}
EVAL_TARGETS = {"ppl_mfu": 0.45, "gen_tokens_per_s": 3000.0}


def mfu(params: int, tokens_per_s: float, peak_tflops: float, flops_per_param_token: float = 6.0) -> float | None:
    """Model FLOPs utilisation: ``flops_per_param_token * N * tokens/s`` over the card's peak.

    6·N per token is the usual training count (forward 2·N + backward 4·N; attention scores and
    recomputation are not counted); 2·N is a forward pass.
    """
    if not peak_tflops or tokens_per_s is None:
        return None
    return flops_per_param_token * params * tokens_per_s / (peak_tflops * 1e12)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    v = sorted(values)
    if not v:
        raise ValueError("percentile of an empty list")
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize_steps(marks: list[tuple[int, float, int, int]], warmup: int) -> dict[str, Any]:
    """Throughput and step-time spread over the optimizer steps after ``warmup``.

    Args:
        marks: (global_step, seconds, cumulative real tokens, cumulative input positions) at train begin
            (step 0) and after every optimizer step, taken after a CUDA synchronize.
        warmup: steps excluded from the measurement (compilation, allocator growth, autotuning).

    Raises:
        ValueError: fewer than one measured step after warm-up.
    """
    window = [m for m in marks if m[0] >= warmup]
    if len(window) < 2:
        raise ValueError(f"only {len(marks) - 1} optimizer steps ran; need more than the {warmup} warm-up steps")
    times = [b[1] - a[1] for a, b in zip(window, window[1:], strict=False)]
    seconds = window[-1][1] - window[0][1]
    tokens = window[-1][2] - window[0][2]
    positions = window[-1][3] - window[0][3]
    return {
        "measured_steps": len(times),
        "seconds": round(seconds, 4),
        "real_tokens": tokens,
        "input_positions": positions,
        "padding_fraction": round(1 - tokens / positions, 4) if positions else None,
        "real_tokens_per_s": round(tokens / seconds, 1),
        "positions_per_s": round(positions / seconds, 1),
        "real_tokens_per_step": round(tokens / len(times), 1),
        "step_s_median": round(percentile(times, 50), 4),
        "step_s_p10": round(percentile(times, 10), 4),
        "step_s_p90": round(percentile(times, 90), 4),
    }


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"2,8,16"`` -> [2, 8, 16]; an error names the flag."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: give integers separated by commas, e.g. 2,8,16") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: every value must be >= 1")
    return values


def parse_names(text: str, known: Any, flag: str) -> list[str]:
    """``"unsloth,hf"`` -> ["unsloth", "hf"], each checked against ``known`` (an error names the flag and a match)."""
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    for n in names:
        if n not in known:
            raise BenchmarkError(
                f"{flag}: unknown {n!r} (known: {', '.join(known)})." + did_you_mean(n, known, prefix=" did you mean ")
            )
    if not names:
        raise BenchmarkError(f"{flag} is empty; give one or more of {', '.join(known)}")
    return names


def points_of(batch_sizes: list[int], grad_accums: list[int]) -> list[tuple[int, int]]:
    """Pair batch sizes with accumulation steps: one accumulation for all, or one per batch size."""
    if len(grad_accums) == 1:
        return [(b, grad_accums[0]) for b in batch_sizes]
    if len(grad_accums) != len(batch_sizes):
        raise ValueError(
            f"--grad-accum has {len(grad_accums)} values for {len(batch_sizes)} batch sizes; "
            "give one value, or one per batch size"
        )
    return list(zip(batch_sizes, grad_accums, strict=True))


def speed_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every backend against hf at the same shape, point and repeat (the two rows ran back to back, same batches).

    A pair where either row was cut short, or whose rows did not train on the same tokens, is listed with
    ``excluded`` (the reason) and its ratio feeds no summary or target.
    """
    out = []
    ok = [r for r in rows if r.get("status") == "ok" and r.get("world_size", 1) == 1]
    for base in (r for r in ok if r["backend"] == "hf"):
        for r in ok:
            if r is base or (r["shape"], r["point"], repeat_of(r)) != (base["shape"], base["point"], repeat_of(base)):
                continue
            same = r["real_tokens"] == base["real_tokens"]
            excluded = (
                r.get("cut_short")
                or base.get("cut_short")
                or (None if same else "not the same batches (real token counts differ)")
            )
            out.append(
                {
                    "shape": r["shape"],
                    "point": r["point"],
                    "repeat": repeat_of(r),
                    "batch_size": r["batch_size"],
                    "grad_accum": r["grad_accum"],
                    "backend": r["backend"],
                    "vs": "hf",
                    "real_tokens_per_s_ratio": round(r["real_tokens_per_s"] / base["real_tokens_per_s"], 3),
                    "peak_allocated_ratio": _ratio(r.get("peak_allocated_gib"), base.get("peak_allocated_gib")),
                    "peak_reserved_ratio": _ratio(r.get("peak_reserved_gib"), base.get("peak_reserved_gib")),
                    "same_tokens": same,
                    "excluded": excluded,
                }
            )
    return out


def pair_problem(u: dict[str, Any] | None, h: dict[str, Any] | None) -> str:
    """Why an Unsloth row and its hf row cannot give a ratio ('' when they can)."""
    if not (u and h):
        return "needs ok unsloth and hf rows at the first point"
    if u.get("cut_short") or h.get("cut_short"):
        return u.get("cut_short") or h.get("cut_short")
    if u.get("real_tokens") != h.get("real_tokens"):
        return "not the same batches (real token counts differ)"
    return ""


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _target(
    name: str, shape: str, value: float | None, threshold: float, higher_is_better: bool, where: str, missing: str = ""
) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
    return {
        "target": name,
        "shape": shape,
        "threshold": threshold,
        "higher_is_better": higher_is_better,
        "value": None if value is None else round(value, 4),
        "met": met,
        "where": where,
        "margin": None if value is None else round(value - threshold, 4),
        "margin_relative": None if value is None else round(value / threshold - 1, 4),
        "note": missing if value is None else "",
    }


def speed_targets(rows: list[dict[str, Any]], shapes: list[str]) -> list[dict[str, Any]]:
    """The issue's targets per shape: each Unsloth row vs hf at the first point, and the best MFU of any row."""
    out = []
    for shape in shapes:
        ok = [r for r in rows if usable(r) and r["shape"] == shape]
        first = {
            r["backend"]: r
            for r in rows
            if r.get("status") == "ok" and r["shape"] == shape and r["point"] == 0 and r.get("world_size", 1) == 1
        }
        h = first.get("hf")
        for name in [b for b in first if b.startswith("unsloth")] or ["unsloth"]:
            u = first.get(name)
            why = pair_problem(u, h)
            pair = not why
            out.append(
                _target(
                    f"{name} real tokens/s ÷ hf >= {SPEED_TARGETS['tokens_ratio']}",
                    shape,
                    u["real_tokens_per_s"] / h["real_tokens_per_s"] if pair else None,
                    SPEED_TARGETS["tokens_ratio"],
                    True,
                    "first point",
                    why,
                )
            )
            out.append(
                _target(
                    f"{name} peak allocated ÷ hf <= {SPEED_TARGETS['memory_ratio']}",
                    shape,
                    _ratio(u.get("peak_allocated_gib"), h.get("peak_allocated_gib")) if pair else None,
                    SPEED_TARGETS["memory_ratio"],
                    False,
                    "first point",
                    why,
                )
            )
        best = max((r for r in ok if r.get("mfu") is not None), key=lambda r: r["mfu"], default=None)
        out.append(
            _target(
                f"MFU (6·N·real tokens/s ÷ measured peak) >= {SPEED_TARGETS['mfu']:.0%}",
                shape,
                best["mfu"] if best else None,
                SPEED_TARGETS["mfu"],
                True,
                f"{best['backend']} {best['batch_size']}x{best['grad_accum']}" if best else "best row",
                "no ok row",
            )
        )
    return out


def row_key(r: dict[str, Any]) -> tuple:
    """What makes rows repeats of one measurement: shape, backend, point, micro-batch, layout, checkpointing."""
    return (
        r.get("shape"),
        r.get("backend"),
        r.get("point"),
        r.get("batch_size"),
        r.get("grad_accum"),
        r.get("layout", "padded"),
        r.get("gradient_checkpointing", True),
        bool(r.get("find_best")),
        r.get("world_size", 1),
    )


def repeated_speed_targets(rows: list[dict[str, Any]], shapes: list[str]) -> list[dict[str, Any]]:
    """The targets over repeats: the ratios paired within each repeat, then stated as median [interval]; the MFU
    target from the row whose median MFU is highest, over that row's own repeats."""
    out = [t for t in aggregate_targets(rows, lambda rs: speed_targets(rs, shapes)) if "MFU" not in t["target"]]
    repeats = len({repeat_of(r) for r in rows}) or 1
    for shape in shapes:
        lines = [
            x
            for x in summarize_rows([r for r in rows if r.get("shape") == shape], row_key, ("mfu",))
            if x["mfu"]["median"] is not None
        ]
        best = max(lines, key=lambda x: x["mfu"]["median"], default=None)
        values = (
            []
            if best is None
            else [r["mfu"] for r in rows if usable(r) and row_key(r) == tuple(best["key"]) and r.get("mfu") is not None]
        )
        where = "best row" if best is None else f"{best['key'][1]} {best['key'][3]}x{best['key'][4]}"
        t = {
            "target": f"MFU (6·N·real tokens/s ÷ measured peak) >= {SPEED_TARGETS['mfu']:.0%}",
            "shape": shape,
            "threshold": SPEED_TARGETS["mfu"],
            "higher_is_better": True,
            "where": where,
        }
        out.append(aggregate(t, values, repeats, "no ok row"))
    return out


def find_best(rows: list[dict[str, Any]], memory_limit_gib: float | None) -> dict[str, Any] | None:
    """The fastest measured row (real tokens/s) whose peak reserved memory fits the limit; None if none does.

    Reserved, not allocated, memory is what the card must hold: the caching allocator keeps what it reserved.
    """
    fits = [
        r
        for r in rows
        if r.get("status") == "ok"
        and r.get("real_tokens_per_s")
        and (memory_limit_gib is None or (r.get("peak_reserved_gib") or 0) <= memory_limit_gib)
    ]
    return max(fits, key=lambda r: r["real_tokens_per_s"], default=None)


def config_line(row: dict[str, Any], preset: str = "<preset>") -> str:
    """The `tunebench run` overrides that train at a find-best row's settings."""
    layout = row.get("layout", "padded")
    family = row["backend"].split("-")[0]
    parts = [
        f"tunebench run {preset}",
        f"train.backend={family}",
        f"train.batch_size={row['batch_size']}",
        f"train.grad_accum={row['grad_accum']}",
        f"train.padding_free={str(layout == 'padfree').lower()}",
        f"train.packing={str(layout == 'packed').lower()}",
        f"train.gradient_checkpointing={str(row.get('gradient_checkpointing', True)).lower()}",
    ]
    if family == "unsloth" and layout == "padded":  # rows that say nothing ran before the count was kept: compiled
        parts.append(f"train.compile_blocks={str(bool(row.get('compiled_blocks', True))).lower()}")
    if row.get("load_in_4bit") is not None:  # the config reads on/off as the Literal, not a YAML boolean
        parts.append(f"model.load_in_4bit={'on' if row['load_in_4bit'] else 'off'}")
    return " ".join(parts)
