"""One typed run configuration: sections, YAML presets, dotted overrides, validation.

Load order: preset YAML -> dotted CLI overrides (``train.lr=1e-4``) -> validation -> resolution.
Every error names the key, the bad value and what is allowed.

This module reads presets and overrides and holds ``load_config``; the rest lives beside it, imported from where it
is defined: the sections and their checks (``config_schema``: ``RunConfig``, ``SamplingConfig``, ...), reading plain
data into them with the practitioner's names (``config_build``), and resolving ``auto`` for this machine
(``config_resolve``).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path
from typing import Any

from tunebench.core.config_build import build, canonical_item, canonical_key, read_aliases, suggest_key, to_dict
from tunebench.core.config_resolve import Machine, resolve
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError, did_you_mean
from tunebench.core.io import package_path, parse_yaml_value, read_yaml, short

CONFIGS_DIR = package_path("configs")


# ----------------------------------------------------------------------------- presets and overrides


def preset_names() -> list[str]:
    """Names of the presets shipped in configs/."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def _fix(path: Path) -> str:
    """What to do about a config file that cannot be read: a run folder's (config.asked.yaml beside it) is restored,
    a preset is fixed."""
    asked = path.parent / "config.asked.yaml"
    if asked.is_file():
        return (
            f"restore {path.name} from a copy; {asked} holds what the run asked for (`tunebench config {asked}` "
            "shows it resolved for this machine)"
        )
    if path.name == "config.yaml" and (path.parent / "stages.json").is_file():  # a run folder's
        return f"restore {path.name} from a copy: it is the config the run's stages were computed with"
    return "fix the file, or start from a shipped preset (`tunebench presets`, `tunebench config smoke`)"


def _read_yaml(path: Path) -> dict[str, Any]:
    """A config file's sections; an empty file is refused, never read as the defaults."""
    data = read_yaml(path, _fix(path), ConfigError)
    if data is None:
        raise ConfigError(
            f"{path}: empty (no settings at all: an interrupted copy?); a config names at least one section, "
            f"e.g. `train: {{max_steps: 60}}`; {_fix(path)}"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of config sections (model, data, lora, train, eval, ...), "
            f"not {type(data).__name__} {short(data, 80)}; {_fix(path)}"
        )
    return data


def resolve_preset_path(preset: str) -> Path:
    """Map a preset name or a YAML path to a file, with a did-you-mean for typos."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = CONFIGS_DIR / f"{preset}.yaml"
    if candidate.exists():
        return candidate
    names = preset_names()
    dym = did_you_mean(preset, names)
    raise ConfigError(f"unknown preset {preset!r}: not a file and not one of {', '.join(names)}.{dym}")


OVERRIDE_MAX = 2**17
"""Characters of one override value: Linux passes no longer argument (MAX_ARG_STRLEN), and PyYAML reads slowly."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-typed value."""
    if "=" not in text:
        raise ConfigError(f"override {short(text)} must look like section.key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {short(text)} has an empty key")
    if len(raw) > OVERRIDE_MAX:
        raise ConfigError(
            f"override {short(key, 80)}: a value of {len(raw):,} characters, more than the {OVERRIDE_MAX:,} a command "
            "line value may be; put long values in a preset file"
        )
    where = f"override {short(key, 80)}"
    value = parse_yaml_value(raw, where, "type the value again", ConfigError) if raw.strip() else ""
    if isinstance(value, str):
        try:  # "1e-4" is a string to YAML 1.1; accept it as a number
            value = ast.literal_eval(value) if value.strip() and value.strip()[0] in "-+.0123456789" else value
        except (ValueError, SyntaxError):
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config mapping (validated afterwards by build)."""
    for text in overrides:
        written, value = parse_override(text)
        path, value = canonical_item(written, value)
        if path is None:  # a switch set to false sets nothing
            continue
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {short(text)}: {short(part)} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return data


def field_type(key: str) -> Any:
    """The type of the field a dotted key names (aliases read as the field they stand for).

    Raises:
        ConfigError: no such field, with a did-you-mean (the same as an unknown key in a preset or override).
    """
    path = canonical_key(key.split("."))
    cls: Any = RunConfig
    for depth, part in enumerate(path):
        names = [f.name for f in dataclasses.fields(cls)]
        prefix = ".".join(path[:depth])
        if part not in names:
            raise ConfigError(
                f"unknown key {'.'.join(path[: depth + 1])!r}{suggest_key(prefix, part, names)} "
                f"(known: {', '.join(names)})",
                key=".".join(path),
            )
        tp = typing.get_type_hints(cls)[part]
        if depth == len(path) - 1:
            return tp
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{key}: {part!r} is a value, not a section", key=key)
        cls = tp
    raise ConfigError(f"{key!r} names a section, not a value", key=key)


def with_values(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with dotted keys set to typed values, coerced and validated as overrides are.

    Raises:
        ConfigError: an unknown key (did-you-mean) or a value its field refuses, naming the key.
    """
    data = to_dict(cfg)
    for key, value in values.items():
        path, value = canonical_item(key.split("."), value)
        if path is None:
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part!r} is a value, not a section", key=key)
        node[path[-1]] = value
    return build(RunConfig, data)


def override_text(key: str, value: Any) -> str:
    """``key=value`` as a command line override that ``parse_override`` reads back as ``value`` (lists of names
    comma-joined, so the line needs no shell quoting)."""
    if isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return f"{key}={text}"


def load_config(
    preset: str | Path, overrides: list[str] | None = None, *, resolved: bool = True, machine: Machine | None = None
) -> RunConfig:
    """Load a preset (name or path), apply overrides, validate, and resolve ``auto`` for this machine.

    Args:
        preset: a preset name (see ``preset_names``) or a YAML path (e.g. a run folder's config.yaml).
        overrides: dotted ``section.key=value`` strings.
        resolved: resolve machine-dependent ``auto`` values (see ``resolve``); False gives what was asked.
        machine: the facts to resolve against (default: this machine).

    Raises:
        ConfigError: unknown preset, bad YAML, unknown key or bad value, or a setting this machine can't honour.
    """
    path = resolve_preset_path(str(preset))
    data = read_aliases(_read_yaml(path), str(path))
    data.setdefault("name", path.stem)
    overrides = list(overrides or [])
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"command line: {e}", key=e.key) from None
    try:
        cfg = build(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{_origin(e.key, overrides, path)}: {e}", key=e.key) from None
    return resolve(cfg, machine)[0] if resolved else cfg


def _origin(key: str | None, overrides: list[str], path: Path) -> str:
    """Where a bad key was set: the command-line override that set it (or a section above it), else the file."""
    if key:
        for text in reversed(overrides):  # the last override of a key is the one that counts
            written = ".".join(canonical_key(parse_override(text)[0]))
            if key == written or key.startswith((written + ".", written + "[")) or written.startswith(key + "."):
                return f"command line ({text if len(text) <= 200 else text[:197] + '...'})"
    return str(path)


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run folder was made with (its config.yaml), without resolving anything again;
    defaults when the folder has none (results copied without their config).

    Raises:
        ConfigError: a config.yaml that is empty, unreadable or invalid (never read as the defaults).
    """
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return RunConfig(name=Path(run_dir).name)
    return load_config(path, resolved=False)


__all__ = [
    "CONFIGS_DIR",
    "apply_overrides",
    "field_type",
    "load_config",
    "override_text",
    "parse_override",
    "preset_names",
    "read_run_config",
    "resolve_preset_path",
    "with_values",
]
