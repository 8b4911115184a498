"""A run's verdict files: ``gate.json`` (its own rules) and ``gate-<name>.json`` (any other rules file, written by
``tunebench gate RUN --rules FILE`` beside it, never over it), read back checked and listed in the report."""

from __future__ import annotations

from pathlib import Path

from tunebench.compare.rows import FAIL, INCONCLUSIVE, PASS, SKIPPED
from tunebench.compare.runs import run_settings
from tunebench.core.io import check_json, read_json
from tunebench.gate.rules import resolve_rules_path
from tunebench.gate.verdict import GateVerdict


def other_verdicts(run_dir: str | Path) -> dict[str, GateVerdict]:
    """The verdicts of rules other than the run's own (``gate-<name>.json``, written by ``tunebench gate RUN --rules
    FILE``), by file name.

    Raises:
        RunFileError: a damaged one, naming it.
    """
    return {path.name: read_verdict(path) for path in sorted(Path(run_dir).glob("gate-*.json"))}


def read_verdict(path: str | Path) -> GateVerdict:
    """A verdict file (gate.json, gate-<name>.json), every field checked.

    Raises:
        RunFileError: damaged, or a field of the wrong type (named), with how to write it again.
    """
    path = Path(path)
    rules = "" if path.name == "gate.json" else " --rules FILE"
    fix = f"delete it, or judge the run again with `tunebench gate {path.parent}{rules}`"
    return check_json(read_json(path, fix), GateVerdict, str(path), fix)


def other_gate_line(name: str, verdict: GateVerdict) -> str:
    """One line of the report's list of other verdicts: file, status, rules, tally."""
    tally = ", ".join(f"{verdict.counts.get(s, 0)} {s}" for s in (PASS, FAIL, INCONCLUSIVE, SKIPPED))
    return f"`{name}`: **{verdict.status.upper()}** (rules: `{verdict.rules_source or 'inline'}`; {tally})"


def verdict_path(run_dir: str | Path, rules_path: str | Path | None = None) -> Path:
    """Where ``tunebench gate RUN --rules X`` writes its verdict: ``gate.json`` for the run's own rules (its config's
    ``gate.rules``, else the default), ``gate-<name>.json`` beside it for any other rules file, so judging a run by
    other rules never replaces the run's own verdict (the report lists both).

    Raises:
        GateError: rules that cannot be found; RunFileError: a config.yaml that cannot be read.
    """
    run_dir = Path(run_dir)
    own = resolve_rules_path(run_settings(run_dir)["gate_rules"]).resolve()
    asked = resolve_rules_path(rules_path).resolve() if rules_path is not None else own
    return run_dir / ("gate.json" if asked == own else f"gate-{asked.stem}.json")
