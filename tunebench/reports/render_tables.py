"""The report's metric tables and its first lines (the release decision): cells formatted, tables through
``core.markdown``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tunebench.compare.comparison import Comparison
from tunebench.compare.rows import TOO_FEW, MetricComparison
from tunebench.core.markdown import table
from tunebench.core.numbers import fmt, fmt_interval, fmt_p
from tunebench.reports.more_items import more_items

_VERDICT = {"improved": "**improved**", "regressed": "**regressed**"}


def _delta(r: MetricComparison) -> str:
    rel = f" ({r.rel_delta * 100:+.1f}%)" if r.rel_delta is not None else ""
    return fmt(r.delta, signed=True) + rel


def _with_ci(value: float | None, ci: list[float] | None) -> str:
    return fmt(value) + (f" {fmt_interval(ci[0], ci[1], signed=False)}" if ci else "")


def _verdict(r: MetricComparison) -> str:
    return _VERDICT.get(r.verdict, r.verdict)


def _mde(r: MetricComparison) -> str:
    return "n/a" if r.mde is None else f"±{fmt(r.mde)}"


def _flagged_verdict(r: MetricComparison) -> str:
    """Verdict, or a flag where too few samples make any verdict noise (rows.MetricComparison.judged)."""
    return _verdict(r) if r.judged else f"{TOO_FEW} (n={r.n} < {r.min_n})"


def fold_unjudged(
    rows: Sequence[MetricComparison], label: Callable[[MetricComparison], str], what: str
) -> tuple[list[MetricComparison], str | None]:
    """Split breakdown rows into those judged (a table's rows) and one line for the rest (too few samples to judge:
    ``MetricComparison.judged``), which names each with its values and n instead of a table row of noise.

    Args:
        rows: Breakdown rows of one metric (per probe, per subject).
        label: A row's name in the line.
        what: What a row is, plural (``probes``, ``members``).
    """
    judged = [r for r in rows if r.judged]
    thin = [r for r in rows if not r.judged]
    if not thin:
        return judged, None
    named = ", ".join(f"{label(r)} {fmt(r.base)} → {fmt(r.tuned)} (n={r.n})" for r in thin)
    return judged, f"{len(thin)} {what} with fewer than {thin[0].min_n} {thin[0].unit}, not judged: {named}."


def _p(r: MetricComparison) -> str:
    """p, and for a breakdown row its Benjamini-Hochberg adjusted p (the one its verdict reads)."""
    return fmt_p(r.p_value) + (f" (BH {fmt_p(r.p_adjusted)})" if r.p_adjusted is not None else "")


def metric_table(
    rows: Sequence[MetricComparison],
    alpha: float,
    label=lambda r: f"`{r.metric}`",
    detailed: bool = True,
    verdict=_flagged_verdict,
) -> str:
    """Base, tuned, delta, interval, p, verdict, n and minimum detectable effect per row (plus CIs and method
    when detailed)."""
    level = f"{100 * (1 - alpha):g}% CI of Δ"
    if detailed:
        headers = ["Metric", "Base", "Tuned", "Δ", level, "p", "Verdict", "n", "MDE", "Method"]
        body = [
            [
                label(r),
                _with_ci(r.base, r.base_ci),
                _with_ci(r.tuned, r.tuned_ci),
                _delta(r),
                fmt_interval(r.ci_low, r.ci_high),
                _p(r),
                verdict(r),
                f"{r.n} {r.unit}",
                _mde(r),
                r.method,
            ]
            for r in rows
        ]
    else:
        headers = ["Metric", "Better", "Base", "Tuned", "Δ", level, "p", "Verdict", "n", "MDE"]
        body = [
            [
                label(r),
                "higher" if r.higher_is_better else "lower",
                fmt(r.base),
                fmt(r.tuned),
                _delta(r),
                fmt_interval(r.ci_low, r.ci_high),
                _p(r),
                verdict(r),
                f"{r.n} {r.unit}",
                _mde(r),
            ]
            for r in rows
        ]
    return table(body, headers)


def decision(
    gate: dict[str, Any] | None,
    comparison: Comparison | None = None,
    config: dict[str, Any] | None = None,
    data_report: dict[str, Any] | None = None,
) -> list[str]:
    """The report's first lines: ship, don't ship, or not enough evidence (and how many more items, from where).

    Args:
        gate: A GateVerdict as a dict, or None when no gate was evaluated.
        comparison, config, data_report: What ``more_items`` reads to name the setting that gives more items.

    Returns:
        Markdown lines (a bold verdict, then one bullet per failed or inconclusive rule).
    """
    if not gate:
        return ["**No release decision**: no gate was evaluated for this report; the tables below are evidence only."]
    status = gate.get("status")
    rows = gate.get("rows") or []
    if status == "invalid":
        return [f"**No release decision**: the gate's input is invalid ({gate.get('error')})."]
    if status == "pass":
        judged = [r for r in rows if r.get("status") == "pass"]
        return [f"**Ship.** Every release-gate rule passed on its confidence bound ({len(judged)} metrics judged)."]
    if status == "fail":
        failed = [r for r in rows if r.get("status") == "fail"]
        lines = [
            f"**Don't ship.** {len(failed)} release-gate rule{'s' if len(failed) != 1 else ''} failed: "
            "the interval of the change lies beyond the margin."
        ]
        lines += [
            f"- `{r.get('metric')}` ({r.get('rule')}): Δ {fmt(r.get('delta'), True)}, "
            f"CI {fmt_interval(r.get('ci_low'), r.get('ci_high'))}, {r.get('threshold')}"
            for r in failed
        ]
        return lines
    open_rows = [r for r in rows if r.get("status") == "inconclusive"]
    lines = [
        f"**Not enough evidence.** No release-gate rule failed, but {len(open_rows)} could not conclude "
        "(the interval straddles the margin):"
    ]
    for r in open_rows:
        need, n = r.get("items_needed"), r.get("n")
        more = (
            f"about {need:,} paired items needed (has {n:,}: {need - n:,} more)"
            if need is not None and n is not None
            else "no finite number of items at the observed change"
        )
        where = more_items(str(r.get("metric")), n, need, comparison, config, data_report) if need and n else ""
        more += f"; {where}" if where else ""
        lines.append(f"- `{r.get('metric')}` ({r.get('threshold')}): {more}")
    return lines
