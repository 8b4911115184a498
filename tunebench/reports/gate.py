"""Release gate: rules over a Comparison decide, on confidence bounds, whether an adapter may ship.

Rules file (YAML; a list, or a mapping with a ``rules:`` list)::

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
``max_regression_rel`` (at least one threshold), ``optional`` (default false).

Improvement I is delta oriented so that positive is better; [lo, hi] is the comparison's two-sided
(1 - alpha) interval of I (95% by default: each bound is a one-sided 97.5% bound). Each threshold sets a
margin M on the improvement scale and has three verdicts:

- ``max_regression: m`` (non-inferiority, M = -m): pass when lo >= -m (the evidence excludes a regression
  larger than m), fail when hi < -m (a regression larger than m is established), else inconclusive.
- ``min_improvement: t`` (superiority, M = t): pass when lo >= t, fail when hi < t, else inconclusive.
- ``_rel`` variants scale the margin by |base| (0.02 = 2% of the base value).

A rule with several thresholds fails if one fails, else is inconclusive if one is. An inconclusive row
says how many paired items would conclude at the observed variance with 80% power
(``core.stats.items_needed``). A metric without an interval is inconclusive: no rule passes on no evidence.
Nor does a gate: when every rule was skipped (optional rules that matched no metric), nothing was checked and
the verdict is inconclusive, with that reason.

Exit codes of ``gate_main``: 0 every rule that matched a metric passed (and at least one did; the others were
skipped), 1 a rule failed, 3 no rule failed but some were inconclusive, or none matched any metric, 2 invalid
input (missing results or metric, mismatched inputs, bad rules file).

``require_significant`` (tunebench.gate/1) is refused with a message: under the old meaning a regression
that was not significant passed, which is absence of evidence read as evidence of no regression.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import yaml
from tabulate import tabulate

from tunebench.core import stats
from tunebench.core.errors import (
    EXIT_GATE_FAILED,
    EXIT_GATE_INCONCLUSIVE,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    GateError,
    InvalidInput,
    did_you_mean,
)
from tunebench.core.io import atomic_write_json, package_path
from tunebench.evals.results import Results
from tunebench.reports.compare import (
    Comparison,
    MetricComparison,
    compare,
    compare_artifacts,
    fmt,
    fmt_interval,
    load_artifact_results,
    load_judge_results,
    load_run_results,
    run_settings,
)

GATES_DIR = package_path("configs", "gates")
DEFAULT_RULES = GATES_DIR / "default.yaml"
SCHEMA = "tunebench.gate/2"
_THRESHOLDS = ("min_improvement", "min_improvement_rel", "max_regression", "max_regression_rel")
MAX_ITEMS_SHOWN = 10**7
"""Beyond this many items the observed change sits on the margin for any practical purpose."""
PASS, FAIL, INCONCLUSIVE, SKIPPED = "pass", "fail", "inconclusive", "skipped"
NOTHING_CHECKED = "no rule matched any metric: nothing was checked"
_REMOVED_KEYS = {
    "require_significant": (
        "'require_significant' was removed (gate schema 2): a rule now decides on the interval of the change. "
        "max_regression passes only when the interval excludes a larger regression, fails when the interval lies "
        "entirely beyond it, and is inconclusive (exit 3) otherwise; delete the key. Old 'max_regression: 0' + "
        "'require_significant: true' rules read best as a small margin, e.g. 'max_regression: 0.02' for "
        "accuracies or 'max_regression_rel: 0.05' for perplexity (README, 'Release gate')."
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


@dataclass
class GateRow:
    """The verdict of one rule on one metric."""

    rule: str
    metric: str
    status: str
    """pass | fail | inconclusive | skipped"""
    reason: str
    threshold: str
    base: float | None = None
    tuned: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int | None = None
    """Paired units the interval rests on."""
    mde: float | None = None
    """The metric's minimum detectable effect at n (see compare.MetricComparison.mde)."""
    items_needed: int | None = None
    """Inconclusive rows: paired items that would conclude at the observed variance (80% power)."""
    delta_margins: list[float] = field(default_factory=list)
    """Each threshold's margin on the scale of delta (tuned - base), as the report's forest plot draws it."""


@dataclass
class GateVerdict:
    """All rule rows and the overall outcome."""

    passed: bool
    rows: list[GateRow]
    alpha: float | None
    rules_source: str | None = None
    status: str = "pass"
    """pass | fail | inconclusive | invalid"""
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    schema: str = SCHEMA
    reason: str | None = None
    """Why the gate as a whole is inconclusive when no single row says so (NOTHING_CHECKED); else None."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 3 inconclusive, 2 invalid (core.errors)."""
        return {PASS: EXIT_OK, FAIL: EXIT_GATE_FAILED, INCONCLUSIVE: EXIT_GATE_INCONCLUSIVE}.get(
            self.status, EXIT_INVALID_INPUT
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateVerdict:
        rows = [GateRow(**r) for r in data.get("rows", [])]
        return cls(rows=rows, **{k: v for k, v in data.items() if k != "rows"})


# ----------------------------------------------------------------------------- rules


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
        raise GateError(f"{where}: a rule must be a mapping with at least 'metric' and a threshold, got {data!r}")
    names = [f.name for f in fields(GateRule) if f.name != "where"]
    for key in data:
        if key in _REMOVED_KEYS:
            raise GateError(f"{where}: {_REMOVED_KEYS[key]}")
        if key not in names:
            dym = did_you_mean(str(key), names, " (did you mean ", "?)")
            raise GateError(f"{where}: unknown key {key!r}{dym}; allowed: {', '.join(names)}")
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise GateError(f"{where}: 'metric' must be a metric name or glob such as 'perplexity/test'")
    if data.get("direction", "auto") not in ("auto", "higher", "lower"):
        raise GateError(f"{where}: direction {data['direction']!r} must be 'auto', 'higher' or 'lower'")
    for key in _THRESHOLDS:
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise GateError(f"{where}: {key} must be a number, got {v!r}")
        if v is not None and key.startswith("max_") and v < 0:
            raise GateError(f"{where}: {key} must be >= 0 (it is how much worse the tuned model may be)")
    if all(data.get(k) is None for k in _THRESHOLDS):
        raise GateError(f"{where}: rule for {metric!r} sets no threshold; add one of {', '.join(_THRESHOLDS)}")
    if "optional" in data and not isinstance(data["optional"], bool):
        raise GateError(f"{where}: optional must be true or false, got {data['optional']!r}")
    if "name" in data and not isinstance(data["name"], str):
        raise GateError(f"{where}: name must be a string")
    if data.get("artifact") is not None and not isinstance(data["artifact"], str):
        raise GateError(f"{where}: artifact must be an exported type such as q8_0, got {data['artifact']!r}")
    kwargs = {k: (float(v) if k in _THRESHOLDS and v is not None else v) for k, v in data.items()}
    return GateRule(where=where, **kwargs)


def parse_rules(text: str, source: str = "rules") -> list[GateRule]:
    """Parse a rules document (YAML text), with file:line in every error.

    Raises:
        GateError: invalid YAML or an invalid rule.
    """
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise GateError(f"{source}: nested too deeply to be a rules file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise GateError(f"{source}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if isinstance(data, dict) and set(data) <= {"rules", "description"}:
        data = data.get("rules")
        node = next((v for k, v in node.value if k.value == "rules"), None) if node is not None else None
    if not isinstance(data, list) or not data:
        raise GateError(f"{source}: expected a non-empty list of rules (or a mapping with a 'rules:' list)")
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
    if p.is_file():
        return p
    shipped = GATES_DIR / f"{rules}.yaml"
    if p.suffix == "" and shipped.is_file():
        return shipped
    known = ", ".join(sorted(q.stem for q in GATES_DIR.glob("*.yaml")))
    raise GateError(f"rules file {str(rules)!r} not found; give a YAML path or a shipped gate ({known})")


def load_rules(path: str | Path | None = None) -> list[GateRule]:
    """Read and validate a rules file (None = the shipped default)."""
    p = resolve_rules_path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GateError(
            f"{p}: cannot be read as a YAML rules file ({e}); give a rules YAML (README, 'Release gate')"
        ) from None
    return parse_rules(text, str(p))


# ----------------------------------------------------------------------------- evaluation


def _oriented_interval(rule: GateRule, r: MetricComparison) -> tuple[float, float, float] | None:
    """(improvement, low, high) with positive = better under the rule's direction; None without an interval."""
    hib = r.higher_is_better if rule.direction == "auto" else rule.direction == "higher"
    if r.delta is None or r.ci_low is None or r.ci_high is None:
        return None
    return (r.delta, r.ci_low, r.ci_high) if hib else (-r.delta, -r.ci_high, -r.ci_low)


def judge(rule: GateRule, r: MetricComparison) -> GateRow:
    """One rule on one compared metric: pass, fail or inconclusive from the interval of the change.

    See the module docstring for the semantics. The one place verdicts are decided; new rule kinds add a
    field to GateRule and a branch here.
    """
    row = GateRow(
        rule=rule.label,
        metric=r.metric,
        status=PASS,
        reason="",
        threshold=rule.threshold_text(),
        base=r.base,
        tuned=r.tuned,
        delta=r.delta,
        ci_low=r.ci_low,
        ci_high=r.ci_high,
        p_value=r.p_value,
        n=r.n,
        mde=r.mde,
    )
    if r.details.get("paired") and r.ci_low is None:  # a judge metric marked invalid (compare.judged_row says why)
        row.status, row.reason = INCONCLUSIVE, f"{r.method}: cannot conclude"
        return row
    if r.delta is None or r.base is None:
        row.status, row.reason = FAIL, "no value on one side: cannot judge"
        return row
    oriented = _oriented_interval(rule, r)
    if oriented is None:
        row.status, row.reason = INCONCLUSIVE, f"no interval of the change ({r.method}): cannot conclude"
        return row
    imp, lo, hi = oriented
    level = f"{100 * (1 - r.alpha):g}%"
    # the reason quotes the interval of delta itself, as the report's CI column does, with the margin on that scale
    hib = r.higher_is_better if rule.direction == "auto" else rule.direction == "higher"
    bounds = f"{level} interval of Δ {fmt_interval(r.ci_low, r.ci_high)}" + ("" if hib else " (lower is better)")
    verdicts, reasons, needed = [], [], []
    for key, threshold, margin in rule.margins(r.base):
        kind = "improvement" if key.startswith("min_") else "regression"
        want = f"{threshold * 100:g}% of base" if key.endswith("_rel") else f"{threshold:g}"
        row.delta_margins.append(margin if hib else -margin)
        worse = f"(Δ {'<' if hib else '>'} {fmt(row.delta_margins[-1], True)})"  # the side the rule rejects
        if lo >= margin:
            verdicts.append(PASS)
            reasons.append(
                f"{bounds} excludes {'an improvement below' if kind == 'improvement' else 'a regression beyond'}"
                f" {want} {worse}"
            )
        elif hi < margin:
            verdicts.append(FAIL)
            reasons.append(
                f"{bounds} lies entirely "
                f"{'below an improvement of' if kind == 'improvement' else 'beyond a regression of'} {want} {worse}"
            )
        else:
            verdicts.append(INCONCLUSIVE)
            more = stats.items_needed(r.n, lo, hi, abs(imp - margin), r.alpha)
            if more is not None and more > MAX_ITEMS_SHOWN:  # the change sits almost on the margin
                more = None
            if more is not None:
                needed.append(more)
            hint = (
                f"; about {more} paired items would conclude (have {r.n}; observed variance, 80% power)"
                if more is not None
                else "; the observed change sits on the margin"
            )
            reasons.append(f"{bounds} straddles the {kind} margin {want} {worse}{hint}")
    row.status = FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS
    row.reason = "; ".join(reasons)
    row.items_needed = max(needed) if row.status == INCONCLUSIVE and needed else None
    return row


def evaluate_gate(
    comparison: Comparison,
    rules: list[GateRule] | list[dict[str, Any]] | str | Path | None,
    artifacts: dict[str, Comparison] | None = None,
) -> GateVerdict:
    """Apply rules to a comparison.

    Args:
        comparison: Base vs tuned comparison.
        rules: Parsed rules, rule mappings, a rules file path / shipped name, or None for the default.
        artifacts: exported type -> adapter vs artifact comparison, read by rules that set ``artifact``.

    Returns:
        GateVerdict: status fail when a rule failed, else inconclusive when one was or when no rule judged
        any metric (all skipped: ``reason`` says nothing was checked), else pass; passed is status == pass.

    Raises:
        GateError: invalid rules, or a non-optional rule matching no metric.
    """
    source = None
    if rules is None or isinstance(rules, (str, Path)):
        source = str(resolve_rules_path(rules))
        rules = load_rules(rules)
    parsed = [r if isinstance(r, GateRule) else parse_rule(r, f"rule {k + 1}") for k, r in enumerate(rules)]
    rows: list[GateRow] = []
    for rule in parsed:
        rx = glob_to_regex(rule.metric)
        source_rows = comparison.rows
        if rule.artifact is not None:
            if rule.artifact not in (artifacts or {}):
                if rule.optional:
                    rows.append(
                        GateRow(
                            rule.label,
                            rule.metric,
                            "skipped",
                            f"artifact {rule.artifact} not evaluated (optional rule)",
                            rule.threshold_text(),
                        )
                    )
                    continue
                known = ", ".join(artifacts or {}) or "none"
                quant = rule.artifact.removesuffix("-llamacpp")
                runtime = " --runtime llama.cpp" if rule.artifact.endswith("-llamacpp") else ""
                raise GateError(
                    f"{rule.where}: rule reads artifact {rule.artifact!r}, which this run has not evaluated "
                    f"(evaluated: {known}); `tunebench export RUN --gguf --quant {quant}` then "
                    f"`tunebench eval --model RUN/export/model-{quant}.gguf{runtime} --data-from RUN`"
                )
            source_rows = artifacts[rule.artifact].rows
        matched = [r for r in source_rows if rx.match(r.metric)]
        if not matched:
            if rule.optional:
                rows.append(
                    GateRow(
                        rule.label, rule.metric, "skipped", "no metric matches (optional rule)", rule.threshold_text()
                    )
                )
                continue
            known = ", ".join(r.metric for r in comparison.rows) or "none"
            raise GateError(
                f"{rule.where}: no compared metric matches {rule.metric!r} (known: {known}); "
                "fix the name, or set 'optional: true' if the metric may be absent"
            )
        for r in matched:
            row = judge(rule, r)
            if rule.artifact is not None:  # base/tuned columns hold adapter/artifact values
                row.metric = f"{r.metric} [{rule.artifact} vs adapter]"
            rows.append(row)
    counts = {s: sum(r.status == s for r in rows) for s in (PASS, FAIL, INCONCLUSIVE, SKIPPED)}
    status = FAIL if counts[FAIL] else INCONCLUSIVE if counts[INCONCLUSIVE] else PASS
    reason = None
    if not counts[PASS] and status == PASS:  # every rule skipped: no evidence was looked at, so no pass
        status, reason = INCONCLUSIVE, NOTHING_CHECKED
    return GateVerdict(
        passed=status == PASS,
        rows=rows,
        alpha=comparison.alpha,
        rules_source=source,
        status=status,
        counts=counts,
        reason=reason,
    )


def format_verdict(verdict: GateVerdict) -> str:
    """Plain-text table for the terminal."""
    body = [
        [
            r.status.upper(),
            r.rule,
            r.metric,
            fmt(r.base),
            fmt(r.tuned),
            fmt(r.delta, True),
            f"[{fmt(r.ci_low, True)}, {fmt(r.ci_high, True)}]" if r.ci_low is not None else "n/a",
            r.threshold,
            r.reason,
        ]
        for r in verdict.rows
    ]
    word = {PASS: "PASSED", FAIL: "FAILED", INCONCLUSIVE: "INCONCLUSIVE"}.get(verdict.status, verdict.status.upper())
    tally = ", ".join(f"{verdict.counts.get(s, 0)} {s}" for s in (PASS, FAIL, INCONCLUSIVE, SKIPPED))
    setting = f"two-sided {100 * (1 - verdict.alpha):g}% intervals; rules: {verdict.rules_source or 'inline'}"
    head = (
        f"gate {word}: {verdict.reason} ({tally}; {setting})" if verdict.reason else f"gate {word}: {tally} ({setting})"
    )
    return (
        head
        + "\n"
        + tabulate(
            body,
            headers=["Status", "Rule", "Metric", "Base", "Tuned", "Δ", "CI of Δ", "Threshold", "Reason"],
            tablefmt="simple",
            disable_numparse=True,
        )
    )


def artifact_comparisons(run_dir: str | Path, tuned: Results | None = None, seed: int = 0) -> dict[str, Comparison]:
    """Each evaluated export of a run (eval/gguf-*/) against its adapter, at the run's alpha and bootstrap size.

    Raises:
        ComparisonError: an artifact scored on other inputs; OSError / ValueError: unreadable results.
    """
    settings = run_settings(run_dir)
    tuned = tuned if tuned is not None else load_run_results(run_dir)["tuned"]
    return compare_artifacts(tuned, load_artifact_results(run_dir), settings["alpha"], settings["n_boot"], seed)


def judge_run(
    run_dir: str | Path, rules_path: str | Path | None = None, seed: int = 0, comparison: Comparison | None = None
) -> GateVerdict:
    """What ``gate_main`` decides for a run folder, without printing or writing anything.

    Args:
        run_dir: Run folder with ``eval/base/results.json`` and ``eval/tuned/results.json``.
        rules_path: Rules YAML or shipped gate name; default: the run config's ``gate.rules``, else
            ``configs/gates/default.yaml``.
        seed: Bootstrap seed (the pipeline's comparison uses 0 too).
        comparison: The run's base vs tuned comparison at its own alpha, bootstrap size and ``seed``, when
            the caller already holds it (the pytest plugin's session fixture); computed here otherwise.

    Raises:
        GateError, ComparisonError (both ValueErrors), OSError: invalid rules or results.
    """
    settings = run_settings(run_dir)
    path = resolve_rules_path(rules_path or settings["gate_rules"])
    rules = load_rules(path)
    results = load_run_results(run_dir) if comparison is None else None
    if comparison is None:
        comparison = compare(
            results["base"],
            results["tuned"],
            settings["alpha"],
            settings["n_boot"],
            seed,
            judged=load_judge_results(run_dir),
        )
    artifacts = {}
    if any(r.artifact for r in rules):
        artifacts = artifact_comparisons(run_dir, results["tuned"] if results else None, seed)
    verdict = evaluate_gate(comparison, rules, artifacts)
    verdict.rules_source = str(path)
    return verdict


def gate_main(
    run_dir: str | Path,
    rules_path: str | Path | None = None,
    out_path: str | Path | None = None,
    seed: int = 0,
    stream: TextIO | None = None,
) -> int:
    """Judge a run folder (``judge_run``), print the table and write ``gate.json`` atomically.

    Args:
        run_dir: Run folder with ``eval/base/results.json`` and ``eval/tuned/results.json``.
        rules_path: Rules YAML or shipped gate name; default: the run config's ``gate.rules``, else
            ``configs/gates/default.yaml``.
        out_path: Where to write the verdict; default ``<run_dir>/gate.json``.
        seed: Bootstrap seed (the pipeline's comparison uses 0 too).
        stream: Where to print (default stdout; errors go to stderr).

    Returns:
        0 passed, 1 a rule failed, 3 inconclusive (no rule failed, some could not conclude, or no rule
        matched any metric), 2 invalid input.
    """
    stream = stream or sys.stdout
    run_dir = Path(run_dir)
    out = Path(out_path) if out_path else run_dir / "gate.json"
    try:
        verdict = judge_run(run_dir, rules_path, seed)
    except InvalidInput as e:  # only what the readers and rules raise on purpose: a bug keeps its traceback
        print(f"gate: invalid input: {e}", file=sys.stderr)
        if out.parent.is_dir():
            atomic_write_json(out, GateVerdict(False, [], None, status="invalid", error=str(e)).to_dict())
        return EXIT_INVALID_INPUT
    print(format_verdict(verdict), file=stream)
    atomic_write_json(out, verdict.to_dict())
    print(f"wrote {out}", file=stream)
    return verdict.exit_code
