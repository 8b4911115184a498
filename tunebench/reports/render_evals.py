"""The report's evaluation sections: lm-eval tasks, probe sets, the Fibonacci transcripts side by side, exported
artifacts against the adapter, served endpoints against in-process llama.cpp."""

from __future__ import annotations

import html
from typing import Any

from tunebench.compare.comparison import Comparison
from tunebench.compare.rows import MetricComparison
from tunebench.core.markdown import table
from tunebench.core.numbers import fmt, fmt_interval, fmt_p
from tunebench.reports.render_tables import _flagged_verdict, _verdict, fold_unjudged, metric_table


def data_source(src: Any) -> str | None:
    """Where a task's documents came from, in words (hub, or packaged with package and version)."""
    if not isinstance(src, dict) or not src.get("source"):
        return None
    if src["source"] != "packaged":
        return str(src["source"])
    where = (
        f" ({src['dataset']} {src.get('split', '')}, {src.get('documents', '?')} documents)"
        if src.get("dataset")
        else ""
    )
    return f"packaged, {src.get('package')} {src.get('version')}{where}"


def _lm_eval_sections(
    rows: list[MetricComparison], alpha: float, inputs: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    tasks: dict[str, list[MetricComparison]] = {}
    for r in rows:  # lm_eval/<task>/<metric>
        parts = r.metric.split("/")
        tasks.setdefault(parts[1] if len(parts) > 2 else r.metric, []).append(r)
    out = []
    for t, rs in tasks.items():
        label = lambda r: f"`{'/'.join(r.metric.split('/')[2:])}`"  # noqa: E731
        shown, folded = fold_unjudged(rs, label, "members")  # a group's own rows are always judged
        out.append(
            {
                "task": t,
                "table": metric_table(shown, alpha, label=label),
                "folded": folded,
                "source": data_source(((inputs or {}).get(f"lm_eval/{t}") or {}).get("data_source")),
                "adjusted": sum(r.p_adjusted is not None for r in rs),
            }
        )
    return out


def _probe_sections(rows: list[MetricComparison], alpha: float) -> list[dict[str, Any]]:
    """probes/<set>/<sampling>/<leaf> (overall) and probes/<set>/<sampling>/<probe>/<leaf> (per probe)."""
    sets: dict[str, dict[str, dict[str, list]]] = {}
    for r in rows:
        parts = r.metric.split("/")
        if len(parts) < 4:
            parts = parts + ["-"] * (4 - len(parts))
        slot = sets.setdefault(parts[1], {}).setdefault(parts[2], {"overall": [], "probes": []})
        slot["overall" if len(parts) == 4 else "probes"].append(r)
    out = []
    for name, samplings in sets.items():
        items = []
        for sampling, slot in samplings.items():
            label = lambda r: f"`{'/'.join(r.metric.split('/')[3:-1])}`"  # noqa: E731
            judged, folded = fold_unjudged(slot["probes"], label, "probes")
            items.append(
                {
                    "sampling": sampling,
                    "overall": metric_table(slot["overall"], alpha, label=lambda r: f"`{r.metric.split('/')[-1]}`")
                    if slot["overall"]
                    else None,
                    "probes": metric_table(judged, alpha, label=label, verdict=_flagged_verdict) if judged else None,
                    "folded": folded,
                }
            )
        out.append({"name": name, "samplings": items})
    return out


def _pre(text: Any) -> str:
    return f"<pre>{html.escape(str(text if text is not None else ''))}</pre>"


def _prompt_id(t: dict[str, Any]) -> str:
    """A transcript's prompt: ``prompt_id``, else its item id without the ``#<sample>`` suffix."""
    if t.get("prompt_id") is not None:
        return str(t["prompt_id"])
    return str(t.get("id", "")).rsplit("#", 1)[0]


def _status(t: dict[str, Any] | None) -> str:
    if t is None:
        return "(no transcript)"
    if t.get("passed"):
        return "✅ passed"
    # evals.probes records every failing check's reason in "failed"; older records hold one "failed_check".
    failed = t.get("failed_check") or t.get("failed")
    if isinstance(failed, (list, tuple)):
        failed = "; ".join(str(f) for f in failed)
    return "❌ failed" + (f": {html.escape(str(failed))}" if failed else "")


def fibonacci_transcripts(
    base_artifacts: dict[str, Any], tuned_artifacts: dict[str, Any], needle: str = "fibonacci"
) -> list[dict[str, Any]]:
    """Side-by-side HTML blocks of the transcripts whose probe or prompt id contains ``needle``.

    Transcripts are ``artifacts["probe_transcripts"][set][sampling]`` lists of
    ``{"id": "<prompt>#<k>" or "prompt_id", "probe", "prompt", "output", "passed", "failed"/"failed_check"}``.
    """
    b_all = (base_artifacts or {}).get("probe_transcripts") or {}
    t_all = (tuned_artifacts or {}).get("probe_transcripts") or {}

    def pick(ts: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        return [t for t in ts or [] if needle in f"{t.get('probe', '')} {_prompt_id(t)}".lower()]

    out = []
    for set_name in list(dict.fromkeys([*b_all, *t_all])):
        b_set, t_set = b_all.get(set_name) or {}, t_all.get(set_name) or {}
        for sampling in list(dict.fromkeys([*b_set, *t_set])):
            b_ts, t_ts = pick(b_set.get(sampling)), pick(t_set.get(sampling))
            if not b_ts and not t_ts:
                continue
            # Pair the k-th sample of a prompt on each side (same seeds on both sides).
            blocks = []
            for pid in list(dict.fromkeys(_prompt_id(t) for t in [*b_ts, *t_ts])):
                bs = [t for t in b_ts if _prompt_id(t) == pid]
                ts = [t for t in t_ts if _prompt_id(t) == pid]
                prompt = (bs or ts)[0].get("prompt", "")
                rows = [
                    f'<tr><th colspan="2">{html.escape(pid)}</th></tr>',
                    f'<tr><td colspan="2">{_pre(prompt)}</td></tr>',
                    "<tr><th>base</th><th>tuned</th></tr>",
                ]
                for k in range(max(len(bs), len(ts))):
                    b = bs[k] if k < len(bs) else None
                    t = ts[k] if k < len(ts) else None
                    rows.append(f"<tr><td>{_status(b)}</td><td>{_status(t)}</td></tr>")
                    rows.append(
                        f"<tr><td>{_pre(b.get('output') if b else '')}</td>"
                        f"<td>{_pre(t.get('output') if t else '')}</td></tr>"
                    )
                blocks.append("<table>\n" + "\n".join(rows) + "\n</table>")
            out.append({"set": set_name, "sampling": sampling, "html": "\n\n".join(blocks)})
    return out


def _rel(x: float | None, ref: float | None) -> str:
    return str(fmt(None if x is None or not ref else x / abs(ref) * 100, pattern="{:+.2f}%", missing="–"))


def served_view(parities: list[Any]) -> list[dict[str, Any]]:
    """Served = evaluated: each served endpoint against in-process llama.cpp on the same file (a line of identical
    answers per sampling, and the paired table of Δ = served − in-process)."""
    out = []
    for p in parities:
        same = "; ".join(f"{s}: {e} of {t} answers identical" for s, (e, t) in p.identical.items()) or "no answers"
        line = f"**{p.served}** against **{p.artifact}** (in-process llama.cpp on the same file `{p.gguf}`): {same}"
        if p.comparison is None:
            out.append({"line": f"{line}; metrics not comparable ({p.why})", "table": None})
            continue
        level = f"{100 * (1 - p.comparison.alpha):g}%"
        body = [
            [
                f"`{r.metric}`",
                r.base,
                r.tuned,
                f"{fmt(r.delta, True)} {fmt_interval(r.ci_low, r.ci_high)}, {_verdict(r)}",
            ]
            for r in p.comparison.headline_rows()
        ]
        out.append(
            {
                "line": line,
                "table": table(body, ["Metric", p.artifact, p.served, f"Δ served − in-process ({level} CI)"])
                if body
                else None,
            }
        )
    return out


def export_view(comparison: Comparison, artifacts: dict[str, Comparison]) -> dict[str, Any] | None:
    """The export section: base, adapter and each artifact side by side, Δ and intervals paired against the adapter.

    Args:
        comparison: base vs adapter.
        artifacts: type -> adapter vs that artifact (``compare_artifacts``).

    Returns:
        ``{"lines": [...], "table": str, "level": str}``, or None without artifacts.
    """
    if not artifacts:
        return None
    level = f"{100 * (1 - comparison.alpha):g}%"
    main = {r.metric: r for r in comparison.rows}
    first = next(iter(artifacts.values()))
    metrics = [r.metric for r in first.headline_rows()]
    lines = []
    for name, comp in artifacts.items():
        for r in comp.rows:
            if r.group == "perplexity" and r.headline:
                better = "lower" if not r.higher_is_better else "higher"
                lines.append(
                    f"**{name}** changes `{r.metric}` by {_rel(r.delta, r.base)} "
                    f"[{_rel(r.ci_low, r.base)}, {_rel(r.ci_high, r.base)}] against the adapter "
                    f"(Δ {fmt(r.delta, True)}, p={fmt_p(r.p_value)}, n={r.n} {r.unit}; {better} is better; "
                    f"{r.verdict})"
                )
    headers = ["Metric", "Base", "Adapter"]
    for name in artifacts:
        headers += [name, f"Δ {name} vs adapter ({level} CI)"]
    body = []
    for m in metrics:
        rows = {name: next((r for r in comp.rows if r.metric == m), None) for name, comp in artifacts.items()}
        ref = next((r for r in rows.values() if r is not None), None)
        line = [f"`{m}`", main[m].base if m in main else None, ref.base if ref else None]
        for r in rows.values():
            line += (
                [None, None]
                if r is None
                else [
                    r.tuned,
                    f"{fmt(r.delta, True)} ({_rel(r.delta, r.base)}) {fmt_interval(r.ci_low, r.ci_high)}, "
                    f"{_verdict(r)}",
                ]
            )
        body.append(line)
    return {"lines": lines, "table": table(body, headers), "level": level}
