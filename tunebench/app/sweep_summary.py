"""The sweep's report data (OUT/sweep.json), read from the study: every trial, the selection, importances, pruning
savings and the confirmation run; rendered by ``reports.render_sweep`` into OUT/sweep.md with its plots."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from tunebench.app.sweep_space import overrides_of
from tunebench.app.sweep_storage import shown_url
from tunebench.app.sweep_study import Study
from tunebench.compare.comparison import Comparison
from tunebench.compare.selection import Candidate, select
from tunebench.core.io import atomic_write_json, atomic_write_text
from tunebench.evals.validation import OBJECTIVE_METRIC, OBJECTIVE_SPLIT
from tunebench.gate.files import read_verdict
from tunebench.reports.render_sweep import draw_sweep_plots, importances_withheld, render_sweep

log = logging.getLogger(__name__)

SCHEMA = "tunebench.sweep/1"


def summarize(study: Study, confirm_dir: Path | None = None) -> dict[str, Any]:
    """Everything sweep.md shows, as data."""
    import optuna  # optional: the sweep extra

    states = optuna.trial.TrialState
    trials = study.optuna.get_trials(deepcopy=False)
    rows = [_trial_row(study, t) for t in trials]
    candidates = [
        Candidate(
            t.number,
            float(t.value),
            [{"id": i, "num": n, "den": d} for i, n, d in t.user_attrs["items"]],
            int(t.user_attrs["trainable_params"]),
            int(t.user_attrs["steps"]),
        )
        for t in trials
        if t.state == states.COMPLETE and "items" in t.user_attrs
    ]
    selection = (
        select(candidates, alpha=study.asked.report.alpha, n_boot=study.asked.eval.bootstrap_samples)
        if candidates
        else None
    )
    versus = {v.number: v for v in selection.compared} if selection else {}
    for r in rows:
        v = versus.get(r["number"])
        if v is not None:
            r.update(delta=v.delta, delta_low=v.low, delta_high=v.high, p_holm=v.p_holm)
        r["indistinguishable"] = bool(selection and r["number"] in selection.indistinguishable)
    chosen = None
    if selection:
        t = next(t for t in trials if t.number == selection.chosen)
        over = t.user_attrs.get("overrides") or overrides_of(study.space.values_of(t.params))
        line = shlex.join(
            [
                "tunebench",
                "run",
                study.opts.preset,
                *study.opts.overrides,
                *over,
                *([f"train.seed={study.asked.train.seed}"] if study.opts.seeds > 1 else []),
            ]
        )
        chosen = {
            "number": t.number,
            "params": dict(t.params),
            "overrides": over,
            "config_line": line,
            "value": t.value,
            "reason": selection.reason,
        }
    importances, note = param_importances(study.optuna, len(candidates), len(study.space.params))
    return {
        "schema": SCHEMA,
        "preset": study.opts.preset,
        "overrides": list(study.opts.overrides),
        "study": study.optuna.study_name,
        "storage": shown_url(study.url),
        "objective": {
            "metric": OBJECTIVE_METRIC,
            "split": OBJECTIVE_SPLIT,
            "direction": "minimize",
            "conversations": len(study.prepared.conversations.get(OBJECTIVE_SPLIT, [])),
            "paired_by": "conversation",
        },
        "space": study.space.to_dict(),
        "space_file": study.space.source,
        "seeds": study.opts.seeds,
        "sampler": "TPE",
        "pruner": study.opts.pruner,
        "target_trials": study.opts.trials,
        "counts": {s.name.lower(): sum(t.state == s for t in trials) for s in states},
        "trials": rows,
        "selection": selection.to_dict() if selection else None,
        "chosen": chosen,
        "importances": importances,
        "importances_note": note,
        "pruning": pruning_savings(rows, study.max_steps),
        "confirm": confirmation(confirm_dir) if confirm_dir else None,
    }


def _trial_row(study: Study, t: Any) -> dict[str, Any]:
    a = t.user_attrs
    ci = a.get("ci") or [None, None]
    start, end = t.datetime_start, t.datetime_complete
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "params": dict(t.params),
        "value": t.value,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "pruned": t.state.name == "PRUNED",
        "pruned_at_step": a.get("pruned_at_step"),
        "last_intermediate": (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None),
        "seconds": a.get("seconds", round((end - start).total_seconds(), 1) if start and end else None),
        "trainable_params": a.get("trainable_params"),
        "steps": a.get("steps"),
        "per_seed": a.get("per_seed"),
        "run_dirs": a.get("run_dirs"),
        "error": a.get("error"),
        "retry_of": a.get("retry_of"),
    }


def param_importances(study: Any, finished: int, searched: int) -> tuple[dict[str, float] | None, str | None]:
    """``optuna.importance`` of each of the ``searched`` parameters, or why there are none (yet): withheld below
    ``render_sweep.MIN_IMPORTANCE_TRIALS`` complete trials (``finished``)."""
    import optuna  # optional: the sweep extra

    withheld = importances_withheld(finished, searched)
    if withheld:
        return None, withheld
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}, None
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return None, f"optuna.importance could not rank the parameters yet ({e})"


def pruning_savings(rows: list[dict[str, Any]], max_steps: int) -> dict[str, Any]:
    """Optimizer steps pruning saved: each pruned trial's planned steps less the steps it ran."""
    pruned = [r for r in rows if r["pruned"]]
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    planned = max_steps * len(finished) if max_steps else None
    ran = sum(r["steps"] or 0 for r in finished)
    saved = sum(max(max_steps - (r["steps"] or 0), 0) for r in pruned) if max_steps else None
    return {
        "pruned": len(pruned),
        "finished": len(finished),
        "steps_run": ran,
        "steps_planned": planned,
        "steps_saved": saved,
        "share_saved": (saved / planned) if planned and saved is not None else None,
    }


def confirmation(run_dir: Path) -> dict[str, Any] | None:
    """The confirmation run's test-split perplexity (base, tuned, Δ with its interval) and its gate verdict."""
    comp_path, gate_path = run_dir / "comparison.json", run_dir / "gate.json"
    if not comp_path.is_file():
        return None
    rows = {r.metric: r for r in Comparison.load(comp_path).rows}
    ppl = rows.get("perplexity/test")
    gate = read_verdict(gate_path) if gate_path.is_file() else None
    return {
        "run_dir": str(run_dir),
        "report": str(run_dir / "report.md"),
        "perplexity_test": {k: getattr(ppl, k) for k in ("base", "tuned", "delta", "ci_low", "ci_high", "n")}
        if ppl
        else None,
        "gate": gate.status if gate else None,
    }


def write_summary(out: Path, summary: dict[str, Any], study: Any) -> Path:
    """sweep.json (data first), the plots, then sweep.md; returns sweep.md's path."""
    summary["plots"] = draw_sweep_plots(study, out, summary["importances"] is not None)
    atomic_write_json(out / "sweep.json", summary)
    path = atomic_write_text(out / "sweep.md", render_sweep(summary))
    return Path(path)
