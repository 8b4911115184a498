"""The objective checks of a probe's answer (``CHECK_KINDS``): parsed and rendered from a probe file, then
called on each answer (None when it passes, else why it failed)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core.errors import ProbeError
from tunebench.core.io import short
from tunebench.evals.probes.template import _dym, _render_deep, _Src

CHECK_KINDS = {
    "contains": "every listed string appears in the answer",
    "contains_any": "at least one listed string appears",
    "not_contains": "none of the listed strings appears",
    "regex": "the regular expression matches somewhere (re.search)",
    "not_regex": "the regular expression matches nowhere",
    "sequence": "the first numbers in the answer are exactly these, in order",
    "max_words": "at most this many whitespace-separated words",
    "max_chars": "at most this many characters (surrounding whitespace ignored)",
}
TEXT_KINDS = ("contains", "contains_any", "not_contains", "regex", "not_regex")
CHECK_OPTIONS = {"ignore_case": TEXT_KINDS, "allow_echo": ("sequence",)}
# a number not glued to a word ("v2") or to a preceding digit/dot; "1-2" reads as 1, 2
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def numbers_in(text: str) -> list[float]:
    """The numbers in ``text`` in order ("13, 21 and 34." -> [13, 21, 34])."""
    return [float(m) for m in _NUMBER.findall(text)]


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


@dataclass
class Check:
    """One objective test of an answer."""

    kind: str
    value: Any
    """list[str] for the contains kinds, a pattern for regex kinds, numbers for sequence, int for max_*."""
    ignore_case: bool = False
    allow_echo: bool = False
    """sequence: skip the prompt's numbers if the answer starts by repeating them."""

    def spec(self) -> dict[str, Any]:
        """The check as written (options only when on): part of the set's fingerprint."""
        options = {"ignore_case": self.ignore_case, "allow_echo": self.allow_echo}
        return {self.kind: self.value, **{k: True for k, on in options.items() if on}}

    def __call__(self, output: str, prompt: str = "") -> str | None:
        """None if ``output`` passes, else why it failed."""
        k, v = self.kind, self.value
        fold = (lambda s: s.casefold()) if self.ignore_case else (lambda s: s)
        if k in ("contains", "contains_any", "not_contains"):
            found = [s for s in v if fold(s) in fold(output)]
            if k == "contains" and len(found) < len(v):
                return f"contains: missing {[s for s in v if s not in found]}"
            if k == "contains_any" and not found:
                return f"contains_any: none of {v}"
            if k == "not_contains" and found:
                return f"not_contains: found {found}"
            return None
        if k in ("regex", "not_regex"):
            m = re.search(v, output, re.IGNORECASE if self.ignore_case else 0)
            if k == "regex" and not m:
                return f"regex: no match for {v!r}"
            return f"not_regex: {v!r} matched {m.group(0)!r}" if k == "not_regex" and m else None
        if k == "sequence":
            got = numbers_in(output)
            echo = numbers_in(prompt)
            if self.allow_echo and echo and got[: len(echo)] == echo:
                got = got[len(echo) :]
            head = [_num(x) for x in got[: len(v)]]
            return None if head == v else f"sequence: expected {v}, first numbers were {head}"
        if k == "max_words":
            n = len(output.split())
            return None if n <= v else f"max_words: {n} words > {v}"
        n = len(output.strip())
        return None if n <= v else f"max_chars: {n} characters > {v}"


def _parse_check(raw: Any, ctx: dict[str, Any], path: Path, where: str) -> Check:
    """Validate and render one check mapping (e.g. ``{contains: "{{ capital }}", ignore_case: true}``)."""
    line = getattr(raw, "line", 0)
    if not isinstance(raw, dict):
        raise ProbeError(
            f"{path}:{line}: {where}: each check is a mapping such as `- contains: Paris`, got {short(raw)}"
        )
    kinds = [k for k in raw if k in CHECK_KINDS]
    for key in raw:
        if key not in CHECK_KINDS and key not in CHECK_OPTIONS:
            raise ProbeError(
                f"{path}:{getattr(raw, 'value_lines', {}).get(key, line)}: {where}: unknown check "
                f"kind {short(key)}{_dym(key, [*CHECK_KINDS, *CHECK_OPTIONS])}; known kinds: "
                f"{', '.join(CHECK_KINDS)} (options: {', '.join(CHECK_OPTIONS)})"
            )
    if len(kinds) != 1:
        raise ProbeError(
            f"{path}:{line}: {where}: a check has exactly one kind, found {kinds or 'none'}; "
            "write each as its own list item"
        )
    kind = kinds[0]
    for opt, allowed in CHECK_OPTIONS.items():
        if opt in raw and kind not in allowed:
            raise ProbeError(
                f"{path}:{line}: {where}: option {short(opt)} does not apply to {short(kind)} "
                f"(only to {', '.join(allowed)})"
            )
        if opt in raw and not isinstance(raw[opt], bool):
            raise ProbeError(f"{path}:{line}: {where}: {opt} must be true or false, got {short(raw[opt])}")
    src = _Src.of(path, raw, kind)
    value = _render_deep(raw[kind], ctx, src, f"{where}, check {short(kind)}")
    bad = f"{src.at()}: {where}: {kind}"
    if kind in ("contains", "contains_any", "not_contains"):
        value = value if isinstance(value, list) else [value]
        if not value or not all(isinstance(s, (str, int, float)) for s in value):
            raise ProbeError(f"{bad} needs a string or a list of strings, got {short(raw[kind])}")
        value = [str(s) for s in value]
    elif kind in ("regex", "not_regex"):
        if not isinstance(value, str):
            raise ProbeError(f"{bad} needs one pattern string, got {short(value)}")
        try:
            re.compile(value)
        except re.error as e:
            raise ProbeError(
                f"{bad}: invalid regular expression {short(value)} ({e}); quote it with single "
                "quotes in YAML so backslashes survive"
            ) from None
    elif kind == "sequence":
        nums: list[float] = []
        for x in value if isinstance(value, list) else [value]:
            if isinstance(x, str):  # a rendered template such as "{{ a + d }} {{ a + 2 * d }}"
                nums += numbers_in(x)
            elif isinstance(x, (int, float)) and not isinstance(x, bool):
                nums.append(x)
            else:
                nums = []
                break
        if not nums:
            raise ProbeError(f"{bad} needs numbers, e.g. `sequence: [13, 21, 34]`, got {short(value)}")
        value = [_num(n) for n in nums]
    else:
        whole = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if not (whole or isinstance(value, str) and value.strip().isdigit()):
            raise ProbeError(f"{bad} needs a whole number >= 0, got {short(value)}")
        value = int(value)
    return Check(
        kind, value, ignore_case=bool(raw.get("ignore_case", False)), allow_echo=bool(raw.get("allow_echo", False))
    )
