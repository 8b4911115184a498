"""Markdown report of a run: one Jinja template fed by tables built here (the only Markdown formatter).

``render_report(comparison, context)`` turns a Comparison plus optional run facts (manifest, data report,
artifacts, environment, gate verdict) into Markdown. Tables go through ``tabulate(tablefmt="github")``;
the output depends only on its inputs, so a golden file can pin it.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import yaml

from tunebench.core.io import package_path, read_json
from tunebench.core.markdown import kv_table, table
from tunebench.reports.compare import (
    FEW_SAMPLES,
    TOO_FEW,
    Comparison,
    Leaderboard,
    MetricComparison,
    fmt,
    fmt_interval,
    fmt_p,
    load_judge_results,
    load_run_results,
    run_settings,
)
from tunebench.reports.more_items import get_path, more_items
from tunebench.reports.render_judge import judge_view

TEMPLATES = package_path("reports", "templates")
TEMPLATE = "report.md.j2"
_VERDICT = {"improved": "**improved**", "regressed": "**regressed**"}


# ----------------------------------------------------------------------------- cells and tables


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
    """Verdict, or a flag where too few samples make any verdict noise (compare.MetricComparison.judged)."""
    return _verdict(r) if r.judged else f"{TOO_FEW} (n={r.n} < {FEW_SAMPLES})"


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


# ----------------------------------------------------------------------------- sections


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
    return [
        {
            "task": t,
            "table": metric_table(rs, alpha, label=lambda r: f"`{'/'.join(r.metric.split('/')[2:])}`"),
            "source": data_source(((inputs or {}).get(f"lm_eval/{t}") or {}).get("data_source")),
            "adjusted": sum(r.p_adjusted is not None for r in rs),
        }
        for t, rs in tasks.items()
    ]


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
            items.append(
                {
                    "sampling": sampling,
                    "overall": metric_table(slot["overall"], alpha, label=lambda r: f"`{r.metric.split('/')[-1]}`")
                    if slot["overall"]
                    else None,
                    "probes": metric_table(
                        slot["probes"],
                        alpha,
                        label=lambda r: f"`{'/'.join(r.metric.split('/')[3:-1])}`",
                        verdict=_flagged_verdict,
                    )
                    if slot["probes"]
                    else None,
                    "few": sum(r.n < FEW_SAMPLES for r in slot["probes"]),
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


def _num(x: Any, pattern: str = "{:,}") -> str | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return pattern.format(x)


def _utc(ts: Any) -> str | None:
    """A Unix time as an ISO UTC timestamp (manifests store seconds since the epoch)."""

    if not isinstance(ts, (int, float)):
        return ts
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _peak_memory(mem: dict[str, Any]) -> str:
    """The GPU allocator's peaks; on CPU there is none to read, only the process's peak resident memory."""
    if mem.get("kind") != "cpu_rss":
        return (
            f"{_num(mem.get('allocated_gib'), '{:.2f}')} GiB allocated, "
            f"{_num(mem.get('reserved_gib'), '{:.2f}')} GiB reserved ({mem.get('kind')})"
        )
    rss = _num(mem.get("rss_gib"), "{:.2f}")
    return "not measured (CPU)" + (f"; peak resident memory of the process {rss} GiB" if rss else "")


def training_summary(m: dict[str, Any]) -> str | None:
    """Key facts of the training manifest as a two-column table."""
    cfg = m.get("config") or {}
    lora, train = cfg.get("lora") or {}, cfg.get("train") or {}
    backend = m.get("backend") or {}
    mem = m.get("peak_memory") or {}
    losses, evals = m.get("loss_history") or [], m.get("eval_history") or []
    batch = (
        f"{train['batch_size']} × {train['grad_accum']} accumulation"
        if "batch_size" in train and "grad_accum" in train
        else None
    )
    memory = _peak_memory(mem) if mem else None
    params = None
    if m.get("trainable_params") is not None:
        params = (
            f"{_num(m.get('trainable_params'))} of {_num(m.get('total_params'))} "
            f"({_num(m.get('trainable_percent'), '{:.3f}')}%)"
        )
    lora_text = (
        f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
        f"rsLoRA={lora.get('use_rslora')}, targets: {', '.join(lora.get('target_modules') or [])}"
        if lora
        else None
    )
    return kv_table(
        [
            ("Base model", get_path(m, "model", "ref")),
            ("Model identity", get_path(m, "model", "identity")),
            ("Chat template", get_path(m, "template", "name")),
            ("Backend", f"{backend.get('name')} ({backend.get('reason')})" if backend else None),
            ("LoRA", lora_text),
            (
                "Learning rate",
                f"{train.get('lr')} ({train.get('scheduler')}, {train.get('warmup_steps')} warm-up steps)"
                if "lr" in train
                else None,
            ),
            ("Batch", batch),
            ("Optimizer", train.get("optimizer")),
            ("Seed", train.get("seed")),
            ("Steps", m.get("steps")),
            ("Tokens seen", _num(m.get("tokens_seen"))),
            ("Wall time", _num(m.get("wall_time_s"), "{:.1f} s")),
            ("Throughput", _num(m.get("tokens_per_s"), "{:.1f} tokens/s")),
            ("Peak memory", memory),
            ("Trainable parameters", params),
            ("Final training loss", _num(losses[-1].get("loss"), "{:.4f}") if losses else None),
            ("Base validation loss (step 0)", _num(m.get("base_eval_loss"), "{:.4f}")),
            ("Final validation loss", _num(evals[-1].get("eval_loss"), "{:.4f}") if evals else None),
            ("Data fingerprint", get_path(m, "data", "fingerprint")),
            ("Git commit", m.get("git_commit")),
            ("Source fingerprint", get_path(m, "versions", "tunebench_source")),
            ("Created", _utc(m.get("created"))),
        ],
        headers=("Training", ""),
    )


def data_summary(d: dict[str, Any]) -> dict[str, Any]:
    """Overview, per-split and dropped-record tables of the data report."""
    overview = kv_table(
        [
            ("Source", d.get("source")),
            ("Records read", _num(d.get("records"))),
            ("Clean conversations", _num(d.get("clean"))),
            ("Chat template", get_path(d, "template", "name")),
            ("Fingerprint", d.get("fingerprint")),
        ],
        headers=("Data", ""),
    )
    total = lambda v: v.get("total") if isinstance(v, dict) else v  # noqa: E731
    splits = [
        [
            name,
            s.get("conversations"),
            _num(total(s.get("tokens"))),
            _num(total(s.get("assistant_tokens"))),
            s.get("fingerprint"),
        ]
        for name, s in (d.get("splits") or {}).items()
    ]
    dropped = [[reason, n] for reason, n in (d.get("dropped") or {}).items()]
    return {
        "overview": overview,
        "splits": table(splits, ["Split", "Conversations", "Tokens", "Assistant tokens", "Fingerprint"])
        if splits
        else None,
        "dropped": table(dropped, ["Dropped because", "Records"]) if dropped else None,
        "warnings": [str(w) for w in d.get("warnings") or []],
    }


def contamination_table(artifacts: Sequence[dict[str, Any] | None]) -> str | None:
    """Train/eval n-gram overlap per evaluation set (the first artifacts holding it win).

    Accepts ``evals.contamination`` output (``{"n", ..., "sets": {name: {"checked", "contaminated", "share",
    "worst": [{"id", "fraction", ...}]}}}``) or a plain ``{name: {"n", "overlapping", "share", "worst"}}``.
    """
    cont = next((a["contamination"] for a in artifacts if a and a.get("contamination")), None)
    if not isinstance(cont, dict):
        return None
    sets = cont["sets"] if isinstance(cont.get("sets"), dict) else cont
    gram = f"{cont['n']}-grams" if isinstance(cont.get("n"), int) else "n-grams"

    def worst(ws: Any) -> str:
        # an item's own share of n-grams found in training: "2 of 45", not a rounded "0%" beside a 4.44% share
        shown = []
        for w in (ws or [])[:3]:
            if isinstance(w, dict):
                share, matched, total = w.get("fraction", w.get("share")), w.get("matched"), w.get("ngrams")
                text = str(w.get("id", "?"))
                if isinstance(matched, int) and isinstance(total, int):
                    text += f" ({matched} of its {total} {gram})"
                elif isinstance(share, (int, float)):
                    text += f" ({share * 100:.2g}% of its {gram})"
            else:
                text = str(w)
            shown.append(text if len(text) <= 60 else text[:57] + "...")
        return ", ".join(shown)

    rows = []
    for name, c in sets.items():
        if not isinstance(c, dict):
            continue
        share = c.get("share")
        rows.append(
            [
                name,
                c.get("checked", c.get("n", c.get("items"))),
                c.get("contaminated", c.get("overlapping")),
                f"{share * 100:.2f}%" if isinstance(share, (int, float)) else None,
                worst(c.get("worst")),
            ]
        )
    return (
        table(
            rows,
            [
                "Evaluation set",
                "Items checked",
                "Items overlapping with training",
                "Share of items",
                "Most overlapping items",
            ],
        )
        if rows
        else None
    )


def gate_table(gate: dict[str, Any]) -> str | None:
    rows = [
        [
            r.get("rule"),
            f"`{r.get('metric')}`",
            r.get("base"),
            r.get("tuned"),
            fmt(r.get("delta"), True),
            fmt_interval(r.get("ci_low"), r.get("ci_high")),
            r.get("threshold"),
            r.get("status"),
            r.get("items_needed") if r.get("items_needed") is not None else "",
            r.get("reason"),
        ]
        for r in gate.get("rows") or []
    ]
    return (
        table(
            rows, ["Rule", "Metric", "Base", "Tuned", "Δ", "CI of Δ", "Threshold", "Status", "Items needed", "Reason"]
        )
        if rows
        else None
    )


def _rel(x: float | None, ref: float | None) -> str:
    return "–" if x is None or not ref else f"{x / abs(ref) * 100:+.2f}%"


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


def _flat(d: dict[str, Any] | None) -> list[tuple[str, Any]]:
    return [(str(k), v) for k, v in (d or {}).items()]


def _stage_rows(times: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """One row per pipeline stage with its wall time (timings.json), then their sum."""
    stages = (times or {}).get("stages") or {}
    rows = [(f"wall time: {name.replace('_', ' ')}", f"{sec:.1f} s") for name, sec in stages.items()]
    return rows + ([("wall time: all stages", f"{sum(stages.values()):.1f} s")] if stages else [])


def environment_tables(
    evaluation: dict[str, Any] | None, training: dict[str, Any] | None, stage_times: dict[str, Any] | None = None
) -> tuple[str | None, str | None]:
    """The evaluation's environment (with stage times), then only what training ran with differently.

    Both record mostly the same versions; printing both tables in full printed the environment twice.
    """
    evaluation = evaluation or {}
    differs = [(k, v) for k, v in _flat(training) if v is not None and evaluation.get(k) != v]
    env = kv_table(_flat(evaluation) + _stage_rows(stage_times), headers=("Environment", ""))
    if not evaluation:  # no evaluation environment: the training one is the only one there is
        return env, kv_table(_flat(training), headers=("Training environment", ""))
    return env, kv_table(differs, headers=("Training ran with (where it differs)", ""))


def build_view(comparison: Comparison, context: dict[str, Any]) -> dict[str, Any]:
    """Everything the template prints, already formatted."""
    c, ctx = comparison, context
    groups = {"perplexity", "lm_eval", "probes", "judge"}
    manifest, data_report, gate = ctx.get("manifest"), ctx.get("data_report"), ctx.get("gate")
    b_art, t_art = ctx.get("base_artifacts") or {}, ctx.get("tuned_artifacts") or {}
    config = ctx.get("config") or (manifest or {}).get("config")
    environment, versions = environment_tables(
        ctx.get("environment"), (manifest or {}).get("versions"), ctx.get("stage_times")
    )
    other = [r for r in c.rows if r.group not in groups]
    return {
        "title": ctx.get("title") or ctx.get("name") or f"{c.tuned_label} vs {c.base_label}",
        "name": ctx.get("name"),
        "c": c,
        "level": f"{100 * (1 - c.alpha):g}%",
        "counts": c.counts(),
        "too_few": TOO_FEW,
        "families": len({r.family for r in c.rows if r.family is not None and r.p_adjusted is not None}),
        "decision": decision(gate, c, config, data_report),
        "few_samples": FEW_SAMPLES,
        "forest_plot": ctx.get("forest_plot"),
        "export_plot": ctx.get("export_plot"),
        "headline": metric_table(c.headline_rows(), c.alpha, detailed=False) if c.headline_rows() else None,
        "perplexity": metric_table(c.rows_in("perplexity"), c.alpha) if c.rows_in("perplexity") else None,
        "lm_eval": _lm_eval_sections(c.rows_in("lm_eval"), c.alpha, c.inputs),
        "probes": _probe_sections(c.rows_in("probes"), c.alpha),
        "fibonacci": fibonacci_transcripts(b_art, t_art),
        "other": metric_table(other, c.alpha) if other else None,
        "inputs": kv_table(_flat(c.inputs), headers=("Input", "Fingerprint")),
        "training": training_summary(manifest) if manifest else None,
        "loss_curve": ctx.get("loss_curve"),
        "data": data_summary(data_report) if data_report else None,
        "contamination": contamination_table([t_art, b_art]),
        "environment": environment,
        "versions": versions,
        "gate": gate,
        "gate_table": gate_table(gate) if gate else None,
        "export": export_view(c, ctx.get("export_comparisons") or {}),
        "served_parity": served_view(ctx.get("served_parity") or []),
        "judge": judge_view(c.rows_in("judge"), ctx.get("judge_artifacts"), gate),
    }


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,  # a misspelt view key fails loudly instead of vanishing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_report(comparison: Comparison, context: dict[str, Any] | None = None) -> str:
    """Render the Markdown report.

    Args:
        comparison: The run's Comparison.
        context: Optional facts, each adding a section when present: ``name``, ``title``, ``manifest``,
            ``data_report``, ``config`` (the run's resolved config.yaml), ``loss_curve``, ``forest_plot``,
            ``export_plot`` (PNG paths relative to the report: ``plots.draw_report_plots``), ``environment``,
            ``base_artifacts`` / ``tuned_artifacts`` (Results.artifacts), ``gate`` (GateVerdict.to_dict()),
            ``export_comparisons`` (type -> adapter vs exported artifact Comparison).
            ``stage_times`` (the run's timings.json: wall time per pipeline stage), ``judge_artifacts`` (the judge
            results' ``artifacts["judge"]``: sanity records and order disagreements).

    Returns:
        Markdown text ending in a newline.
    """
    text = _env().get_template(TEMPLATE).render(**build_view(comparison, context or {}))
    while "\n\n\n" in text:  # optional sections leave blank runs behind
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def context_from_run(run_dir: str | Path, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Collect the report context from a run folder (files that are absent are simply left out).

    Args:
        run_dir: The run folder.
        results: Optional already-loaded ``{"base", "tuned"}`` Results (saves re-reading them).
    """

    run = Path(run_dir)
    results = results or load_run_results(run)
    ctx: dict[str, Any] = {
        "name": run_settings(run)["name"],
        "base_artifacts": results["base"].artifacts,
        "tuned_artifacts": results["tuned"].artifacts,
        "environment": results["tuned"].environment or None,
    }
    for key, rel in (
        ("manifest", "adapter/manifest.json"),
        ("data_report", "data/data_report.json"),
        ("gate", "gate.json"),
        ("stage_times", "timings.json"),
    ):
        if (run / rel).exists():
            ctx[key] = read_json(run / rel)
    if (run / "config.yaml").exists():  # names the settings that would give a metric more items
        ctx["config"] = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    if (run / "loss_curve.png").exists():
        ctx["loss_curve"] = "loss_curve.png"
    judged = load_judge_results(run)
    if judged is not None:
        ctx["judge_artifacts"] = judged.artifacts.get("judge")
    return {k: v for k, v in ctx.items() if v is not None}


def render_leaderboard(board: Leaderboard) -> str:
    """Markdown table for ``tunebench compare``: one row per metric, one column per adapter."""
    names = list(board.comparisons)
    body = []
    for row in board.rows():
        cells = [f"`{row['metric']}`", "higher" if row["higher_is_better"] else "lower", fmt(row["base"])]
        for a in names:
            r = row["adapters"][a]
            cells.append(
                "–"
                if r is None
                else f"{fmt(r.tuned)} ({fmt(r.delta, True)} {fmt_interval(r.ci_low, r.ci_high)}, {r.verdict})"
            )
        body.append(cells)
    level = f"{100 * (1 - board.alpha):g}%"
    head = f"Adapters against base `{board.base_label}`; cells: tuned value (Δ and its {level} interval, verdict).\n\n"
    return head + table(body, ["Metric", "Better", "Base", *names]) + "\n"
