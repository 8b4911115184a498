"""The report's "Conversational quality (judged)" section, built from the judge's comparison rows.

Kept beside ``render.py`` (which calls ``judge_view``) so the judge's tables have one home; Markdown through
``core.markdown`` as everywhere.
"""

from __future__ import annotations

from typing import Any

from tunebench.compare.rows import MetricComparison
from tunebench.core.markdown import table
from tunebench.core.numbers import fmt, fmt_interval, fmt_p

SHOWN_CHARS = 300
"""Answer and judgment excerpts in the disagreement examples are cut to this many characters."""


def _pct(x: Any) -> str:
    return str(fmt(None if x is None else 100 * float(x), pattern="{:.0f}%"))


def _cut(text: Any) -> str:
    text = str(text or "")
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _row(r: MetricComparison, label: str) -> list[Any]:
    d = r.details
    lc = d.get("lc_ci") or [None, None]
    raw, raw_ci = (d["raw_win_rate"], d.get("raw_ci")) if "raw_win_rate" in d else (r.tuned, r.tuned_ci)
    prompts = d.get("wins", 0) + d.get("ties", 0) + d.get("losses", 0)
    return [
        label,
        f"{d.get('wins', 0)} / {d.get('ties', 0)} / {d.get('losses', 0)}",
        f"{fmt(raw)} {fmt_interval(*(raw_ci or [None, None]), signed=False)} (p {fmt_p(d.get('raw_p_value'))})",
        f"{fmt(d.get('lc_win_rate'))} {fmt_interval(lc[0], lc[1], signed=False)} (p {fmt_p(d.get('lc_p_value'))})",
        "n/a" if r.mde is None else f"±{fmt(r.mde)}",
        f"{prompts} ({d.get('clusters', r.n)} questions)",
        r.verdict + (" (length explains the raw preference)" if d.get("explained_by_length") else ""),
    ]


def _set_lines(r: MetricComparison) -> list[str]:
    d = r.details
    lines = []
    if d.get("judge_note"):
        lines.append(f"**Mechanism check, not a quality measure:** {d['judge_note']}.")
    if not d.get("valid", True):
        lines.append(f"**Invalid**, so a gate rule on it is inconclusive: {d.get('invalid_reason')}.")
    san = d.get("sanity") or {}
    tokens = d.get("mean_tokens") or {}
    if d.get("explained_by_length"):
        lines.append(
            f"**Length explains the preference:** the raw win rate {fmt(d.get('raw_win_rate'))} differs from 0.5 "
            f"(p {fmt_p(d.get('raw_p_value'))}), the length-controlled rate {fmt(d.get('lc_win_rate'))} does not "
            f"(p {fmt_p(d.get('lc_p_value'))}): the judge prefers the longer answer (slope {fmt(d.get('lc_slope'))} "
            "log-odds per standardized length difference), and the verdict and the gate read the controlled rate."
        )
    lines += [
        f"Position consistency (both orders agree): {_pct(d.get('consistency'))}; win rate with base shown first "
        f"{fmt(d.get('win_rate_base_first'))}, with tuned shown first {fmt(d.get('win_rate_tuned_first'))}.",
        f"Judgments without a verdict: {d.get('unparsed_judgments', 0)} of {d.get('judgments', 0)} "
        f"({_pct(d.get('parse_failure_share'))}); their prompts are left out, never counted as ties.",
        f"Judge sanity: {san.get('right', 0)} of {san.get('n', 0)} planted pairs right ({_pct(san.get('share'))}).",
        f"Mean answer length: base {fmt(tokens.get('base'))}, tuned {fmt(tokens.get('tuned'))} tokens.",
    ]
    return lines


def _gate_line(metric: str, gate: dict[str, Any] | None) -> str | None:
    """Whether the release gate read this metric (a reader must not take a shown number for a gated one)."""
    if gate is None:
        return None
    rows = [r for r in gate.get("rows", []) if str(r.get("metric", "")).startswith(metric)]
    if not rows:
        return f"The release gate has no rule on `{metric}` ({gate.get('rules_source') or 'inline rules'})."
    return "; ".join(f"Gate rule '{r['rule']}': **{r['status']}**" for r in rows) + "."


def judge_view(
    rows: list[MetricComparison], artifacts: dict[str, Any] | None, gate: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Per prompt set: the headline table, per-category rows, notes and a few order disagreements; None without
    judge rows."""
    heads = [r for r in rows if r.metric.count("/") == 2]
    if not heads:
        return None
    headers = [
        "Prompts",
        "Win / tie / loss",
        "Win rate, raw (95% CI)",
        "Length-controlled (95% CI), gated",
        "MDE",
        "n",
        "Verdict",
    ]
    shown = (artifacts or {}).get("disagreements") or {}
    sets = []
    for h in heads:
        name = h.metric.split("/")[1]
        cats = [r for r in rows if r.metric.startswith(f"judge/{name}/") and r.metric.count("/") == 3]
        body = [_row(h, f"`{h.metric}`")] + [_row(r, r.metric.split("/")[2]) for r in cats]
        examples = [
            {
                "id": e["id"],
                "question": _cut(e["question"]),
                "base": _cut(e["base_answer"]),
                "tuned": _cut(e["tuned_answer"]),
                "first": e["verdict_base_first"],
                "second": e["verdict_tuned_first"],
            }
            for e in shown.get(name, [])
        ]
        lines = _set_lines(h) + [x for x in [_gate_line(h.metric, gate)] if x]
        sets.append({"name": name, "table": table(body, headers), "lines": lines, "examples": examples})
    return {"sets": sets}
