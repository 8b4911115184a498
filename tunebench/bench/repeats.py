"""Repeated measurement: rows run K times interleaved (A B A B ...), each claim stated as the median over repeats with
a bootstrap interval, and a verdict from the interval's conservative end. Pure functions over result rows (no torch),
so all of it is tested on CPU.

A ratio of two rates is taken per repeat (the two rows of one repeat ran back to back on one machine), then summarised
over repeats: absolute rates move between machines and minutes, paired ratios much less.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from typing import Any

BOOTSTRAP_DRAWS = 4000
LEVEL = 0.95


def interleave(jobs: list[Any], repeats: int) -> list[tuple[int, Any]]:
    """``(repeat, job)`` in the order A B A B ...: every job once per repeat, so drift over the call (clocks, heat,
    other load) spreads over all jobs instead of landing on whichever ran last."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: give at least 1")
    return [(k, job) for k in range(repeats) for job in jobs]


def repeat_of(row: dict[str, Any]) -> int:
    return int(row.get("repeat") or 0)


def cut_short(row: dict[str, Any], asked_steps: int | None) -> str | None:
    """Why an ``ok`` row may not feed a ratio or a target (None if it may): fewer measured steps than asked."""
    if row.get("status") != "ok":
        return None
    got = row.get("measured_steps")
    if asked_steps and got is not None and got < asked_steps:
        return f"cut short: {got} of {asked_steps} measured steps"
    return None


def mark_cut_short(rows: list[dict[str, Any]], asked_steps: Callable[[dict[str, Any]], int | None]) -> None:
    """Set ``cut_short`` (a reason) on every ok row that measured fewer steps than asked; clear it otherwise."""
    for r in rows:
        why = cut_short(r, asked_steps(r))
        if why:
            r["cut_short"] = why
        else:
            r.pop("cut_short", None)


def usable(row: dict[str, Any] | None) -> bool:
    """An ok row that ran what was asked: the only kind a ratio or a target may read."""
    return bool(row) and row.get("status") == "ok" and not row.get("cut_short")


def median_interval(values: list[float], seed: int = 0) -> dict[str, Any]:
    """Median, min, max and a percentile-bootstrap 95% interval of the median over repeats.

    With one value there is no interval (``ci`` None): a single run states no spread. With three, the interval of the
    median is close to [min, max], which is the honest width of three runs.
    """
    vals = sorted(float(v) for v in values)
    if not vals:
        return {"median": None, "min": None, "max": None, "ci": None, "repeats": 0}
    out = {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "ci": None, "repeats": len(vals)}
    if len(vals) >= 2:
        rng = random.Random(seed)
        meds = sorted(statistics.median(rng.choices(vals, k=len(vals))) for _ in range(BOOTSTRAP_DRAWS))
        tail = (1 - LEVEL) / 2
        out["ci"] = [meds[int(tail * (len(meds) - 1))], meds[int((1 - tail) * (len(meds) - 1))]]
    return out


def verdict(ci: list[float] | None, threshold: float, higher_is_better: bool) -> str:
    """``met`` only when the whole interval clears the threshold, ``not met`` when the whole interval misses it,
    ``inconclusive`` when it straddles (or there is no interval: one repeat)."""
    if ci is None:
        return "inconclusive"
    lo, hi = ci
    if higher_is_better:
        return "met" if lo >= threshold else "not met" if hi < threshold else "inconclusive"
    return "met" if hi <= threshold else "not met" if lo > threshold else "inconclusive"


def aggregate(t: dict[str, Any], values: list[float], repeats_asked: int, note: str = "") -> dict[str, Any]:
    """A target (``t``: name, shape, threshold, direction, where) stated over repeats: the median of ``values``,
    min–max, the bootstrap interval, the verdict from its conservative end, and the margin of that end."""
    s = median_interval(values)
    v = "not measured" if not values else verdict(s["ci"], t["threshold"], t["higher_is_better"])
    end = None if s["ci"] is None else (s["ci"][0] if t["higher_is_better"] else s["ci"][1])
    return dict(
        t,
        value=None if s["median"] is None else round(s["median"], 4),
        ci=None if s["ci"] is None else [round(x, 4) for x in s["ci"]],
        min=s["min"],
        max=s["max"],
        repeats=s["repeats"],
        repeats_asked=repeats_asked,
        values=[round(x, 4) for x in values],
        verdict=v,
        met={"met": True, "not met": False}.get(v),
        margin=None if end is None else round(end - t["threshold"], 4),
        margin_relative=None if end is None else round(end / t["threshold"] - 1, 4),
        note=note if not values else ("one repeat: no interval, no claim" if s["ci"] is None else ""),
    )


def aggregate_targets(
    rows: list[dict[str, Any]], per_repeat: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Each target over repeats: ``per_repeat`` computes the targets of one repeat's rows (one value each, its ratio
    paired within the repeat); each is then stated by ``aggregate``."""
    repeats = sorted({repeat_of(r) for r in rows}) or [0]
    per = [per_repeat([r for r in rows if repeat_of(r) == k]) for k in repeats]
    out = []
    for i, t in enumerate(per[0]):
        same = [p[i] for p in per if i < len(p) and p[i]["target"] == t["target"] and p[i]["shape"] == t["shape"]]
        values = [p["value"] for p in same if p["value"] is not None]
        out.append(aggregate(t, values, len(repeats), next((p["note"] for p in same if p.get("note")), "")))
    return out


def summarize_rows(
    rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], tuple], fields: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One line per ``key`` (a backend at a point, say): each field's median and min–max over the usable repeats,
    and how many rows were left out (failed or cut short)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for k, group in groups.items():
        ok = [r for r in group if usable(r)]
        line: dict[str, Any] = {
            "key": list(k),
            "repeats": len(ok),
            "left_out": len(group) - len(ok),
            "left_out_why": sorted({r.get("cut_short") or r.get("status", "?") for r in group if not usable(r)}),
        }
        for f in fields:
            s = median_interval([r[f] for r in ok if r.get(f) is not None])
            line[f] = {"median": s["median"], "min": s["min"], "max": s["max"]}
        out.append(line)
    return out


def ratio_summaries(ratios: list[dict[str, Any]], field: str = "real_tokens_per_s_ratio") -> list[dict[str, Any]]:
    """Per (shape, point, backend): the median of the paired per-repeat ratios, min–max, and the bootstrap interval
    over repeats. Only pairs of two usable rows with the same batches feed it (``speed_ratios`` marks the rest)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for q in ratios:
        groups.setdefault((q["shape"], q["point"], q["backend"], q["batch_size"], q["grad_accum"]), []).append(q)
    out = []
    for (shape, point, backend, bs, ga), qs in groups.items():
        fed = [q for q in qs if not q.get("excluded")]
        line = {
            "shape": shape,
            "point": point,
            "backend": backend,
            "batch_size": bs,
            "grad_accum": ga,
            "vs": "hf",
            "excluded": [q["excluded"] for q in qs if q.get("excluded")],
        }
        for f in (field, "peak_allocated_ratio"):
            s = median_interval([q[f] for q in fed if q.get(f) is not None])
            line[f] = s
        out.append(line)
    return out
