"""Release gate rules: the rules file (YAML) read and checked, every error naming its file and line.

Rules file (a list, or a mapping with a ``rules:`` list)::

    rules:
      - metric: perplexity/test           # exact name, or a glob: * = one path segment, ** = any depth
        max_regression_rel: 0.05          # non-inferiority: tuned at most 5% of base worse
      - metric: "lm_eval/*/acc"
        max_regression: 0.02              # absolute, in the metric's units (2 points of accuracy)
        optional: true                    # skip (not fail) when no metric matches

A rule with ``artifact: q8_0`` reads the comparison of that exported artifact against the adapter
(eval/gguf-q8_0/results.json vs eval/tuned/results.json) instead of adapter vs base, so a release is blocked
when the export loses what training gained::

      - metric: perplexity/test
        artifact: q8_0                    # q8_0 perplexity at most 1% above the adapter's
        max_regression_rel: 0.01

Fields: ``metric`` (required), ``name`` (label), ``artifact``, ``direction`` (``auto`` = the metric's
``higher_is_better``, or ``higher`` / ``lower``), ``min_improvement``, ``min_improvement_rel``, ``max_regression``,
``max_regression_rel`` (at least one threshold), ``optional`` (default false); each rule is checked by
``compare.rule.parse_rule`` (which refuses the removed ``require_significant``). What each threshold decides is
``gate.verdict``'s docstring.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tunebench.compare.rule import GateRule, parse_rule
from tunebench.core.errors import GateError
from tunebench.core.io import StrictLoader, package_path, parse_yaml, read_yaml_text, short

GATES_DIR = package_path("configs", "gates")
DEFAULT_RULES = GATES_DIR / "default.yaml"
RULES_FIX = "give a rules YAML (docs/gate.md)"


def parse_rules(text: str, source: str = "rules") -> list[GateRule]:
    """Parse a rules document (YAML text), with file:line in every error.

    Raises:
        GateError: invalid YAML (or what the safe reader refuses: an alias, deep nesting, a lone surrogate) or an
            invalid rule.
    """
    data = parse_yaml(text, source, RULES_FIX, GateError)
    node = yaml.compose(text, Loader=StrictLoader)  # the same text again, for each rule's line
    if isinstance(data, dict) and set(data) <= {"rules", "description"}:
        data = data.get("rules")
        node = next((v for k, v in node.value if k.value == "rules"), None) if node is not None else None
    if not isinstance(data, list) or not data:
        raise GateError(
            f"{source}: expected a non-empty list of rules (or a mapping with a 'rules:' list), got {short(data, 80)}"
        )
    lines = [n.start_mark.line + 1 for n in node.value] if isinstance(node, yaml.SequenceNode) else []
    return [
        parse_rule(d, f"{source} line {lines[k]}" if k < len(lines) else f"{source} rule {k + 1}")
        for k, d in enumerate(data)
    ]


def resolve_rules_path(rules: str | Path | None) -> Path:
    """A rules file path, a shipped gate name (``default``), or None for the default rules."""
    if rules is None:
        return DEFAULT_RULES
    p = Path(rules)
    if p.is_file() or (os.path.lexists(p) and p.suffix):  # a folder or a looping link: the reader says which
        return p
    shipped = GATES_DIR / f"{rules}.yaml"
    if p.suffix == "" and shipped.is_file():
        return shipped
    known = ", ".join(sorted(q.stem for q in GATES_DIR.glob("*.yaml")))
    raise GateError(f"rules file {short(str(rules))} not found; give a YAML path or a shipped gate ({known})")


def load_rules(path: str | Path | None = None) -> list[GateRule]:
    """Read and validate a rules file (None = the shipped default)."""
    p = resolve_rules_path(path)
    return parse_rules(read_yaml_text(p, f"it cannot be read as a YAML rules file; {RULES_FIX}", GateError), str(p))
