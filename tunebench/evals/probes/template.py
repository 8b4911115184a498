"""The probe files' machinery: YAML that remembers line numbers, and Jinja rendered in an immutable sandbox.

Every error names the file and line of the template it comes from (``_Src``); a probe file cannot reach Python
internals, and a misspelt variable is an error rather than an empty string (StrictUndefined).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from tunebench.core.errors import ProbeError, ProbeSecurityError, did_you_mean
from tunebench.core.io import StrictLoader, short

MAX_PRODUCT = 10**6
"""Items or characters one ``*`` may make, and the largest exponent ``**`` takes: a short template must not grow
into gigabytes (the sandbox limits ``range`` alone)."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with ``*`` and ``**`` held to MAX_PRODUCT."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_PRODUCT:
            raise SecurityError(f"an exponent of {short(right, 40)} is beyond what a template may compute")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_PRODUCT:
                    raise SecurityError(f"repeating {len(seq)} items {n} times is beyond what a template may make")
        return super().call_binop(context, operator, left, right)


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False)


# ----------------------------------------------------------------------------- YAML with line numbers


class _Map(dict):
    """A YAML mapping that remembers its line and where each value starts (1-based)."""

    line: int = 0
    value_lines: dict[Any, int]
    block: dict[Any, bool]


class _Loader(StrictLoader):
    """SafeLoader (no Python objects can be built, no alias expanded, no deep nesting) that records source lines of
    mappings."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    m = _Map()
    m.line, m.value_lines, m.block = node.start_mark.line + 1, {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (dict, list)):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping is used as a key (an unquoted '{{ ... }}'?)", key_node.start_mark
            )
        m[key] = loader.construct_object(value_node, deep=True)
        m.value_lines[key] = value_node.start_mark.line + 1
        # a literal/folded block's text starts on the line after its '|' or '>'
        m.block[key] = getattr(value_node, "style", None) in ("|", ">")
    return m


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


@dataclass(frozen=True)
class _Src:
    """Where a template's text sits in its file."""

    path: Path
    line: int
    block: bool = False

    @classmethod
    def of(cls, path: Path, parent: Any, key: str) -> _Src:
        lines = getattr(parent, "value_lines", {})
        return cls(path, lines.get(key, getattr(parent, "line", 0)), getattr(parent, "block", {}).get(key, False))

    def at(self, template_line: int | None = None) -> str:
        if not template_line:
            return f"{self.path}:{self.line}"
        return f"{self.path}:{self.line + template_line - (0 if self.block else 1)}"


def _plain(value: Any) -> Any:
    """Line-tracking mappings back to plain dicts (what templates and JSON see)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def _dym(name: str, known: list[str]) -> str:
    return did_you_mean(str(name), known, " (did you mean ", "?)")


# ----------------------------------------------------------------------------- Jinja in a sandbox


def _template_line(exc: BaseException) -> int | None:
    """The template line a render error came from (Jinja rewrites tracebacks to template lines)."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = line or tb.tb_lineno
        tb = tb.tb_next
    return line


def render(text: str, ctx: dict[str, Any], src: _Src, what: str) -> str:
    """Render user-written Jinja ``text`` with ``ctx`` in the sandbox.

    Raises:
        ProbeError: syntax error, undefined variable, or a failing expression, with file and line.
        ProbeSecurityError: the template reached for something the sandbox forbids.
    """
    try:
        tree = _ENV.parse(text)
    except TemplateSyntaxError as e:
        raise ProbeError(
            f"{src.at(e.lineno)}: {what}: Jinja syntax error: {e.message}. Fix the template "
            "(write literal braces as {{ '{{' }})."
        ) from None
    except RecursionError:
        raise ProbeError(f"{src.at()}: {what}: the template nests blocks too deeply to read; flatten it") from None
    known = sorted(ctx)
    unknown = sorted(meta.find_undeclared_variables(tree) - set(ctx) - set(_ENV.globals))
    if unknown:
        name = unknown[0]
        line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == name), None)
        raise ProbeError(
            f"{src.at(line)}: {what}: undefined variable {name!r}{_dym(name, known)}; define it "
            f"under vars (defined: {', '.join(known) or 'none'}) or fix its spelling"
        )
    try:
        return _ENV.from_string(tree).render(ctx)
    except SecurityError as e:
        raise ProbeSecurityError(
            f"{src.at(_template_line(e))}: {what}: {e} Probe templates run in a sandbox; "
            "use variables, filters and macros only."
        ) from e
    except Exception as e:  # user code: any failure is reported at its line
        raise ProbeError(
            f"{src.at(_template_line(e))}: {what}: {type(e).__name__}: {e}. Fix the template or its vars."
        ) from e


def _render_deep(value: Any, ctx: dict[str, Any], src: _Src, what: str) -> Any:
    if isinstance(value, str):
        return render(value, ctx, src, what) if ("{{" in value or "{%" in value) else value
    if isinstance(value, list):
        return [_render_deep(v, ctx, src, what) for v in value]
    return value
