"""A sweep's study: what `tunebench sweep` was asked (``SweepOptions``), an open study and what its trials share
(``Study``), what makes two invocations the same study, opening it in its storage (created once, checked
after), how workers claim its trials (the heartbeat that tells a lost trial from a running one), the most steps a
trial can take, and the data stage every trial shares."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from tunebench.app.pipeline import resolve_template
from tunebench.app.stages import Stages
from tunebench.app.sweep_space import Space
from tunebench.app.sweep_storage import open_storage, shown_url, study_lock
from tunebench.app.sweep_trial import make_pruner
from tunebench.core.config_build import to_dict
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError
from tunebench.core.io import atomic_write_json, atomic_write_text, fingerprint, read_json
from tunebench.data import conversations as data_mod
from tunebench.data.conversations import PreparedData, prepared_from_dict, prepared_to_dict
from tunebench.data.data_report import render_report
from tunebench.evals.validation import require_no_test
from tunebench.models.loading import load_tokenizer, resolve_model

log = logging.getLogger(__name__)

HEARTBEAT_S = 60
"""A running trial's worker records a heartbeat this often (``--heartbeat``); one silent for LOST_AFTER beats lost
its worker (killed, its machine gone): another worker marks it failed and runs its configuration again."""
LOST_AFTER = 3
"""Beats a trial's heartbeat may stay unchanged before it counts as lost."""
HEARTBEAT_ATTR = "heartbeat"
"""The trial's user attribute the heartbeat rewrites (the writer's clock; only its changes are read)."""
POLL_S = 10
"""How often, at most, a worker with nothing left to ask looks again at the trials other workers run."""


@dataclass
class SweepOptions:
    """What `tunebench sweep` was asked."""

    preset: str
    trials: int
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    space: str | None = None
    storage: str | None = None
    study: str | None = None
    seeds: int = 1
    pruner: str = "median"
    sampler_seed: int | None = None
    confirm: bool = True
    progress: bool = True
    heartbeat: int = HEARTBEAT_S
    """Seconds between a running trial's heartbeats; every worker of a study gives the same."""


@dataclass
class Study:
    """An open study and everything its trials share."""

    optuna: Any
    storage: Any
    url: str
    opts: SweepOptions
    out: Path
    asked: RunConfig
    """The preset and overrides as asked (``auto`` unresolved): what each trial's values are applied to."""
    space: Space
    prepared: PreparedData
    data_path: Path
    max_steps: int


def study_identity(asked: RunConfig, space: Space, opts: SweepOptions) -> dict[str, Any]:
    """What makes two invocations the same study: the config every trial starts from (trackers aside), the space,
    the seeds and the pruner."""
    config = to_dict(asked)
    config["train"].pop("report_to", None)
    if config["train"].get("warmup_ratio") is None:  # added since: unset, a study begun before it is the same
        config["train"].pop("warmup_ratio", None)
    return {
        "config": fingerprint(config),
        "space": space.fingerprint(),
        "seeds": opts.seeds,
        "pruner": opts.pruner,
        "preset": opts.preset,
        "overrides": list(opts.overrides),
        "heartbeat": opts.heartbeat,
    }


def open_study(url: str, name: str, opts: SweepOptions, identity: dict[str, Any]) -> tuple[Any, Any]:
    """Create the study, or load it when it exists (``load_if_exists``), and check it is this sweep's.

    Raises:
        ConfigError: optuna missing, a storage that cannot be opened (named, password hidden), or a study of that
            name made with another config, space, seeds, pruner or heartbeat.
    """
    try:
        import optuna  # optional: the sweep extra
        import sqlalchemy.exc  # optional: comes with optuna
    except ImportError as e:
        raise ConfigError(f"tunebench sweep needs optuna ({e}): pip install 'tunebench[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with study_lock(url):  # workers starting together: one creates the tables and the study, the others load it
            storage = open_storage(url)
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                direction="minimize",
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=opts.sampler_seed),
                pruner=make_pruner(opts.pruner, 0),
            )
            recorded = study.user_attrs.get("tunebench")
            if recorded is None:
                study.set_user_attr("tunebench", identity)
    except (ImportError, ValueError, RuntimeError, OSError, sqlalchemy.exc.SQLAlchemyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--storage {shown_url(url)}: cannot open the study storage ({type(e).__name__}: "
            f"{reason[:300]}). Check the URL, that the database server is up and reachable (a journal: that its "
            "folder is mounted), and that its driver is installed (postgresql://: pip install 'psycopg[binary]', or "
            "postgresql+psycopg2:// with psycopg2-binary; mysql://: PyMySQL)"
        ) from None
    if recorded is not None:
        recorded = {"heartbeat": HEARTBEAT_S, **recorded}  # studies made before --heartbeat beat every 60 s
        differ = [k for k in ("config", "space", "seeds", "pruner", "heartbeat") if recorded.get(k) != identity[k]]
        if differ:
            raise ConfigError(
                f"study {name!r} in {shown_url(url)} was made with another {', '.join(differ)} (by `tunebench sweep "
                f"{recorded.get('preset')} {' '.join(recorded.get('overrides', []))}`"
                + (f" --heartbeat {recorded['heartbeat']}" if "heartbeat" in differ else "")
                + "); resume it with the same command, or start another study with --out DIR or --study NAME"
            )
    return study, storage


# ----------------------------------------------------------------------------- claiming trials


def claim_next(study: Any, storage: Any, url: str, target: int, lost: LostTrials) -> tuple[Any | None, int, int]:
    """Under the study's lock: queue again what was interrupted, fail lost trials (queued again too), count, and ask
    for the next trial unless the finished and running trials already make ``target``.

    Returns:
        (the trial to run, or None; finished trials, complete or pruned; trials running in any worker).
    """
    import optuna  # optional: the sweep extra

    states = optuna.trial.TrialState
    with study_lock(url):
        requeue_interrupted(study)
        lost.fail(study, storage)
        trials = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.RUNNING))
        running = sum(t.state == states.RUNNING for t in trials)
        trial = study.ask() if len(trials) < target else None  # pops a queued retry first
    return trial, len(trials) - running, running


def requeue_interrupted(study: Any) -> None:
    """Queue the configuration of each trial an interrupt cut short, once, so the next run tries it first."""
    import optuna  # optional: the sweep extra

    done = set(study.user_attrs.get("requeued", []))
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if t.user_attrs.get("interrupted") and t.number not in done and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            done.add(t.number)
    if done != set(study.user_attrs.get("requeued", [])):
        study.set_user_attr("requeued", sorted(done))


class LostTrials:
    """Running trials whose worker is gone: their heartbeat unchanged for LOST_AFTER beats, as this worker's own
    monotonic clock sees it (the machines' clocks need not agree).

    Args:
        every: the study's heartbeat, in seconds.
    """

    def __init__(self, every: float) -> None:
        self.grace = LOST_AFTER * every
        self.seen: dict[int, tuple[Any, float]] = {}
        """Trial id: (its heartbeat when it last changed, this worker's monotonic time then)."""

    def fail(self, study: Any, storage: Any) -> None:
        """Mark each lost trial failed, and queue its configuration once more (unless it was itself a retry)."""
        import optuna  # optional: the sweep extra

        now, lost = time.monotonic(), []
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in running:
            beat, last = t.user_attrs.get(HEARTBEAT_ATTR), self.seen.get(t._trial_id)
            if last is None or last[0] != beat:
                self.seen[t._trial_id] = (beat, now)
            elif now - last[1] > self.grace:
                lost.append(t)
        self.seen = {t._trial_id: self.seen[t._trial_id] for t in running if t not in lost}
        for t in lost:
            self._fail_one(study, storage, t)

    def _fail_one(self, study: Any, storage: Any, t: Any) -> None:
        import optuna  # optional: the sweep extra

        failed = optuna.trial.TrialState.FAIL
        why = f"its worker stopped: no heartbeat for {self.grace:g} s (killed, or its machine lost)"
        try:
            storage.set_trial_user_attr(t._trial_id, "error", why)
            storage.set_trial_user_attr(t._trial_id, "lost", True)
            storage.set_trial_state_values(t._trial_id, failed)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # it finished after all
        if storage.get_trial(t._trial_id).state != failed:
            return  # a journal keeps the first end written: its worker's, just before ours
        again = bool(t.params) and t.user_attrs.get("retry_of") is None
        if again:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log.warning("trial %d failed: %s%s", t.number, why, "; its configuration runs again" if again else "")


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int, every: float) -> Iterator[None]:
    """Record the trial's heartbeat every ``every`` seconds while it runs, so a worker that dies (SIGKILL, a lost
    machine) leaves a trial the other workers fail (``LostTrials``) instead of one that looks running for ever."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next; never stops the trial
                storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())

    storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# ----------------------------------------------------------------------------- the study's shared parts


def max_steps(asked: RunConfig, space: Space) -> int:
    """The most optimizer steps a trial can take (Hyperband's maximum resource); 0 when trials count epochs."""
    p = next((p for p in space.params if p.key == "train.max_steps"), None)
    if p is None:
        return max(asked.train.max_steps, 0)
    return int(max(p.choices) if p.kind == "categorical" else p.high)


def prepare_data(cfg: RunConfig, out: Path) -> tuple[PreparedData, Path]:
    """The data stage, once per study (its fingerprint in OUT/stages.json), without the test split: trials train on
    it and the objective reads its validation split. Workers sharing the folder take turns."""
    source = resolve_model(cfg.model.ref, cfg.model.revision)
    cfg = resolve_template(cfg, source)
    data_dir = out / "data"
    path = data_dir / "prepared.json"

    def data() -> None:
        tok, tname = load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)
        prepared = data_mod.prepare(tok, tname, cfg.data, None, eval_every=cfg.train.eval_every)
        kept = PreparedData(
            {**prepared.encoded, "test": []}, {**prepared.conversations, "test": []}, prepared.template, prepared.report
        )  # the test split never enters the sweep
        if not kept.encoded.get("validation"):
            raise ConfigError(
                "the validation split is empty: the sweep has nothing to select on; raise "
                "data.max_validation or data.validation_fraction"
            )
        atomic_write_json(path, prepared_to_dict(kept))
        atomic_write_json(data_dir / "data_report.json", kept.report)
        atomic_write_text(data_dir / "data_report.md", render_report(kept.report))

    fp = fingerprint([to_dict(cfg.data), cfg.model.chat_template, source.identity])
    with FileLock(str(out / ".data.lock")):
        Stages(out).run("data", fp, [path, data_dir / "data_report.json"], data, bar=False)  # the sweep's one bar
    prepared = prepared_from_dict(read_json(path))
    require_no_test(prepared, str(path))
    return prepared, path
