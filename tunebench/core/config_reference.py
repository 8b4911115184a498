"""The configuration reference, generated from the config sections themselves (never copied by hand).

Each section of ``RunConfig`` becomes a Markdown table: the dotted key, its type (a ``Literal``'s choices spelled
out), its default and its one-line field doc; the practitioner's names that set a key (``core.config_build``'s
aliases) follow the tables. ``docs/hooks/config_reference.py`` renders it into the docs at build time and
``tunebench config --reference`` prints it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from tunebench.core import config_build, config_schema
from tunebench.core.markdown import table

PLACEHOLDER = "<!-- tunebench:config-reference -->"
"""Where the docs page wants the generated reference."""


def _type_text(tp: Any) -> str:
    """``int``, ``float | null``, ``one of auto, on, off``, ``list of str`` ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or `null`" if type(None) in args else "")
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return "list of " + (_type_text(inner[0]) if inner else "values")
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"section `{tp.__name__}`"
    return f"`{getattr(tp, '__name__', str(tp))}`"


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(value):
            return "(section)"
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [dataclasses.asdict(v) for v in value]
    else:
        return "(required)"
    text = json.dumps(value, default=str, ensure_ascii=False)
    return f"`{text if len(text) <= 80 else text[:77] + '...'}`"


def section_rows(cls: type, prefix: str) -> list[list[str]]:
    """One row per field of ``cls`` (nested sections flattened under their dotted prefix)."""
    hints = typing.get_type_hints(cls, vars(config_schema))
    docs = config_schema.field_docs(cls)
    rows: list[list[str]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += section_rows(tp, key + ".")
            continue
        rows.append([f"`{key}`", _type_text(tp), _default_text(f), docs.get(f.name, "")])
    return rows


def alias_rows() -> list[list[str]]:
    """The other names a key is read under: TRL/PEFT names with their section, and bare ones."""
    out = [[f"`{a}`", f"`{t}`"] for a, t in sorted(config_build.ALIASES.items())]
    out += [[f"`{a}`", f"`{t}`"] for a, t in sorted(config_build.BARE_ALIASES.items())]
    out += [[f"`{a}` (renamed)", f"`{t}`"] for a, t in sorted(config_build.RENAMED.items())]
    return out


def reference_markdown() -> str:
    """The whole reference: one table per section of ``RunConfig``, then the aliases."""
    hints = typing.get_type_hints(config_schema.RunConfig, vars(config_schema))
    docs = config_schema.field_docs(config_schema.RunConfig)
    parts = []
    top = []
    for f in dataclasses.fields(config_schema.RunConfig):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            doc = (tp.__doc__ or "").strip().splitlines()[0]
            parts.append(f"### `{f.name}`\n\n{doc}\n\n" + table(section_rows(tp, f"{f.name}."), _HEADERS) + "\n")
        else:
            top.append([f"`{f.name}`", _type_text(tp), _default_text(f), docs.get(f.name, "")])
    head = "### Top level\n\n" + table(top, _HEADERS) + "\n"
    aliases = (
        "### Other names\n\nRead as the key they stand for, with one log line each (`read X as Y`):\n\n"
        + table(alias_rows(), ["name", "sets"])
        + "\n"
    )
    return "\n".join([head, *parts, aliases])


_HEADERS = ["key", "type", "default", "what it does"]
