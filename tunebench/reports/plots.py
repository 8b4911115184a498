"""The report's pictures, PNG beside report.md: the gate's forest plot, the loss curve, exports against the adapter.

Each picture is made in two steps: a pure function picks what to draw from the data the report's tables come from
(gate rows, the training manifest, the export comparisons) and returns it as typed rows; a ``draw_*`` function
draws those rows and nothing else. ``draw_report_plots`` does both for a run folder and returns the rows, so a test
compares the picture's content with comparison.json instead of reading pixels.

Every metric gets its own panel with its own x-axis: perplexity moves by whole units where an accuracy moves by
hundredths, and one shared axis would flatten one of them into a dot.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.compare.comparison import Comparison
from tunebench.compare.rows import IMPROVED, REGRESSED
from tunebench.core.io import atomic_write_bytes
from tunebench.core.numbers import fmt

FOREST_PNG, LOSS_PNG, EXPORT_PNG = "forest.png", "loss_curve.png", "export.png"
STATUS_COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#ef6c00"}
"""Gate status -> colour of its row (skipped rules have no interval and are not drawn)."""
VERDICT_COLOURS = {IMPROVED: "#2e7d32", REGRESSED: "#c62828"}
NEUTRAL = "#546e7a"
"""Colour of a change that is not significant."""


@dataclass
class IntervalRow:
    """One interval drawn: a point at delta, a bar from ci_low to ci_high, in its status's colour."""

    label: str
    metric: str
    delta: float
    ci_low: float
    ci_high: float
    status: str
    """Gate status (pass | fail | inconclusive) or comparison verdict."""
    colour: str
    margins: list[float] = field(default_factory=list)
    """Margins on the delta scale, drawn as dashed lines (gate rows)."""


@dataclass
class LossCurve:
    """What the loss plot draws: training and validation points, and the base's validation loss at step 0."""

    train: list[tuple[int, float]]
    validation: list[tuple[int, float]]
    base: float | None
    """Validation loss before the first step (the base model: LoRA's B matrices start at zero); None if unmeasured."""
    title: str


@dataclass
class ReportPlots:
    """The files drawn (report context key -> file name beside report.md) and what each one shows."""

    files: dict[str, str] = field(default_factory=dict)
    forest: list[IntervalRow] = field(default_factory=list)
    loss: LossCurve | None = None
    export: list[IntervalRow] = field(default_factory=list)


# ----------------------------------------------------------------------------- what to draw (pure)


def forest_rows(gate: dict[str, Any] | None) -> list[IntervalRow]:
    """One row per judged gate rule with an interval (gate.json rows), coloured by its status."""
    rows = []
    for r in (gate or {}).get("rows") or []:
        if r.get("status") not in STATUS_COLOURS or None in (r.get("delta"), r.get("ci_low"), r.get("ci_high")):
            continue
        rows.append(
            IntervalRow(
                label=str(r.get("threshold")),
                metric=r["metric"],
                delta=r["delta"],
                ci_low=r["ci_low"],
                ci_high=r["ci_high"],
                status=r["status"],
                colour=STATUS_COLOURS[r["status"]],
                margins=list(r.get("delta_margins") or []),
            )
        )
    return rows


def loss_curve(manifest: dict[str, Any] | None) -> LossCurve | None:
    """The manifest's loss history; None when it has no training loss."""
    train = [(p["step"], p["loss"]) for p in (manifest or {}).get("loss_history") or []]
    if not train:
        return None
    val = [(p["step"], p["eval_loss"]) for p in manifest.get("eval_history") or []]
    base = manifest.get("base_eval_loss")
    if base is None:
        base = next((loss for step, loss in val if step == 0), None)
    backend = (manifest.get("backend") or {}).get("name")
    return LossCurve(train, val, base, f"{manifest.get('name')}" + (f" · {backend}" if backend else ""))


def export_rows(exports: dict[str, Comparison] | None) -> list[IntervalRow]:
    """Each exported artifact's Δ against the adapter on every headline metric, coloured by its verdict."""
    rows = []
    for artifact, comp in (exports or {}).items():
        for r in comp.headline_rows():
            if None in (r.delta, r.ci_low, r.ci_high):
                continue
            rows.append(
                IntervalRow(
                    label=artifact,
                    metric=r.metric,
                    delta=r.delta,
                    ci_low=r.ci_low,
                    ci_high=r.ci_high,
                    status=r.verdict,
                    colour=VERDICT_COLOURS.get(r.verdict, NEUTRAL),
                )
            )
    return rows


# ----------------------------------------------------------------------------- drawing


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: matplotlib, imported when needed
    from matplotlib.figure import Figure  # heavy: matplotlib, imported when needed

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)  # Agg, whatever backend pyplot is set to: no display needed
    return fig


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: re-renders stay byte-stable
    return atomic_write_bytes(path, buf.getvalue())


def _interval_panels(
    panels: list[tuple[str, list[IntervalRow]]], path: Path, xlabel: str, with_labels: bool = True
) -> Path:
    """One panel per metric: each row's interval and point, zero as a grey line, margins dashed."""
    height = sum(0.45 * len(rows) + 0.75 for _, rows in panels)
    fig = _figure(7.5, max(1.8, height))
    axes = fig.subplots(
        len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": [len(rows) + 1 for _, rows in panels]}
    )[:, 0]
    for ax, (title, rows) in zip(axes, panels, strict=True):
        ys = list(range(len(rows)))[::-1]
        for y, r in zip(ys, rows, strict=True):
            ax.hlines(y, r.ci_low, r.ci_high, colors=r.colour, linewidth=2.5)
            ax.plot([r.delta], [y], "o", color=r.colour)
            ax.annotate(
                f"{r.status}",
                (r.ci_high, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color=r.colour,
            )
            for m in r.margins:
                ax.vlines(m, y - 0.4, y + 0.4, colors="black", linestyles="dashed", linewidth=1)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_yticks(ys, [r.label for r in rows] if len(rows) > 1 or with_labels else [""] * len(rows), fontsize=7)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_title(title, fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.3)  # room for the status text right of each interval
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(xlabel, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def draw_forest(rows: list[IntervalRow], path: str | Path, level: str = "95%") -> Path:
    """The gate's forest plot: Δ of each gated metric with its interval, the rule's margin dashed."""
    panels = [(f"{r.metric} · {r.label}: {r.status}", [r]) for r in rows]
    return _interval_panels(
        panels,
        Path(path),
        f"Δ = tuned − base with its {level} interval; dashed: the rule's margin; colour: gate status",
        with_labels=False,
    )


def draw_export(rows: list[IntervalRow], path: str | Path, level: str = "95%") -> Path:
    """Each exported artifact against the adapter, one panel per metric."""
    by_metric: dict[str, list[IntervalRow]] = {}
    for r in rows:
        by_metric.setdefault(r.metric, []).append(r)
    return _interval_panels(
        list(by_metric.items()), Path(path), f"Δ = artifact − adapter with its {level} interval, paired item by item"
    )


def draw_loss_curve(curve: LossCurve, path: str | Path) -> Path:
    """Training and validation loss against step, the base's validation loss at step 0 marked and carried across."""
    fig = _figure(6, 3.5)
    ax = fig.subplots()
    ax.plot([s for s, _ in curve.train], [v for _, v in curve.train], label="train (assistant tokens)")
    if curve.validation:
        ax.plot([s for s, _ in curve.validation], [v for _, v in curve.validation], "o-", label="validation")
    if curve.base is not None:
        ax.axhline(curve.base, color="grey", linestyle=":", linewidth=1)
        ax.plot([0], [curve.base], "*", color="black", markersize=10, label=f"base, step 0 ({fmt(curve.base)})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(curve.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def draw_report_plots(run_dir: str | Path, comparison: Comparison, context: dict[str, Any]) -> ReportPlots:
    """Draw every picture the run's data supports into ``run_dir``.

    Args:
        run_dir: Where report.md goes; the PNGs are written beside it.
        comparison: base vs adapter (its alpha names the interval level).
        context: The report context (``gate``, ``manifest``, ``export_comparisons``; see render.render_report).

    Returns:
        The files drawn (``forest_plot``, ``loss_curve``, ``export_plot`` -> file name) and the rows each shows.
    """
    run, level = Path(run_dir), f"{100 * (1 - comparison.alpha):g}%"
    out = ReportPlots(
        forest=forest_rows(context.get("gate")),
        loss=loss_curve(context.get("manifest")),
        export=export_rows(context.get("export_comparisons")),
    )
    if out.forest:
        draw_forest(out.forest, run / FOREST_PNG, level)
        out.files["forest_plot"] = FOREST_PNG
    if out.loss:
        draw_loss_curve(out.loss, run / LOSS_PNG)
        out.files["loss_curve"] = LOSS_PNG
    if out.export:
        draw_export(out.export, run / EXPORT_PNG, level)
        out.files["export_plot"] = EXPORT_PNG
    return out
