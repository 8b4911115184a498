"""Markdown report of a run: one Jinja template fed by one view of formatted tables (the only Markdown formatter).

``render_report(comparison, context)`` turns a Comparison plus optional run facts (manifest, data report,
artifacts, environment, gate verdict) into Markdown. Each registered evaluation family with a report section
(``evals.families``) places its rows: a ``table`` section is a heading, a line and one metric table; the rest are
laid out by report.md.j2's own blocks. The view's tables are built by ``render_tables`` (metric
tables, the release decision), ``render_evals`` (lm-eval, probes, exports, served endpoints), ``render_run``
(training, data, contamination, gate, environment) and ``render_judge``, each imported from there. Tables go
through ``tabulate(tablefmt="github")``; the output depends only on its inputs, so a golden
file can pin it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from tunebench.compare.comparison import Comparison, Leaderboard
from tunebench.compare.rows import TOO_FEW, load_judge_results
from tunebench.compare.runs import load_run_results, run_settings
from tunebench.core.errors import RunFileError
from tunebench.core.io import check_json, package_path, read_json, read_yaml
from tunebench.core.markdown import kv_table, table
from tunebench.core.numbers import fmt, fmt_interval, fmt_p
from tunebench.evals.families import families
from tunebench.gate.files import other_gate_line, other_verdicts
from tunebench.reports.render_evals import (
    _lm_eval_sections,
    _probe_sections,
    export_view,
    fibonacci_transcripts,
    served_view,
)
from tunebench.reports.render_judge import judge_view
from tunebench.reports.render_per_item import (
    as_per_item,
    flips_view,
    not_measured_table,
    side_by_side_view,
    unmeasured,
)
from tunebench.reports.render_run import (
    _flat,
    contamination_table,
    data_summary,
    environment_tables,
    gate_table,
    training_summary,
)
from tunebench.reports.render_tables import decision, metric_table

TEMPLATES = package_path("reports", "templates")
TEMPLATE = "report.md.j2"


def build_view(comparison: Comparison, context: dict[str, Any]) -> dict[str, Any]:
    """Everything the template prints, already formatted."""
    c, ctx = comparison, context
    sectioned = [f for f in families() if f.section is not None]  # the rest: under "Other metrics"
    manifest, data_report, gate = ctx.get("manifest"), ctx.get("data_report"), ctx.get("gate")
    b_art, t_art = ctx.get("base_artifacts") or {}, ctx.get("tuned_artifacts") or {}
    config = ctx.get("config") or (manifest or {}).get("config")
    environment, versions = environment_tables(
        ctx.get("environment"), (manifest or {}).get("versions"), ctx.get("stage_times")
    )
    other = [r for r in c.rows if r.group not in {f.name for f in sectioned}]
    headline = [r for r in c.headline_rows() if unmeasured(r) is None]  # the rest: under "Not measured"
    per_item = as_per_item(ctx.get("per_item"))
    return {
        "title": ctx.get("title") or ctx.get("name") or f"{c.tuned_label} vs {c.base_label}",
        "name": ctx.get("name"),
        "c": c,
        "level": f"{100 * (1 - c.alpha):g}%",
        "counts": c.counts(),
        "too_few": TOO_FEW,
        "families": len({r.family for r in c.rows if r.family is not None and r.p_adjusted is not None}),
        "decision": decision(gate, c, config, data_report),
        "few_samples": c.min_n,
        "forest_plot": ctx.get("forest_plot"),
        "export_plot": ctx.get("export_plot"),
        "headline": metric_table(headline, c.alpha, detailed=False) if headline else None,
        "not_measured": not_measured_table(c.rows),
        "side_by_side": side_by_side_view(per_item),
        "flips": flips_view(per_item),
        "sections": [
            {"title": f.section.title, "intro": f.section.intro, "table": metric_table(c.rows_in(f.name), c.alpha)}
            for f in sectioned
            if f.section.layout == "table" and c.rows_in(f.name)
        ],
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
        "other_gates": [other_gate_line(name, v) for name, v in (ctx.get("other_gates") or {}).items()],
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
            results' ``artifacts["judge"]``: sanity records and order disagreements), ``per_item`` (a
            ``compare.per_item.PerItem`` or its JSON form: answers side by side and the items that changed most).

    Returns:
        Markdown text ending in a newline.
    """
    text = _env().get_template(TEMPLATE).render(**build_view(comparison, context or {}))
    while "\n\n\n" in text:  # optional sections leave blank runs behind
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


_RUN_FILES = (  # context key, file, its type, the command that writes it again
    ("manifest", "adapter/manifest.json", dict[str, Any], "tunebench train CONFIG --out RUN --overwrite"),
    ("data_report", "data/data_report.json", dict[str, Any], "tunebench data RUN/config.yaml --out RUN"),
    ("gate", "gate.json", dict[str, Any], "tunebench report RUN"),
    ("stage_times", "timings.json", dict[str, dict[str, float] | float], "delete it: it only records stage times"),
)


def context_from_run(
    run_dir: str | Path, results: dict[str, Any] | None = None, gate: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Collect the report context from a run folder (files that are absent are simply left out).

    Args:
        run_dir: The run folder.
        results: Optional already-loaded ``{"base", "tuned"}`` Results (saves re-reading them).
        gate: The verdict about to be written as gate.json (``finish``), instead of the one there now.

    Raises:
        RunFileError: a file the report reads is damaged or of the wrong shape (names it and how to write it again).
    """

    run = Path(run_dir)
    results = results or load_run_results(run)
    ctx: dict[str, Any] = {
        "name": run_settings(run)["name"],
        "base_artifacts": results["base"].artifacts,
        "tuned_artifacts": results["tuned"].artifacts,
        "environment": results["tuned"].environment or None,
        "gate": gate,
    }
    for key, rel, hint, command in _RUN_FILES:
        path = run / rel
        if ctx.get(key) is None and path.exists():
            fix = command.replace("RUN", str(run)) if command.startswith("tunebench") else command
            fix = f"re-run `{fix}`" if command.startswith("tunebench") else fix
            ctx[key] = check_json(read_json(path, fix), hint, str(path), fix)
    if (run / "config.yaml").exists():  # names the settings that would give a metric more items
        ctx["config"] = read_yaml(run / "config.yaml", f"restore {run / 'config.yaml'} from a copy", RunFileError)
    ctx["other_gates"] = other_verdicts(run) or None
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
    return head + table(body, ["Metric", "Better", "Base", *names]) + "\n" + _ranking(board)


def _ranking(board: Leaderboard) -> str:
    """The adapters ranked on the primary metric, then every pair of them compared on it (paired, Holm-adjusted)."""
    if not board.primary or not board.ranking:
        return ""
    m, level = board.primary, f"{100 * (1 - board.alpha):g}%"
    rows = {a: next((r for r in c.rows if r.metric == m), None) for a, c in board.comparisons.items()}
    some = next(r for r in rows.values() if r is not None)
    better = "higher" if some.higher_is_better else "lower"
    ranked = [
        [k, f"`{a}`", fmt(r.tuned) if r else None]
        + ([f"{fmt(r.delta, True)} {fmt_interval(r.ci_low, r.ci_high)}", r.verdict] if r else [None, None])
        for k, (a, r) in enumerate(((a, rows[a]) for a in board.ranking), start=1)
    ]
    out = f"\n## Ranked by `{m}` ({better} is better)\n\n"
    out += table(ranked, ["Rank", "Adapter", m, f"Δ vs base ({level} CI)", "Verdict vs base"]) + "\n"
    if not board.versus:
        return out + "\nOne adapter: no pair to compare.\n"
    n = board.versus[0].row
    out += (
        f"\nAdapter against adapter on `{m}`, paired over the same {n.n} {n.unit}: Δ = second − first, with its "
        f"{level} interval and p; a pair's verdict reads p Holm-adjusted over the {len(board.versus)} pair(s).\n\n"
    )
    pairs = [
        [
            f"`{v.first}`",
            f"`{v.second}`",
            fmt(v.row.base),
            fmt(v.row.tuned),
            fmt(v.row.delta, True),
            fmt_interval(v.row.ci_low, v.row.ci_high),
            fmt_p(v.row.p_value),
            fmt_p(v.p_holm),
            v.verdict,
        ]
        for v in board.versus
    ]
    headers = ["First", "Second", "First's value", "Second's value", "Δ", f"{level} CI of Δ", "p", "p (Holm)"]
    return out + table(pairs, [*headers, "Verdict"]) + "\n"
