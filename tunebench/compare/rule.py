"""One release-gate rule: its fields, its margins and its checks, and its metric pattern.

A rule names a metric (or a glob: ``*`` = one path segment, ``**`` = any depth) and at least one threshold
(``min_improvement``, ``min_improvement_rel``, ``max_regression``, ``max_regression_rel``), each a margin on the
improvement scale. It lives on this floor, beside the rows it is decided on (``compare.rows.judge``), so a row's
``assert_not_regressed`` and the gate decide with one function; rules files, read and checked, are
``gate.rules``, and what each threshold decides is ``gate.verdict``'s docstring.

``require_significant`` (tunebench.gate/1) is refused with a message: under the old meaning a regression
that was not significant passed, which is absence of evidence read as evidence of no regression.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from tunebench.core.errors import GateError, did_you_mean
from tunebench.core.io import short

_THRESHOLDS = ("min_improvement", "min_improvement_rel", "max_regression", "max_regression_rel")
_REMOVED_KEYS = {
    "require_significant": (
        "'require_significant' was removed (gate schema 2): a rule now decides on the interval of the change. "
        "max_regression passes only when the interval excludes a larger regression, fails when the interval lies "
        "entirely beyond it, and is inconclusive (exit 3) otherwise; delete the key. Old 'max_regression: 0' + "
        "'require_significant: true' rules read best as a small margin, e.g. 'max_regression: 0.02' for "
        "accuracies or 'max_regression_rel: 0.05' for perplexity (docs/gate.md)."
    ),
}


@dataclass
class GateRule:
    """One rule of a rules file."""

    metric: str
    name: str | None = None
    direction: str = "auto"
    min_improvement: float | None = None
    min_improvement_rel: float | None = None
    max_regression: float | None = None
    max_regression_rel: float | None = None
    optional: bool = False
    artifact: str | None = None
    """Exported artifact (GGUF type) whose comparison against the adapter this rule reads; None = adapter vs base."""
    where: str = "rules"
    """File and line the rule came from (for messages)."""

    @property
    def label(self) -> str:
        return self.name or self.metric

    def threshold_text(self) -> str:
        parts = []
        for key, text in (
            ("min_improvement", "improvement ≥ {}"),
            ("min_improvement_rel", "improvement ≥ {} of base"),
            ("max_regression", "regression ≤ {}"),
            ("max_regression_rel", "regression ≤ {} of base"),
        ):
            v = getattr(self, key)
            if v is not None:
                parts.append(text.format(f"{v * 100:g}%" if key.endswith("_rel") else f"{v:g}"))
        return ", ".join(parts)

    def margins(self, base: float) -> list[tuple[str, float, float]]:
        """Each threshold as (key, threshold, margin on the improvement scale in the metric's units)."""
        out = []
        for key in _THRESHOLDS:
            v = getattr(self, key)
            if v is None:
                continue
            scale = abs(base) if key.endswith("_rel") else 1.0
            out.append((key, v, (v if key.startswith("min_") else -v) * scale))
        return out


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one path segment, ``**`` across segments, ``?`` one character."""
    out = []
    for tok in re.split(r"(\*\*|\*|\?)", pattern):
        out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(tok, re.escape(tok)))
    return re.compile("^" + "".join(out) + "$")


def parse_rule(data: Any, where: str) -> GateRule:
    """Validate one rule mapping.

    Raises:
        GateError: unknown key (with a did-you-mean), wrong type, or no threshold; names ``where``.
    """
    if not isinstance(data, dict):
        raise GateError(f"{where}: a rule must be a mapping with at least 'metric' and a threshold, got {short(data)}")
    names = [f.name for f in fields(GateRule) if f.name != "where"]
    for key in data:
        if key in _REMOVED_KEYS:
            raise GateError(f"{where}: {_REMOVED_KEYS[key]}")
        if key not in names:
            dym = did_you_mean(str(key), names, " (did you mean ", "?)")
            raise GateError(f"{where}: unknown key {short(key)}{dym}; allowed: {', '.join(names)}")
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise GateError(f"{where}: 'metric' must be a metric name or glob such as 'perplexity/test'")
    if data.get("direction", "auto") not in ("auto", "higher", "lower"):
        raise GateError(f"{where}: direction {short(data['direction'])} must be 'auto', 'higher' or 'lower'")
    for key in _THRESHOLDS:
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise GateError(f"{where}: {key} must be a number, got {short(v)}")
        if v is not None and key.startswith("max_") and v < 0:
            raise GateError(f"{where}: {key} must be >= 0 (it is how much worse the tuned model may be)")
    if all(data.get(k) is None for k in _THRESHOLDS):
        raise GateError(f"{where}: rule for {short(metric)} sets no threshold; add one of {', '.join(_THRESHOLDS)}")
    if "optional" in data and not isinstance(data["optional"], bool):
        raise GateError(f"{where}: optional must be true or false, got {short(data['optional'])}")
    if "name" in data and not isinstance(data["name"], str):
        raise GateError(f"{where}: name must be a string")
    if data.get("artifact") is not None and not isinstance(data["artifact"], str):
        raise GateError(f"{where}: artifact must be an exported type such as q8_0, got {short(data['artifact'])}")
    kwargs = {k: (float(v) if k in _THRESHOLDS and v is not None else v) for k, v in data.items()}
    return GateRule(where=where, **kwargs)
