"""The report's per-item sections, from the per-item view (``compare.per_item``) and the comparison's rows: answers
side by side, the items that changed most (with links to their records), and the metrics that could not be measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunebench.compare.per_item import Flip, MetricFlips, PerItem
from tunebench.compare.rows import INVALID, MetricComparison
from tunebench.core.markdown import table
from tunebench.core.numbers import fmt
from tunebench.reports.render_judge import SHOWN_CHARS

NO_ANSWERS = (
    "No answers were saved for this run: no judge ran and no probe set was evaluated, so there is nothing to show "
    "side by side (the report never generates at render time). Turn the judge on (`eval.judge.enabled=true`, "
    "prompt set `heldout`: the held-out test prompts) and run `tunebench run` on this folder again: the adapter and "
    "the finished evaluations are reused, only the judge runs."
)


def _cut(text: Any, limit: int = SHOWN_CHARS) -> str:
    text = " ".join(str(text or "").split())  # one line in a table cell
    return text if len(text) <= limit else text[:limit] + "…"


def unmeasured(r: MetricComparison) -> str | None:
    """Why a row could not be measured (an invalid judge metric, a side without a value), or None when it was."""
    if r.verdict == INVALID:
        return str(r.details.get("invalid_reason") or r.method.removeprefix("judge metric invalid: "))
    missing = [side for side, v in (("base", r.base), ("tuned", r.tuned)) if v is None]
    if missing:
        return f"no value on the {' and '.join(missing)} side ({r.method})"
    return None


def not_measured_table(rows: Sequence[MetricComparison]) -> str | None:
    """The metrics that could not be measured, each with its reason (they stay out of the headline table)."""
    body = [[f"`{r.metric}`", why] for r in rows if (why := unmeasured(r)) is not None]
    return table(body, ["Metric", "Why it was not measured"]) if body else None


def side_by_side_view(per: PerItem | None) -> dict[str, Any] | None:
    """The sample of answers: a table with the verdict, and where it came from; or the sentence saying none was
    saved. None without a per-item view (a render from a comparison alone)."""
    if per is None:
        return None
    if not per.side_by_side:
        return {"source": None, "table": None, "note": NO_ANSWERS}
    source = per.side_by_side_source or ""
    k = len(per.side_by_side)
    first = "the first prompt" if k == 1 else f"the first {k} prompts"
    if source.startswith("judge/"):
        note = f"{first.capitalize()} the judge compared (prompt set `{source[6:]}`), with its verdict (both orders)."
    else:
        note = (
            f"No judge ran: {first} of `{source}` (the probes' answers), with each side's probe checks as the "
            "verdict. Turn the judge on to compare answers on held-out prompts."
        )
    body = [
        [
            (f"[`{p.id}`]({p.link})" if p.link else f"`{p.id}`") + f": {_cut(p.prompt, 200)}",
            _cut(p.base),
            _cut(p.tuned),
            p.verdict,
        ]
        for p in per.side_by_side
    ]
    verdict = "Judge" if source.startswith("judge/") else "Checks"
    return {"source": source, "note": note, "table": table(body, ["Prompt", "Base", "Tuned", verdict])}


def _records(f: Flip) -> str:
    return f"[base]({f.base_link}) · [tuned]({f.tuned_link})"


def _pass(x: float) -> str:
    return "pass" if x >= 1 else "fail"


def _metric_flips(m: MetricFlips) -> dict[str, Any]:
    better = "higher" if m.higher_is_better else "lower"
    shown = m.better + m.worse
    if m.kind == "pass_fail":
        line = f"{m.n} {m.unit}: {m.n_better} flipped fail → pass, {m.n_worse} pass → fail."
        notes = any(f.note for f in shown)
        body = [
            [f"{_pass(f.base)} → {_pass(f.tuned)}", f"`{f.id}`", _records(f), *([_cut(f.note, 100)] if notes else [])]
            for f in shown
        ]
        headers = ["Flip", "Item", "Records", *(["Failed check"] if notes else [])]
    else:
        line = f"{m.n} {m.unit} ({better} is better): {m.n_better} better, {m.n_worse} worse; the largest changes."
        body = [
            [
                "better" if f in m.better else "worse",
                f"`{f.id}`",
                fmt(f.base),
                fmt(f.tuned),
                fmt(f.delta, signed=True),
                _records(f),
            ]
            for f in shown
        ]
        headers = ["Change", "Item", "Base", "Tuned", "Δ", "Records"]
    return {"metric": m.metric, "line": line, "table": table(body, headers) if body else None}


def flips_view(per: PerItem | None) -> list[dict[str, Any]] | None:
    """One entry per metric with per-item records: a count line and the table of its largest changes."""
    if per is None or not per.flips:
        return None
    return [_metric_flips(m) for m in per.flips]


def as_per_item(value: Any) -> PerItem | None:
    """The context's ``per_item``: a PerItem, its JSON form (a golden context), or absent."""
    if value is None or isinstance(value, PerItem):
        return value
    return PerItem.from_dict(value, "the report context's per_item")
