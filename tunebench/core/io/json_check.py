"""JSON data checked against a type annotation all the way down, dataclasses built: every file a run folder holds
is read back through ``check_json``, so a value of the wrong type exits 2 naming its field, not a traceback later.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

from tunebench.core.errors import RunFileError, TunebenchError

REWRITE_HINT = "re-run the command that wrote it"
_MISSING = object()


def check_json(data: Any, hint: Any, where: str, fix: str = REWRITE_HINT) -> Any:
    """Check JSON data against a type annotation and return it, dataclasses built: ``check_json(d, Results, ...)``,
    ``check_json(d, dict[str, str], ...)``. Nested dataclasses, TypedDicts, ``X | None``, ``Literal``,
    ``list[...]`` and ``dict[str, ...]`` are checked all the way down; keys a dataclass lacks are ignored, so a
    newer writer's additions still read.

    Raises:
        RunFileError: the first value of the wrong type, or a required field missing, named by its path
            (``metrics[0] (perplexity/test).value``), with ``fix``.
    """
    try:
        return _checker(hint)(data)
    except _Mismatch as m:
        field = m.path.lstrip(".") or "the top level"
        problem = (
            f"{field} is missing (it must be {_describe(m.hint)})"
            if m.got is _MISSING
            else f"{field} must be {_describe(m.hint)}, got {show_json(m.got)}"
        )
        raise RunFileError(f"{where}: {problem}; {fix}") from None


class _Mismatch(TunebenchError):
    """A value that is not of its annotation; internal to check_json, which re-raises it as RunFileError."""

    def __init__(self, hint: Any, got: Any = None, path: str = ""):
        super().__init__(f"must be {_describe(hint)}")
        self.hint, self.got, self.path = hint, got, path

    def within(self, prefix: str) -> _Mismatch:
        self.path = prefix + self.path
        return self


Check = typing.Callable[[Any], Any]
_SCALARS = {float: (float, int), int: (int,), bool: (bool,), str: (str,), dict: (dict,), list: (list,)}
"""Exact JSON types each annotation accepts: ``type(x) in ...``, so true is never a number."""


@functools.cache
def _checker(hint: Any) -> Check:
    """A function that checks (and for dataclasses builds) a JSON value of annotation ``hint``; compiled once per
    annotation, because a results file holds ~10^4 per-item records."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return lambda v: v
    if origin in (typing.Union, types.UnionType):
        return _union_checker(hint, args)
    if origin is typing.Literal:

        def literal(v: Any) -> Any:
            if isinstance(v, (dict, list)) or v not in args:
                raise _Mismatch(hint, v)
            return v

        return literal
    if dataclasses.is_dataclass(hint) or typing.is_typeddict(hint):
        return _record_checker(hint)
    allowed = _SCALARS.get(origin or hint)
    if allowed is None:
        raise TypeError(f"check_json cannot check annotation {hint!r}")
    inner = _checker(args[-1]) if args and args[-1] is not Any else None

    def check(v: Any) -> Any:
        if type(v) not in allowed:
            raise _Mismatch(hint, v)
        if inner is None:
            return v
        if type(v) is list:
            return [_within(inner, x, f"[{k}]{_label(x)}") for k, x in enumerate(v)]
        return {k: _within(inner, x, f".{k}") for k, x in v.items()}

    return check


def _within(check: Check, value: Any, where: str) -> Any:
    try:
        return check(value)
    except _Mismatch as m:
        raise m.within(where) from None


def _union_checker(hint: Any, args: tuple[Any, ...]) -> Check:
    nullable = type(None) in args
    options = [_checker(a) for a in args if a is not type(None)]

    def check(v: Any) -> Any:
        if v is None and nullable:
            return None
        deeper = None
        for option in options:
            try:
                return option(v)
            except _Mismatch as m:  # an option that took the value's kind but not its contents says more
                deeper = deeper or (m if m.path else None)
        raise deeper or _Mismatch(hint, v)

    return check


def _record_checker(cls: type) -> Check:
    hints = typing.get_type_hints(cls)
    if typing.is_typeddict(cls):
        specs = [(k, _checker(hints[k]), k in cls.__required_keys__) for k in hints]  # type: ignore[attr-defined]
    else:
        specs = [
            (
                f.name,
                _checker(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        ]
    typed_dict = typing.is_typeddict(cls)

    def check(v: Any) -> Any:
        if type(v) is not dict:
            raise _Mismatch(cls, v)
        kwargs = {}
        for name, field_check, required in specs:
            if name in v:
                kwargs[name] = _within(field_check, v[name], f".{name}")
            elif required:
                raise _Mismatch(hints[name], _MISSING, f".{name}")
        return v if typed_dict else cls(**kwargs)

    return check


def _label(value: Any) -> str:
    """`` (perplexity/test)`` for a list element that names itself, so the path says which metric."""
    name = value.get("name", value.get("metric")) if isinstance(value, dict) else None
    return f" ({name})" if isinstance(name, str) else ""


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {
        float: "a number",
        int: "an integer",
        bool: "true or false",
        str: "a string",
        type(None): "null",
        list: "a list",
        dict: "an object",
    }
    if dataclasses.is_dataclass(hint) or typing.is_typeddict(hint):
        return "an object"
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def show_json(value: Any) -> str:
    """A JSON value, short, for messages: null, an object, a list of 3, "high", 1.5."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, str) and len(value) > 60:  # dump only what is shown: a value may be megabytes long
        value = value[:60]
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."
