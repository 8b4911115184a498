"""sweep.md from sweep.json's data, and the study's plots (Optuna's matplotlib visualisation) as PNGs beside it."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

from tunebench.core.io import atomic_write_bytes
from tunebench.core.markdown import table
from tunebench.core.numbers import fmt, fmt_interval, fmt_p

log = logging.getLogger(__name__)

PLOTS = {
    "history": "plot_optimization_history",
    "parallel": "plot_parallel_coordinate",
    "importances": "plot_param_importances",
}
"""File stem -> the optuna.visualization.matplotlib function that draws it."""

MIN_IMPORTANCE_TRIALS = 10
"""Complete trials below which parameter importances are withheld (and never fewer than two per searched
parameter): optuna's fANOVA fits a random forest to the complete trials, and with fewer, each parameter has too few
values for its effect to be told apart from the others' and from the objective's noise."""


def importances_withheld(complete: int, searched: int) -> str | None:
    """Why a study of ``complete`` trials over ``searched`` parameters gets no importances, or None when it does."""
    need = max(MIN_IMPORTANCE_TRIALS, 2 * searched)
    if complete >= need:
        return None
    return (
        f"Parameter importances are withheld below {need} complete trials ({MIN_IMPORTANCE_TRIALS} at least, and two "
        f"per searched parameter: {searched} searched); this study has {complete}, too few to tell one parameter's "
        "effect from another's"
    )


WINNERS_CURSE = (
    "**Why the test split, once.** The best validation perplexity is the minimum of many noisy estimates, so it is "
    "biased low: the trial that wins is partly the one whose noise fell luckiest (the winner's curse), and the more "
    "trials, the larger the bias. The sweep therefore never reads the test split. The chosen configuration is trained "
    "again and evaluated once against its base on the test split through the normal pipeline: that estimate was not "
    "used to choose, so it is unbiased, and it is the one the claim (and the gate) rests on."
)


def draw_sweep_plots(study: Any, out_dir: str | Path, importances: bool) -> dict[str, str]:
    """Optimisation history, parallel coordinates and (when they can be computed) importances as PNGs.

    Returns:
        file stem -> PNG name, for the plots that could be drawn (a study with no finished trial has none).
    """
    try:
        import matplotlib  # heavy: matplotlib, imported when needed

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # heavy: matplotlib, imported when needed
        import optuna.visualization.matplotlib as vis  # optional: the sweep extra
    except ImportError as e:  # plots are drawn second: a missing or broken plotting install never costs the report
        log.warning(
            "sweep plots not drawn (%s); sweep.json and sweep.md are complete without them. Install "
            "matplotlib and a whole optuna (pip install 'tunebench[sweep]') for the PNGs",
            e,
        )
        return {}

    drawn: dict[str, str] = {}
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    for stem, fn in PLOTS.items():
        if not finished or (stem == "importances" and not importances) or (stem == "parallel" and len(finished) < 2):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # every matplotlib plot of optuna is marked experimental
                ax = getattr(vis, fn)(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            plt.close(fig)
            atomic_write_bytes(Path(out_dir) / f"{stem}.png", buf.getvalue())
            drawn[stem] = f"{stem}.png"
        except (ValueError, RuntimeError, KeyError) as e:  # too few distinct values for a plot: leave it out
            log.warning("sweep plot %s not drawn: %s", stem, e)
    return drawn


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k.split('.', 1)[-1]}={fmt(v) if isinstance(v, float) else v}" for k, v in params.items())


def _leaderboard(summary: dict[str, Any]) -> str:
    order = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}
    rows = sorted(
        summary["trials"],
        key=lambda r: (order.get(r["state"], 5), r["value"] if r["value"] is not None else float("inf"), r["number"]),
    )
    chosen = (summary.get("chosen") or {}).get("number")
    selection = summary.get("selection") or {}
    out = []
    for r in rows:
        mark = " (chosen)" if r["number"] == chosen else " (best)" if r["number"] == selection.get("best") else ""
        vs = (
            (
                f"{fmt(r['delta'], signed=True)} {fmt_interval(r['delta_low'], r['delta_high'])}, Holm p "
                f"{fmt_p(r['p_holm'])}"
            )
            if r.get("delta") is not None
            else None
        )
        state = r["state"] + (f" at step {r['pruned_at_step']}" if r["pruned"] and r.get("pruned_at_step") else "")
        value = r["value"] if r["state"] == "complete" else r.get("last_intermediate")
        out.append(
            [
                f"{r['number']}{mark}",
                _params(r["params"]),
                value,
                fmt_interval(r["ci_low"], r["ci_high"], signed=False) if r["ci_low"] is not None else None,
                vs,
                "yes" if r["indistinguishable"] else ("no" if r["state"] == "complete" else None),
                state,
                f"{r['trainable_params']:,}" if r.get("trainable_params") else None,
                r.get("steps"),
                f"{r['seconds']:.0f} s" if r.get("seconds") is not None else None,
            ]
        )
    return table(
        out,
        [
            "trial",
            "parameters",
            "validation perplexity",
            "95% interval",
            "Δ vs best [interval]",
            "indistinguishable",
            "state",
            "trainable",
            "steps",
            "time",
        ],
    )


def _confirm_section(summary: dict[str, Any]) -> list[str]:
    c, chosen = summary.get("confirm"), summary.get("chosen")
    lines = ["## Confirmation on the test split", "", WINNERS_CURSE, ""]
    if not chosen:
        return lines + ["No trial has finished: nothing to confirm yet.", ""]
    if not c:
        return lines + [
            "Not run in this invocation (`--no-confirm`, or it stopped). Run it with:",
            "",
            f"    {chosen['config_line']}",
            "",
        ]
    ppl = c.get("perplexity_test") or {}
    lines.append(
        f"`{c['run_dir']}`: test perplexity base {fmt(ppl.get('base'))} → tuned {fmt(ppl.get('tuned'))}, "
        f"Δ {fmt(ppl.get('delta'), signed=True)} {fmt_interval(ppl.get('ci_low'), ppl.get('ci_high'))} over "
        f"{ppl.get('n')} conversations; gate: **{c.get('gate')}** ([report](confirm/report.md)). The winner's "
        f"validation perplexity was {fmt(chosen['value'])}, on other conversations and chosen as the minimum: "
        "read the test figure, not that one."
    )
    return lines + [""]


def _head(summary: dict[str, Any]) -> list[str]:
    """Title, the chosen configuration and what the study ran."""
    counts, chosen, obj = summary["counts"], summary.get("chosen"), summary["objective"]
    lines = [f"# Sweep: {summary['preset']} ({summary['study']})", ""]
    if chosen:
        lines += [f"**Chosen: {chosen['reason']}.**", "", "    " + chosen["config_line"], ""]
    else:
        lines += ["**No trial has finished yet: nothing is chosen.**", ""]
    return lines + [
        f"{counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed"
        + (f", {counts['running']} still running in other workers" if counts.get("running") else "")
        + f" (target {summary['target_trials']}). Objective: {obj['metric']} (assistant tokens, "
        f"{obj['conversations']} conversations, paired per conversation; lower is better); the test split is "
        f"never read. Sampler {summary['sampler']}, pruner {summary['pruner']}, {summary['seeds']} seed(s) per "
        "configuration.",
        "",
    ]


def _selection_section(sel: dict[str, Any] | None) -> list[str]:
    """How the chosen trial was picked among those indistinguishable from the best (none without a selection)."""
    if not sel:
        return []
    level = f"{100 * (1 - sel['alpha']):g}%"
    return [
        "## Selection",
        "",
        f"Each of the top {sel['top']} finished trials is compared with the best (trial {sel['best']}) on the "
        "same validation conversations: a paired bootstrap of the perplexity difference, p-values "
        f"Holm-corrected as one family (family-wise {level}). Indistinguishable from the best: trials "
        f"{', '.join(str(n) for n in sel['indistinguishable'])}. Among them the cheapest is chosen (fewest "
        "trainable parameters, then fewest steps): a difference the validation split cannot resolve is not "
        "worth the larger adapter."
        + (
            f" Not compared (below the top {sel['top']}): {', '.join(map(str, sel['not_compared']))}."
            if sel["not_compared"]
            else ""
        ),
        "",
    ]


def _importances_section(summary: dict[str, Any]) -> list[str]:
    """Parameter importances (or why there are none) and the study's plots."""
    lines = ["## Parameter importances", ""]
    importances = summary.get("importances")
    # a sweep.json written before the minimum existed may hold importances of too few trials: withheld here too
    withheld = importances_withheld(summary["counts"]["complete"], len(summary["space"])) if importances else None
    if importances and not withheld:
        lines += [table([[k, v] for k, v in importances.items()], ["parameter", "importance"]), ""]
    else:
        lines += [f"{withheld or summary.get('importances_note')}.", ""]
    plots = {k: v for k, v in (summary.get("plots") or {}).items() if not (withheld and k == "importances")}
    for stem, title in (
        ("importances", "importances"),
        ("history", "Optimisation history"),
        ("parallel", "Parallel coordinates"),
    ):
        if stem in plots:
            lines += [f"![{title}]({plots[stem]})", ""]
    return lines


def _pruning_section(pr: dict[str, Any]) -> list[str]:
    return [
        "## Pruning",
        "",
        f"{pr['pruned']} of {pr['finished']} finished trials pruned; {pr['steps_run']} "
        "optimizer steps run"
        + (
            f" of {pr['steps_planned']} planned, {pr['steps_saved']} saved ({100 * pr['share_saved']:.0f}%)"
            if pr.get("share_saved") is not None
            else ""
        )
        + ".",
        "",
    ]


def _study_section(summary: dict[str, Any]) -> list[str]:
    """The search space and storage, then the failed trials' errors."""
    space = [
        [
            p["key"],
            p["kind"],
            (
                " | ".join(",".join(c) if isinstance(c, (list, tuple)) else str(c) for c in p["choices"])
                if p["kind"] == "categorical"
                else f"[{p['low']}, {p['high']}]" + (" log" if p["log"] else "")
            ),
        ]
        for p in summary["space"]
    ]
    lines = [
        "## Study",
        "",
        f"Storage `{summary['storage']}`, space `{summary['space_file']}`:",
        "",
        table(space, ["key", "distribution", "values"]),
        "",
    ]
    failed = [r for r in summary["trials"] if r["state"] == "fail" and r.get("error")]
    if failed:
        lines += ["Failed trials: " + "; ".join(f"{r['number']}: {r['error']}" for r in failed), ""]
    return lines


def render_sweep(summary: dict[str, Any]) -> str:
    """The sweep report in Markdown."""
    lines = _head(summary)
    lines += ["## Leaderboard", "", _leaderboard(summary), ""]
    lines += _selection_section(summary.get("selection"))
    lines += _confirm_section(summary)
    lines += _importances_section(summary)
    lines += _pruning_section(summary["pruning"])
    lines += _study_section(summary)
    return "\n".join(lines)
