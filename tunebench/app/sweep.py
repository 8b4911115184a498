"""`tunebench sweep PRESET --trials N`: a LoRA and hyperparameter search on Optuna that picks a winner with confidence.

A study lives in a storage (by default ``sqlite:///OUT/study.db``): running the same command again resumes it, and
finished trials count toward N; with a shared server (``--storage postgresql://...``) or a journal file on a shared disk
(``--storage journal:PATH``) every machine that runs the same command works on the same study (app.sweep_storage;
docs/scale-out.md). One sweep folder holds:

    OUT/data/              the study's prepared data (prepared.json, data_report.*): once per study, by fingerprint,
                           and without the test split (the sweep selects on validation only)
    OUT/trials/<n>/        each trial a normal run folder (config, adapter + manifest, loss curve, validation.json);
                           with --seeds K, OUT/trials/<n>/seed-<s>/ per seed
    OUT/sweep.json, sweep.md, *.png     the report (app.sweep_summary, reports.render_sweep)
    OUT/confirm/           the chosen configuration's one `tunebench run` against base, on the test split

Each trial trains in a child (app.sweep_trial) that reports its validation losses to the trial for pruning; the
objective (validation perplexity per conversation, evals.validation) is scored here, on unpatched transformers.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.app.eval_settings import eval_settings
from tunebench.app.pipeline import PipelineResult, resolve_template, run, run_child, write_config
from tunebench.app.preflight import preflight
from tunebench.app.sweep_space import default_space, load_space, overrides_of
from tunebench.app.sweep_storage import normalize_url, shown_url
from tunebench.app.sweep_study import (
    POLL_S,
    LostTrials,
    Study,
    SweepOptions,
    claim_next,
    heartbeat,
    max_steps,
    open_study,
    prepare_data,
    study_identity,
)
from tunebench.app.sweep_summary import summarize, write_summary
from tunebench.app.sweep_trial import OUTCOME_FILE, STORAGE_ENV, Outcome, TrialSpec
from tunebench.core import output, tracking
from tunebench.core.config import load_config, with_values
from tunebench.core.config_resolve import resolve
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import EXIT_INTERRUPTED, ConfigError, Interrupted, PipelineError, TunebenchError
from tunebench.core.io import atomic_write_json, read_json
from tunebench.core.lock import run_lock
from tunebench.core.stats import bootstrap_ci
from tunebench.evals.validation import score_validation
from tunebench.models.loading import resolve_model
from tunebench.reports.tracking import log_metrics

log = logging.getLogger(__name__)

MAX_FAILURES = 3
"""Consecutive failed trials (a NaN loss, a bad setting) after which the sweep stops: something is wrong with all."""


@dataclass
class SweepResult:
    out: Path
    report: Path
    ran: int
    """Trials this process ran (other workers run theirs)."""
    chosen: int | None
    config_line: str | None
    confirm: PipelineResult | None


def sweep(opts: SweepOptions) -> SweepResult:
    """Run (or resume) the study to ``opts.trials`` finished trials, write the report, then confirm the choice.

    Raises:
        ConfigError: a bad preset, override, space file or option, or a storage that cannot be reached (before
            anything trains).
        Interrupted: Ctrl-C or SIGTERM; finished trials stay in the study, the one running is marked failed.
    """
    if opts.trials < 1 or opts.seeds < 1 or opts.heartbeat < 1:
        raise ConfigError(
            f"--trials, --seeds and --heartbeat must be at least 1 (got --trials {opts.trials}, --seeds {opts.seeds}, "
            f"--heartbeat {opts.heartbeat})"
        )
    url = normalize_url(opts.storage) if opts.storage else None
    asked = load_config(opts.preset, opts.overrides, resolved=False)
    space_path = opts.space or default_space(opts.preset)
    if space_path is None:
        raise ConfigError(
            f"preset {opts.preset!r} has no default search space (tunebench/configs/spaces/); give one "
            "with --space FILE (a YAML of dotted keys, e.g. lora.r: {type: categorical, choices: [8, 16]})"
        )
    space = load_space(space_path, asked)
    cfg = resolve(asked)[0]
    preflight(cfg, whole_run=opts.confirm)
    if opts.pruner != "none" and not cfg.train.eval_every:
        log.warning(
            "--pruner %s has no validation losses during training to act on (train.eval_every=0): no trial "
            "will be pruned; set train.eval_every=N",
            opts.pruner,
        )
    out = Path(opts.out or Path("runs") / f"{asked.name}-sweep")
    out.mkdir(parents=True, exist_ok=True)
    output.log_to(out / "run.log")
    url = url or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna_study, storage = open_study(
        url, opts.study or f"tunebench-{asked.name}", opts, study_identity(asked, space, opts)
    )
    prepared, data_path = prepare_data(cfg, out)
    study = Study(optuna_study, storage, url, opts, out, asked, space, prepared, data_path, max_steps(asked, space))
    ran = run_trials(study)
    summary = summarize(study)
    report = write_summary(out, summary, study.optuna)
    confirm = None
    if opts.confirm and summary.get("chosen"):
        confirm = confirm_choice(study, summary)
        report = write_summary(out, summarize(study, confirm_dir=out / "confirm"), study.optuna)
    chosen = summary.get("chosen") or {}
    return SweepResult(out, report, ran, chosen.get("number"), chosen.get("config_line"), confirm)


# ----------------------------------------------------------------------------- trials


def run_trials(study: Study) -> int:
    """Claim trials until the study holds ``--trials`` finished ones, then wait for those other workers still run, so
    every worker reports the same study. A trial whose worker is lost is failed and its configuration run again.

    Returns:
        How many trials this process ran.
    """
    with output.stage("sweep", study.opts.trials, initial=_finished(study.optuna), unit="trial") as bar:
        return _trial_loop(study, bar)


def _finished(study: Any) -> int:
    import optuna  # optional: the sweep extra

    states = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))


def _trial_loop(study: Study, bar: output.Stage) -> int:
    """``run_trials``' loop, advancing the sweep's one bar (finished trials, other workers' included; its ETA from
    this process's pace)."""
    import optuna  # optional: the sweep extra

    states = optuna.trial.TrialState
    lost, ran, failures, waiting = LostTrials(study.opts.heartbeat), 0, 0, False
    while True:
        trial, finished, running = claim_next(study.optuna, study.storage, study.url, study.opts.trials, lost)
        bar.count(finished)
        if trial is None:
            if finished >= study.opts.trials:
                return ran
            if not waiting:
                log.info("%d trial(s) finished; waiting for the %d running in other workers", finished, running)
            waiting = True
            time.sleep(min(POLL_S, study.opts.heartbeat))
            continue
        waiting = False
        log.info("trial %d (%d of %d in the study)", trial.number, finished + running + 1, study.opts.trials)
        try:
            run_trial(study, trial)
            failures = 0
        except (KeyboardInterrupt, Interrupted):
            fail(study.optuna, trial, "interrupted (Ctrl-C or SIGTERM)", interrupted=True)
            done = len(study.optuna.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
            raise Interrupted(
                f"the sweep in {study.out} stopped during trial {trial.number}; the {done} finished trials are kept in "
                f"{shown_url(study.url)} and trial {trial.number} is recorded as failed (its configuration runs again "
                f"first). Run the same command to continue: finished trials count toward --trials"
            ) from None
        except TunebenchError as e:
            fail(study.optuna, trial, str(e))
            failures += 1
            log.warning("trial %d failed: %s", trial.number, e)
            if failures >= MAX_FAILURES:
                raise PipelineError(
                    f"{failures} trials in a row failed (the last: {e}); the sweep stopped. Fix the "
                    "cause and run the same command again: finished trials are kept"
                ) from None
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning(
                "trial %d was failed by another worker, which heard no heartbeat from this one for %d s (suspended?); "
                "this worker's result is dropped and the configuration runs again",
                trial.number,
                lost.grace,
            )
            continue
        except BaseException as e:
            fail(study.optuna, trial, f"{type(e).__name__}: {e}")
            raise
        ran += 1


def fail(study: Any, trial: Any, why: str, interrupted: bool = False) -> None:
    """Record a trial as failed, with why (an interrupted one is never complete)."""
    import optuna  # optional: the sweep extra

    with contextlib.suppress(Exception):  # the storage may be what failed
        trial.set_user_attr("error", why[:2000])
        if interrupted:
            trial.set_user_attr("interrupted", True)
    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> None:
    """Tell the study a trial's end, unless another worker failed it as lost meanwhile (then raise so)."""
    import optuna  # optional: the sweep extra

    frozen = study.tell(trial, value, state=state, skip_if_finished=True)
    if frozen.state == optuna.trial.TrialState.FAIL:
        raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} was failed as lost")


def trial_config(study: Study, values: dict[str, Any], seed: int) -> RunConfig:
    """The resolved config of one trial: the asked config, the trial's values and its seed."""
    cfg = resolve(with_values(study.asked, {**values, "train.seed": seed}))[0]
    return resolve_template(cfg, resolve_model(cfg.model.ref, cfg.model.revision))


def run_trial(study: Study, trial: Any) -> None:
    """Train and score one configuration (each seed), then tell the study: complete with its validation perplexity,
    or pruned."""
    import optuna  # optional: the sweep extra

    values = study.space.suggest(trial)
    seeds = [study.asked.train.seed + k for k in range(study.opts.seeds)]
    trial_dir = study.out / "trials" / str(trial.number)
    trial.set_user_attr("overrides", overrides_of(values))
    t0 = time.perf_counter()
    pooled: dict[str, dict[str, Any]] = {}
    per_seed, run_dirs = [], []
    # Trial has no public id; the heartbeat and the child reach it by id
    with heartbeat(study.storage, trial._trial_id, study.opts.heartbeat):
        for k, seed in enumerate(seeds):
            run_dir = trial_dir if len(seeds) == 1 else trial_dir / f"seed-{seed}"
            run_dirs.append(str(run_dir))
            cfg = trial_config(study, values, seed)
            outcome = train_trial(study, trial, cfg, run_dir, report=k == 0)
            manifest = read_json(run_dir / "adapter" / "manifest.json")
            trial.set_user_attr("trainable_params", manifest["trainable_params"])
            trial.set_user_attr("steps", manifest["steps"])
            trial.set_user_attr("run_dirs", run_dirs)
            if outcome.pruned:
                trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
                trial.set_user_attr("pruned_at_step", outcome.step)
                tell(study.optuna, trial, state=optuna.trial.TrialState.PRUNED)
                return
            metric, items = score_validation(
                eval_settings(cfg), study.prepared, run_dir / "adapter", progress=study.opts.progress
            )
            atomic_write_json(
                run_dir / "validation.json",
                {
                    "metric": metric.name,
                    "value": metric.value,
                    "ci_low": metric.ci_low,
                    "ci_high": metric.ci_high,
                    "items": items,
                },
            )
            if tracking.active(cfg.train.report_to):
                log_metrics(
                    cfg.train.report_to,
                    run_dir,
                    {f"eval/{metric.name}": metric.value},
                    step=manifest["steps"],
                    run_name=f"trial-{trial.number}",
                )
            per_seed.append({"seed": seed, "perplexity": metric.value})
            for it in items:  # one record per conversation, summed over seeds: the configuration's paired unit
                rec = pooled.setdefault(str(it["id"]), {"id": str(it["id"]), "num": 0.0, "den": 0})
                rec["num"] += it["num"]
                rec["den"] += it["den"]
    ci = bootstrap_ci(
        list(pooled.values()), "exp_ratio", n_boot=study.asked.eval.bootstrap_samples, alpha=study.asked.report.alpha
    )
    trial.set_user_attr("items", [[r["id"], r["num"], r["den"]] for r in pooled.values()])
    trial.set_user_attr("ci", [ci.low, ci.high])
    trial.set_user_attr("per_seed", per_seed)
    trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
    tell(study.optuna, trial, ci.value)
    log.info("trial %d: validation perplexity %.4f [%.4f, %.4f]", trial.number, ci.value, ci.low, ci.high)


def train_trial(study: Study, trial: Any, cfg: RunConfig, run_dir: Path, report: bool) -> Outcome:
    """Write the run folder's config and trial.json, train in a child under the folder's lock, read its outcome.

    Raises:
        Interrupted: the child stopped on Ctrl-C or SIGTERM (its checkpoint is in the run folder).
        PipelineError: the child failed (its own message was printed above).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, "sweep"):
        write_config(cfg, run_dir)
        TrialSpec(
            study.optuna.study_name,
            trial._trial_id,
            trial.number,
            study.opts.pruner,
            study.max_steps,
            str(study.data_path.resolve()),
            report,
        ).write(run_dir)
        (run_dir / OUTCOME_FILE).unlink(missing_ok=True)
        code = run_child(  # its training bar off: the sweep's bar over trials is the one shown
            [sys.executable, "-m", "tunebench.app.sweep_trial", str(run_dir)],
            env={STORAGE_ENV: study.url, output.BARS_ENV: "off"},
        )
    if code == EXIT_INTERRUPTED:
        raise Interrupted(f"trial {trial.number} was interrupted in {run_dir}")
    if code != 0 or not (run_dir / OUTCOME_FILE).is_file():
        raise PipelineError(
            f"trial {trial.number}: training in {run_dir} failed (exit code {code}); see the message above"
        )
    return Outcome(**read_json(run_dir / OUTCOME_FILE))


# ----------------------------------------------------------------------------- confirmation


def confirm_choice(study: Study, summary: dict[str, Any]) -> PipelineResult:
    """The chosen configuration, once, through the normal pipeline into OUT/confirm: trained again with its first
    seed, evaluated against base on the test split the sweep never read, reported and gated."""
    chosen = summary["chosen"]
    cfg = trial_config(study, study.space.values_of(chosen["params"]), study.asked.train.seed)
    log.info("confirming trial %d on the test split: %s", chosen["number"], chosen["config_line"])
    try:
        return run(cfg, study.out / "confirm", progress=study.opts.progress)
    except KeyboardInterrupt:
        raise Interrupted(
            f"the confirmation run in {study.out / 'confirm'} stopped; every trial is kept. Run the same "
            "command to continue it (finished stages are skipped)"
        ) from None
