"""Reading a run configuration from plain data: each value coerced to its field's type, each section built (and
validating itself), and the practitioner's names (TRL/PEFT aliases, renamed keys) read as the fields they set.

Every error names the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError, closest, did_you_mean
from tunebench.core.io import short

# the config's one logger (users and tests filter on it), whichever of its modules speaks
log = logging.getLogger("tunebench.core.config")

# ----------------------------------------------------------------------------- building from data


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: {short(value)} is not allowed; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value in allowed:
            return value
        dym = did_you_mean(short(value), allowed, " (did you mean ", "?)")
        raise ConfigError(f"{key}: {short(value)} is not allowed; choose one of {', '.join(map(repr, allowed))}{dym}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {short(value)} is not a mapping")
        return {str(k): str(v) for k, v in value.items()}
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {short(value)} is not a list; expected {_type_name(tp)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {short(value)}")
        return build(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: {short(value)} is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{key}: {short(value)} is not an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}: {short(value)} is not an integer") from None
        if f != int(f):
            raise ConfigError(f"{key}: {short(value)} is not an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {short(value)} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {short(value)} is not a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: {short(value)} is not a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a did-you-mean.

    A key renamed since (``RENAMED``) is read as its new name, so a run folder written before the rename is the
    same config. A value the section's own ``__post_init__`` refuses is named by its full dotted key.
    """
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in _renamed(data, prefix).items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown key {short(full)}{suggest_key(prefix, str(key)[:100], names)} (known: {', '.join(names)})",
                key=full,
            )
        try:
            kwargs[key] = _coerce(value, hints[key], full)
        except ConfigError as e:
            e.key = e.key or full
            raise
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if not prefix or e.key not in names:  # named already (or by the whole section: the caller names it)
            raise
        raise ConfigError(f"{prefix}.{e}", key=f"{prefix}.{e.key}") from None


def _renamed(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` with each key renamed since (``RENAMED``) under its new name, announced once as deprecated."""
    out = dict(data)
    for key in data:
        old = f"{prefix}.{key}" if prefix else str(key)
        if old in RENAMED:
            new = canonical_key(old.split("."))[-1]
            if new in data:
                raise ConfigError(f"{old} and {RENAMED[old]} set the same field; keep {RENAMED[old]}", key=RENAMED[old])
            out[new] = out.pop(key)
    return out


# ----------------------------------------------------------------------------- the practitioner's names

ALIASES: dict[str, str] = {
    # TRL's SFTConfig / transformers' TrainingArguments
    "train.learning_rate": "train.lr",
    "train.per_device_train_batch_size": "train.batch_size",
    "train.gradient_accumulation_steps": "train.grad_accum",
    "train.num_train_epochs": "train.epochs",
    "train.lr_scheduler_type": "train.scheduler",
    "train.optim": "train.optimizer",
    "train.eval_steps": "train.eval_every",
    "train.save_steps": "train.save_every",
    "train.max_seq_length": "data.max_length",  # the data step cuts conversations, so the length lives in data
    "train.max_length": "data.max_length",
    "data.max_seq_length": "data.max_length",
    # PEFT's LoraConfig
    "lora.rank": "lora.r",
    "lora.lora_r": "lora.r",
    "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout",
    # TRL's model arguments
    "model.model_name": "model.ref",
    "model.model_name_or_path": "model.ref",
}
"""TRL/PEFT key -> the field it sets here; accepted in presets and overrides, announced once as "read X as Y"."""

BARE_ALIASES: dict[str, str] = {
    **{a.split(".", 1)[1]: t for a, t in ALIASES.items()},
    **{
        n: f"train.{n}"
        for n in (
            "max_steps",
            "warmup_steps",
            "warmup_ratio",
            "weight_decay",
            "max_grad_norm",
            "seed",
            "packing",
            "padding_free",
            "gradient_checkpointing",
            "logging_steps",
            "report_to",
        )
    },
    **{n: f"lora.{n}" for n in ("r", "target_modules", "use_rslora")},
}
"""The same names without a section (``learning_rate=1e-4``, as TRL's command line takes them)."""

SWITCHES: dict[str, tuple[str, str]] = {
    "bf16": ("model.dtype", "bfloat16"),
    "fp16": ("model.dtype", "float16"),
}
"""TRL's mixed-precision switches (bare or under ``train.``) -> the field and the value ``true`` gives it. ``false``
sets nothing: it does not say which dtype to use instead, so ``model.dtype`` keeps its value (``auto`` by default)."""

RENAMED: dict[str, str] = {
    "eval.generation_cache": "eval.decode_loop",
}
"""Keys renamed since: old key -> new; still read in presets, overrides and run folders, with a deprecation warning
(once per process) naming the new key."""

_ANNOUNCED: set[str] = set()


def switch_of(path: list[str]) -> str | None:
    """The switch (``bf16``, ``fp16``) a key path names, bare or under ``train.``, or None."""
    if len(path) == 1 or (len(path) == 2 and path[0] == "train"):
        return path[-1] if path[-1] in SWITCHES else None
    return None


def canonical_item(path: list[str], value: Any) -> tuple[list[str] | None, Any]:
    """The key path and value an alias stands for: ``canonical_key`` for names, and a switch's value read as the
    field's (``bf16=true`` -> ``model.dtype=bfloat16``); ``(None, None)`` for a switch set to false, which sets
    nothing. Each is announced once per process.

    Raises:
        ConfigError: a switch whose value is not a boolean.
    """
    name = switch_of(path)
    if name is None:
        return canonical_key(path), value
    written, (target, on) = ".".join(path), SWITCHES[name]
    try:
        flag = _coerce(value, bool, written)
    except ConfigError:
        raise ConfigError(f"{written}: {value!r} is not a boolean; true sets {target}={on}", key=written) from None
    _announce(
        f"{written}={str(flag).lower()}",
        f"read {written}=true as {target}={on}"
        if flag
        else f"{written}=false sets nothing: {target} keeps its value (auto: bf16 on CUDA with bf16, fp16 before "
        "Ampere, fp32 on CPU); set model.dtype to choose one",
    )
    return (target.split("."), on) if flag else (None, None)


def _announce(key: str, line: str, warn: bool = False) -> None:
    """Log ``line`` the first time ``key`` is read in this process."""
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        (log.warning if warn else log.info)(line)


def canonical_key(path: list[str]) -> list[str]:
    """The key path an alias or a renamed key stands for (``train.learning_rate`` -> ``train.lr``), logged once per
    process (a renamed key as a deprecation warning). A switch (``bf16``) names the field it sets; its value is
    read by ``canonical_item``."""
    written, head = ".".join(path), ".".join(path[:2])
    if switch_of(path):
        return SWITCHES[path[-1]][0].split(".")
    if len(path) == 1 and path[0] in BARE_ALIASES:
        target = BARE_ALIASES[path[0]]
    elif len(path) >= 2 and head in ALIASES:
        target = ".".join([ALIASES[head], *path[2:]])
    elif len(path) >= 2 and head in RENAMED:
        target = ".".join([RENAMED[head], *path[2:]])
    else:
        return path
    if head in RENAMED:
        _announce(written, f"{written} is deprecated: it is read as {target}, the setting's new name", warn=True)
    else:
        _announce(written, f"read {written} as {target}")
    return target.split(".")


def _sections() -> dict[str, type]:
    return {name: tp for name, tp in _hints(RunConfig).items() if dataclasses.is_dataclass(tp)}


def read_aliases(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A raw config mapping with every alias key moved to the field it names.

    Raises:
        ConfigError: an alias and the field it names are both set (``where`` says in which file).
    """
    out: dict[str, Any] = {}
    written_as: dict[str, str] = {}  # field -> the key that set it, for a clash message
    sections = _sections()
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            out.setdefault(key, {})
            pairs = [([key, str(name)], v) for name, v in value.items()]
        else:
            pairs = [([str(key)], value)]
        for path, v in pairs:
            written = ".".join(path)
            target, v = canonical_item(path, v)
            if target is None:  # a switch set to false
                continue
            node = out
            for part in target[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    problem = f"{short(written)}: {short(part)} is a value, not a section"
                    raise ConfigError(f"{where}: {problem}", key=written)
            field_key = ".".join(target)
            if field_key in written_as:
                raise ConfigError(
                    f"{where}: {written_as[field_key]} and {written} set the same field ({field_key}); keep one",
                    key=field_key,
                )
            written_as[field_key] = written
            node[target[-1]] = v
    return out


def suggest_key(prefix: str, key: str, names: list[str]) -> str:
    """ "; did you mean 'X'" for an unknown key, or "". Compared by the key's own name (a shared ``train.`` prefix
    makes unrelated keys look alike), the practitioner's names ranked first: the name exactly, anywhere (an alias
    before a field: ``rank`` -> ``lora.r``, ``logging_steps`` -> ``train.logging_steps``); then the closest among
    its section's fields and aliases; then among every field and alias, so ``train.lora_alpha`` points at
    ``lora.alpha``. An alias wins a tie."""
    dot = prefix + "." if prefix else ""
    if prefix:
        own_aliases = {a[len(dot) :]: t for a, t in ALIASES.items() if a.startswith(dot)}
        own_fields = {n: dot + n for n in names}
    else:
        own_aliases = {**BARE_ALIASES, **{n: target for n, (target, _) in SWITCHES.items()}}
        own_fields = {n: n for n in names}
    all_aliases = {a.split(".", 1)[1]: t for a, t in ALIASES.items()} | BARE_ALIASES
    all_aliases |= {n: target for n, (target, _) in SWITCHES.items()}
    all_fields = {n: f"{sec}.{n}" for sec, tp in _sections().items() for n in _hints(tp)}
    for table in (own_aliases, own_fields, all_aliases, all_fields):
        if key in table:
            return f"; did you mean {table[key]!r}"
    for aliases, fields in ((own_aliases, own_fields), (all_aliases, all_fields)):
        hint = closest(key, [*fields, *aliases], first=aliases)
        if hint:
            return f"; did you mean {aliases.get(hint, fields.get(hint))!r}"
    return ""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (for JSON/YAML and fingerprints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Inverse of to_dict (used when reading a run folder)."""
    return build(RunConfig, data)


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
