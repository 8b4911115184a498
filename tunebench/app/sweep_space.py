"""The search space of `tunebench sweep`: a YAML of dotted config keys, each an Optuna distribution.

    lora.r: {type: categorical, choices: [8, 16, 32]}
    train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    lora.target_modules: {type: categorical, choices: [[q_proj, v_proj], [q_proj, k_proj, v_proj, o_proj]]}

Keys are read like overrides (TRL/PEFT aliases included) and every choice and bound is validated by the config's
own checks, so a space fails before anything trains, with the same did-you-mean a preset gets. Only ``lora.*``
and ``train.*`` tune: the data stage runs once per study and the objective must stay the same for every trial.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from tunebench.core.config import CONFIGS_DIR, field_type, override_text, with_values
from tunebench.core.config_build import canonical_key
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError, did_you_mean
from tunebench.core.io import fingerprint, read_yaml, short

SPACES_DIR = CONFIGS_DIR / "spaces"
KINDS = ("categorical", "float", "int")
SPEC_KEYS = {
    "categorical": ("type", "choices"),
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
}
OLD_KINDS = {
    "uniform": "write type: float",
    "loguniform": "write type: float with log: true",
    "log_uniform": "write type: float with log: true",
    "discrete_uniform": "write type: float with step",
    "int_uniform": "write type: int",
    "choice": "write type: categorical",
}
"""Distribution names of older Optuna and other tools, and what they are here."""
TUNABLE_SECTIONS = ("lora", "train")
NOT_TUNABLE = {
    "train.seed": "seeds are repeated with --seeds K, not searched",
    "train.report_to": "trackers watch a trial, they are not a setting of it",
    "train.backend": "the backend changes speed, not the model: choose it once with train.backend=...",
}


@dataclass(frozen=True)
class Param:
    """One dimension of the space."""

    key: str
    """The dotted config key (canonical: aliases read as the field they set)."""
    kind: Literal["categorical", "float", "int"]
    choices: tuple[Any, ...] = ()
    """categorical: the config values (lists of module names as tuples)."""
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def fixed(self) -> bool:
        """One value only: applied to every trial, not searched."""
        return len(self.choices) == 1 if self.kind == "categorical" else self.low == self.high

    def labels(self) -> list[Any]:
        """Categorical choices as Optuna stores them (None, bool, int, float or str: a list becomes its text)."""
        return [",".join(c) if isinstance(c, tuple) else c for c in self.choices]

    def value_of(self, stored: Any) -> Any:
        """The config value of an Optuna parameter value."""
        if self.kind == "categorical":
            c = self.choices[self.labels().index(stored)]
            return list(c) if isinstance(c, tuple) else c
        return int(stored) if self.kind == "int" else float(stored)

    def suggest(self, trial: Any) -> Any:
        """Draw this dimension from an Optuna trial; returns the config value."""
        if self.fixed:
            return self.value_of(self.labels()[0] if self.kind == "categorical" else self.low)
        if self.kind == "categorical":
            return self.value_of(trial.suggest_categorical(self.key, self.labels()))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(str(v) for v in self.labels())
        scale = "log" if self.log else (f"step {self.step}" if self.step else "uniform")
        return f"{self.kind} in [{self.low}, {self.high}] ({scale})"

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Space:
    """The validated space: what each trial draws, and what every trial shares."""

    params: tuple[Param, ...]
    source: str
    """The file it was read from."""

    @property
    def searched(self) -> list[Param]:
        return [p for p in self.params if not p.fixed]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Every dimension's config value for this trial (fixed ones included)."""
        return {p.key: p.suggest(trial) for p in self.params}

    def values_of(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Config values of a finished trial's Optuna params (fixed dimensions added)."""
        out = {}
        for p in self.params:
            if p.fixed:
                out[p.key] = p.suggest(None)
            elif p.key in stored:
                out[p.key] = p.value_of(stored[p.key])
        return out

    def to_dict(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.params]

    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())


def overrides_of(values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides that give a trial's configuration on the command line."""
    return [override_text(k, v) for k, v in values.items()]


def default_space(preset: str) -> Path | None:
    """The shipped space of a preset (``configs/spaces/<name>.yaml``), when there is one."""
    path = SPACES_DIR / f"{Path(preset).stem}.yaml"
    return path if path.is_file() else None


SPACE_FIX = "give a YAML of dotted keys (e.g. lora.r: {type: categorical, choices: [8, 16, 32]})"


def load_space(path: str | Path, base: RunConfig) -> Space:
    """Read and validate a space file against the config every trial starts from.

    Raises:
        ConfigError: not YAML or not a mapping; an unknown key (did-you-mean) or one that cannot be tuned; an unknown
            distribution type or field; bad bounds; a choice or bound the config refuses; nothing left to tune.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--space {path}: no such file; give a YAML of dotted keys "
            "(e.g. lora.r: {type: categorical, choices: [8, 16, 32]})"
        )
    data = read_yaml(path, SPACE_FIX, ConfigError)
    if data is None or data == {}:  # an empty file too
        raise ConfigError(
            f"{path}: the space is empty, so nothing would be tuned; give at least one key with "
            "two or more values (e.g. train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true})"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of dotted config keys to distributions")
    params = [_param(path, key, spec, base) for key, spec in _flatten(data).items()]
    keys = [p.key for p in params]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ConfigError(f"{path}: {', '.join(dup)} set more than once (an alias and its field?); keep one")
    space = Space(tuple(params), str(path))
    if not space.searched:
        raise ConfigError(
            f"{path}: every key has a single value ({', '.join(keys)}), so the space leaves nothing to "
            "tune; give some key two or more choices, or low < high"
        )
    return space


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{lora: {r: {...}}}`` and ``{lora.r: {...}}`` alike: a mapping without ``type`` is a section."""
    out: dict[str, Any] = {}
    for key, spec in data.items():
        full = f"{prefix}{key}"
        if isinstance(spec, dict) and spec and "type" not in spec and all(isinstance(v, dict) for v in spec.values()):
            out.update(_flatten(spec, full + "."))
        else:
            out[full] = spec
    return out


def _param(path: Path, written: str, spec: Any, base: RunConfig) -> Param:
    where = f"{path}: {written[:200]}"
    try:
        tp = field_type(str(written))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}", key=written) from None
    key = ".".join(canonical_key(str(written).split(".")))
    if key.split(".")[0] not in TUNABLE_SECTIONS or key in NOT_TUNABLE:
        why = NOT_TUNABLE.get(
            key,
            "the data stage runs once per study and the objective must stay the same for "
            "every trial, so only lora.* and train.* keys can be tuned; set it with key=value instead",
        )
        raise ConfigError(f"{where}: cannot be tuned: {why}", key=key)
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: {short(spec)} is not a distribution; write a mapping with type: "
            f"{' | '.join(KINDS)} (e.g. {{type: categorical, choices: [8, 16]}})",
            key=key,
        )
    kind = spec.get("type")
    if kind not in KINDS:
        hint = OLD_KINDS.get(str(kind)) or did_you_mean(str(kind), KINDS, "did you mean ", "?")
        raise ConfigError(
            f"{where}: type {short(kind)} is not a distribution; choose one of {', '.join(KINDS)}"
            + (f" ({hint})" if hint else ""),
            key=key,
        )
    for k in spec:
        if k not in SPEC_KEYS[kind]:
            raise ConfigError(
                f"{where}: unknown field {short(k)} of a {kind} distribution (known: "
                f"{', '.join(SPEC_KEYS[kind])}){did_you_mean(str(k), SPEC_KEYS[kind], '; did you mean ', '')}",
                key=key,
            )
    param = _categorical(where, key, spec, tp) if kind == "categorical" else _range(where, key, kind, spec, tp)
    values = param.choices if kind == "categorical" else (param.low, param.high)
    for v in values:  # every value the trials can take must be one the config accepts
        value = list(v) if isinstance(v, tuple) else v
        try:
            with_values(base, {key: value})
        except ConfigError as e:
            raise ConfigError(f"{where}: {short(value)} is refused by the config ({e})", key=key) from None
    return param


def _categorical(where: str, key: str, spec: dict[str, Any], tp: Any) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: a categorical distribution needs choices: a non-empty list", key=key)
    is_list = get_origin(tp) is list
    out = []
    for c in choices:
        if is_list:
            c = [s.strip() for s in c.split(",")] if isinstance(c, str) else c
            if not isinstance(c, list) or not all(isinstance(s, str) for s in c):
                raise ConfigError(f"{where}: each choice must be a list of names, got {short(c)}", key=key)
            out.append(tuple(c))
        elif isinstance(c, (list, dict)):
            raise ConfigError(f"{where}: {short(c)} is not a single value; {key} takes {_type(tp)}", key=key)
        else:
            out.append(c)
    if len(set(out)) != len(out):
        raise ConfigError(f"{where}: choices repeat a value: {choices}", key=key)
    return Param(key, "categorical", tuple(out))


def _range(where: str, key: str, kind: str, spec: dict[str, Any], tp: Any) -> Param:
    number = int if kind == "int" else float
    field_kind = _numeric_kind(tp)
    if field_kind is None:
        raise ConfigError(
            f"{where}: a {kind} range cannot set {key}, which takes {_type(tp)}; use type: categorical", key=key
        )
    if field_kind != kind:
        raise ConfigError(
            f"{where}: {key} is {'an integer' if field_kind == 'int' else 'a float'} field; use type: "
            f"{field_kind} (or categorical)",
            key=key,
        )
    bounds = {}
    for b in ("low", "high"):
        v = spec.get(b)
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not math.isfinite(v)
            or (number is int and v != int(v))
        ):
            raise ConfigError(
                f"{where}: {b} must be a{'n integer' if number is int else ' number'}, got {short(v)}", key=key
            )
        bounds[b] = number(v)
    low, high = bounds["low"], bounds["high"]
    if low > high:
        raise ConfigError(f"{where}: bad bounds: low {low} is above high {high}", key=key)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {short(log)}", key=key)
    if log and low <= 0:
        raise ConfigError(f"{where}: bad bounds: a log range needs low > 0, got {low}", key=key)
    step = spec.get("step")
    if step is not None:
        if log:
            raise ConfigError(
                f"{where}: step and log: true cannot be combined (Optuna draws a log range without a grid); drop one",
                key=key,
            )
        if (
            isinstance(step, bool)
            or not isinstance(step, (int, float))
            or step <= 0
            or (number is int and step != int(step))
        ):
            raise ConfigError(
                f"{where}: step must be a positive {'integer' if number is int else 'number'}, got {short(step)}",
                key=key,
            )
        step = number(step)
    return Param(key, kind, (), low, high, log, step)  # type: ignore[arg-type]


def _numeric_kind(tp: Any) -> str | None:
    """int or float for a field of that type (optional or not), else None."""
    args = (
        [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (typing.Union, types.UnionType) else [tp]
    )
    if args == [int]:
        return "int"
    if args == [float]:
        return "float"
    return None


def _type(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return "a list"
    return getattr(tp, "__name__", str(tp))
