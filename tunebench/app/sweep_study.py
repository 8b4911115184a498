"""A sweep's study: what makes two invocations the same study, opening it in its storage (created once, checked
after), the most steps a trial can take, and the data stage every trial shares."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from tunebench.app.pipeline import Stages, resolve_template
from tunebench.app.sweep_space import Space
from tunebench.app.sweep_trial import engine_kwargs, make_pruner, shown_url
from tunebench.core.config import RunConfig, to_dict
from tunebench.core.errors import ConfigError
from tunebench.core.io import atomic_write_json, atomic_write_text, fingerprint, read_json
from tunebench.data import conversations as data_mod
from tunebench.data.conversations import PreparedData, prepared_from_dict, prepared_to_dict
from tunebench.evals.validation import require_no_test
from tunebench.models.loading import load_tokenizer, resolve_model

if TYPE_CHECKING:
    from tunebench.app.sweep import SweepOptions

HEARTBEAT_S = 60
"""A running trial records a heartbeat this often; one silent for 3 beats (its worker died) is marked failed."""


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
    }


def open_study(url: str, name: str, opts: SweepOptions, identity: dict[str, Any]) -> tuple[Any, Any]:
    """Create the study, or load it when it exists (``load_if_exists``), and check it is this sweep's.

    Raises:
        ConfigError: optuna missing, a storage that cannot be opened (named, password hidden), or a study of that
            name made with another config, space, seeds or pruner.
    """
    try:
        import optuna  # optional: the sweep extra
        import sqlalchemy.exc  # optional: comes with optuna
    except ImportError as e:
        raise ConfigError(f"tunebench sweep needs optuna ({e}): pip install 'tunebench[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the heartbeat is experimental, and documented for Study.optimize: here each trial records its own (heartbeat())
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    try:
        with _creation_lock(url):
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs(url), heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S
            )
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                direction="minimize",
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=opts.sampler_seed),
                pruner=make_pruner(opts.pruner, 0),
            )
    except (ImportError, ValueError, RuntimeError, OSError, sqlalchemy.exc.SQLAlchemyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--storage {shown_url(url)}: cannot open the study storage ({type(e).__name__}: "
            f"{reason[:300]}). Check the URL, that the database server is up and reachable, and that its "
            "driver is installed (postgresql: psycopg2-binary, mysql: PyMySQL)"
        ) from None
    recorded = study.user_attrs.get("tunebench")
    if recorded is None:
        study.set_user_attr("tunebench", identity)
    else:
        differ = [k for k in ("config", "space", "seeds", "pruner") if recorded.get(k) != identity[k]]
        if differ:
            raise ConfigError(
                f"study {name!r} in {shown_url(url)} was made with another {', '.join(differ)} (by `tunebench sweep "
                f"{recorded.get('preset')} {' '.join(recorded.get('overrides', []))}`); resume it with the same "
                "command, or start another study with --out DIR or --study NAME"
            )
    return study, storage


def _creation_lock(url: str) -> contextlib.AbstractContextManager[Any]:
    """Workers starting together on one SQLite file create its tables and the study one at a time, so neither sees
    the other's half-made schema; a database server orders that itself."""
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if path is None or not path.parent.is_dir():
        return contextlib.nullcontext()
    return FileLock(str(path) + ".lock")


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
        atomic_write_text(data_dir / "data_report.md", data_mod.render_report(kept.report))

    fp = fingerprint([to_dict(cfg.data), cfg.model.chat_template, source.identity])
    with FileLock(str(out / ".data.lock")):
        Stages(out).run("data", fp, [path, data_dir / "data_report.json"], data)
    prepared = prepared_from_dict(read_json(path))
    require_no_test(prepared, str(path))
    return prepared, path
