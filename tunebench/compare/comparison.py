"""Base vs tuned: a pure function from two ``Results`` to a ``Comparison`` (schema ``tunebench.comparison/1``).

Every metric present in both results becomes one row (``compare.rows.compare_metric``: paired statistics, verdict,
MDE). Base and tuned must have been computed on the same inputs: any shared fingerprint in ``Results.inputs`` that
differs raises ``ComparisonError``.

Rows that break one metric down (``lm_eval/mmlu/<subject>/acc`` under ``lm_eval/mmlu/acc``, per-probe rows under a
probe set's pass rate) are one family of tests: they carry Benjamini-Hochberg adjusted p-values (``p_adjusted``)
and their verdicts read those, so 57 subjects at alpha = 0.05 do not turn up "regressions" by chance alone. Their
intervals are false-coverage-rate adjusted (Benjamini & Yekutieli 2005: level 1 - R alpha / m, R the rejections), so
a member's interval, which the gate reads, excludes 0 exactly when its adjusted p is below alpha.
``leaderboard`` compares several adapters with one base.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunebench.compare.rows import (
    FEW_SAMPLES,
    IMPROVED,
    REGRESSED,
    TOO_FEW,
    UNCHANGED,
    MetricComparison,
    compare_metric,
    judged_rows,
    verdict_of,
)
from tunebench.core.errors import ComparisonError, RunFileError
from tunebench.core.io import check_json, read_json, short, show_json
from tunebench.core.multiplicity import benjamini_hochberg, fcr_alpha, holm
from tunebench.evals.results import Results

SCHEMA = "tunebench.comparison/1"
LEADERBOARD_SCHEMA = "tunebench.leaderboard/1"


# ----------------------------------------------------------------------------- whole results


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def _model_facts(model: dict[str, Any]) -> dict[str, Any]:
    """What must agree between base and tuned models: base weights, chat template, dtype."""
    facts: dict[str, Any] = {}
    src = model.get("base")
    if isinstance(src, dict) and src.get("identity") is not None:
        facts["model.base.identity"] = src["identity"]
    for key in ("template", "dtype"):
        if model.get(key) is not None:
            facts[f"model.{key}"] = model[key]
    return facts


def check_same_inputs(base: Results, tuned: Results, same_base: bool = True) -> dict[str, Any]:
    """Return the shared input fingerprints, or raise if base and tuned were fed different inputs.

    ``same_base=False`` drops the base-weights check only (an exported artifact has other weights than the
    adapter's base by design); inputs, template and dtype must still agree.

    Raises:
        ComparisonError: naming the first differing key and both values.
    """
    b_facts = {**{f"inputs.{k}": v for k, v in base.inputs.items()}, **_model_facts(base.model)}
    t_facts = {**{f"inputs.{k}": v for k, v in tuned.inputs.items()}, **_model_facts(tuned.model)}
    if not same_base:
        b_facts.pop("model.base.identity", None)
    for key in sorted(set(b_facts) & set(t_facts)):
        if b_facts[key] != t_facts[key]:
            raise ComparisonError(
                f"{short(base.label)} and {short(tuned.label)} were not evaluated on the same inputs: {short(key)} is "
                f"{_short(b_facts[key])} for {short(base.label)} but {_short(t_facts[key])} for {short(tuned.label)}. "
                "Re-run both evaluations with the same data, template, probe sets and sampling."
            )
    return {k: base.inputs[k] for k in base.inputs if k in tuned.inputs}


def _parent(metric: str, names: set[str]) -> str | None:
    """The metric that ``metric`` breaks down (``a/b/X/leaf`` -> ``a/b/leaf`` when that exists), else None."""
    parts = metric.split("/")
    parent = "/".join(parts[:-2] + parts[-1:]) if len(parts) >= 3 else None
    return parent if parent in names else None


def _mark_headlines(rows: list[MetricComparison], explicit: dict[str, Any]) -> None:
    """A row is a headline unless it breaks another row down (``a/b/X/leaf`` when ``a/b/leaf`` exists)."""
    names = {r.metric for r in rows}
    for r in rows:
        r.family = _parent(r.metric, names)
        flag = explicit.get(r.metric)
        r.headline = flag if isinstance(flag, bool) else r.family is None


def _adjust_families(
    rows: list[MetricComparison], recompute: Callable[[MetricComparison, float], MetricComparison]
) -> None:
    """Benjamini-Hochberg within each family of breakdown rows; their significance and verdict follow p_adjusted, and
    their intervals are recomputed at the family's false-coverage-rate level (``recompute(row, level)``)."""
    families: dict[str, list[MetricComparison]] = {}
    for r in rows:
        if r.family is not None:
            families.setdefault(r.family, []).append(r)
    for members in families.values():
        adjusted = benjamini_hochberg([r.p_value for r in members])
        level = fcr_alpha(members[0].alpha, adjusted)
        for r, q in zip(members, adjusted, strict=True):
            r.p_adjusted = q
            r.significant = q is not None and r.delta is not None and q < r.alpha
            if level != r.alpha and r.ci_low is not None:
                wider = recompute(r, level)
                r.ci_low, r.ci_high, r.mde, r.ci_alpha = wider.ci_low, wider.ci_high, wider.mde, level
            r.verdict = verdict_of(r)


@dataclass
class Comparison:
    """Every shared metric of two results, compared."""

    base_label: str
    tuned_label: str
    alpha: float
    n_boot: int
    seed: int
    rows: list[MetricComparison]
    inputs: dict[str, Any] = field(default_factory=dict)
    """Input fingerprints both sides share (checked equal)."""
    base_model: dict[str, Any] = field(default_factory=dict)
    tuned_model: dict[str, Any] = field(default_factory=dict)
    only_in_base: list[str] = field(default_factory=list)
    only_in_tuned: list[str] = field(default_factory=list)
    schema: str = SCHEMA
    min_n: int = FEW_SAMPLES
    """Fewest paired units a row's verdict needs (``report.min_n``); each row carries it too."""

    def row(self, metric: str) -> MetricComparison:
        """The row of one metric. Raises KeyError listing the known metrics."""
        for r in self.rows:
            if r.metric == metric:
                return r
        raise KeyError(f"no metric {metric!r} in the comparison; known: {', '.join(r.metric for r in self.rows)}")

    def rows_in(self, group: str) -> list[MetricComparison]:
        return [r for r in self.rows if r.group == group]

    def headline_rows(self) -> list[MetricComparison]:
        return [r for r in self.rows if r.headline]

    def counts(self) -> dict[str, int]:
        """How many rows got each verdict; rows under ``min_n`` paired units count as ``too few samples``, not as a
        verdict (they were never judged)."""
        out = {IMPROVED: 0, REGRESSED: 0, UNCHANGED: 0, TOO_FEW: 0}
        for r in self.rows:
            key = r.verdict if r.judged else TOO_FEW
            out[key] = out.get(key, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    @classmethod
    def from_dict(
        cls, data: Any, where: str = "comparison", fix: str = "recompute it with `tunebench report RUN`"
    ) -> Comparison:
        """A Comparison from its JSON form (comparison.json), every field checked against its type.

        Raises:
            RunFileError: another schema, or a field of the wrong type (names ``where``, the field and ``fix``).
        """
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != SCHEMA:
            got = f"schema {short(schema)}" if isinstance(data, dict) else f"holds {show_json(data)}"
            raise RunFileError(f"{where}: {got}, not a {SCHEMA!r} comparison; {fix}")
        out = check_json(data, cls, where, fix)
        names = {r.metric for r in out.rows}
        for r, raw in zip(out.rows, data.get("rows", []), strict=True):
            if "family" not in raw:  # written before families: still known from the names (for counts)
                r.family = _parent(r.metric, names)
        return out

    @classmethod
    def load(cls, path: str | Path) -> Comparison:
        """Read and check a comparison.json."""
        fix = f"recompute it with `tunebench report {Path(path).parent}`"
        return cls.from_dict(read_json(path, fix), str(path), fix)


def _clean(obj: Any) -> Any:
    """Non-finite floats -> None, so comparison.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def compare(
    base: Results,
    tuned: Results,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    same_base: bool = True,
    judged: Results | None = None,
    min_n: int = FEW_SAMPLES,
) -> Comparison:
    """Compare every metric present in both results (pure: reads nothing, writes nothing).

    Args:
        base: Results of the base model.
        tuned: Results of base + adapter, computed on the same inputs.
        alpha: Significance level; intervals are (1 - alpha).
        n_boot: Bootstrap resamples per metric.
        seed: Seed of the resampling (each metric derives its own stream from it and its name).
        same_base: require both sides to share base weights (False for the adapter vs an exported artifact).
        judged: the judge stage's results (``load_judge_results``): its win rates become rows (``judged_row``).
        min_n: Fewest paired units a verdict needs (``report.min_n``); rows below it are ``too few samples``.

    Returns:
        A Comparison whose rows follow the base results' metric order.

    Raises:
        ComparisonError: different input fingerprints, base model or template, or items that do not pair.
    """
    if not 0 < alpha < 0.5:
        raise ComparisonError(f"alpha must be in (0, 0.5) (got {alpha}; report.alpha)")
    if 2 / (n_boot + 1) >= alpha:  # the smallest bootstrap p-value is 2 / (n_boot + 1)
        raise ComparisonError(
            f"n_boot={n_boot} can never give p < alpha={alpha}; use at least {math.ceil(2 / alpha)} "
            "resamples (eval.bootstrap_samples; 2000 is the default)"
        )
    if min_n < 1:
        raise ComparisonError(f"min_n must be at least 1 (got {min_n}; report.min_n)")
    inputs = check_same_inputs(base, tuned, same_base)
    t_by_name = {m.name: m for m in tuned.metrics}
    pairs = {}
    for bm in base.metrics:
        tm = t_by_name.get(bm.name)
        if tm is None:
            continue
        b_items = base.items.get(bm.items) if bm.items else None
        t_items = tuned.items.get(tm.items) if tm.items else None
        pairs[bm.name] = (bm, tm, b_items, t_items)
    rows = [compare_metric(*pair, alpha, n_boot, seed, min_n) for pair in pairs.values()]
    _mark_headlines(rows, {m.name: m.details.get("headline") for m in base.metrics})
    _adjust_families(rows, lambda r, level: compare_metric(*pairs[r.metric], level, n_boot, seed, min_n))
    rows += judged_rows(judged, alpha, min_n)
    b_names = {m.name for m in base.metrics}
    return Comparison(
        base_label=base.label,
        tuned_label=tuned.label,
        alpha=alpha,
        n_boot=n_boot,
        seed=seed,
        rows=rows,
        inputs=inputs,
        base_model=base.model,
        tuned_model=tuned.model,
        only_in_base=[m.name for m in base.metrics if m.name not in t_by_name],
        only_in_tuned=[m.name for m in tuned.metrics if m.name not in b_names],
        min_n=min_n,
    )


# ----------------------------------------------------------------------------- several adapters

SAME = "no significant difference"


@dataclass
class Versus:
    """Two adapters on the primary metric, paired over the items both were evaluated on: Δ = second − first."""

    first: str
    second: str
    row: MetricComparison
    """``base`` = the first adapter's value, ``tuned`` = the second's, with the interval, p and MDE of the same paired
    statistics as base vs tuned (``rows.compare_metric``)."""
    p_holm: float | None = None
    """Holm-adjusted over every pair of the leaderboard: the verdict reads it."""
    verdict: str = SAME
    """``<name> better`` when p_holm < alpha, else ``no significant difference``."""


@dataclass
class Leaderboard:
    """Several adapters, each compared with the same base, ranked on a primary metric and compared pairwise on it."""

    base_label: str
    alpha: float
    metrics: list[str]
    """Headline metrics shown, in order."""
    comparisons: dict[str, Comparison]
    """Adapter name -> its comparison with the base."""
    schema: str = LEADERBOARD_SCHEMA
    primary: str | None = None
    """The metric the adapters are ranked by (``--metric``; default the first headline metric)."""
    ranking: list[str] = field(default_factory=list)
    """Adapter names, best first on the primary metric (an adapter without it last)."""
    versus: list[Versus] = field(default_factory=list)
    """Every pair of adapters in ranking order, paired on the primary metric."""

    def rows(self) -> list[dict[str, Any]]:
        """One dict per metric: metric, base value, and per adapter its row (or None when absent)."""
        out = []
        for name in self.metrics:
            per = {a: next((r for r in c.rows if r.metric == name), None) for a, c in self.comparisons.items()}
            first = next((r for r in per.values() if r is not None), None)
            out.append(
                {
                    "metric": name,
                    "base": first.base if first else None,
                    "higher_is_better": first.higher_is_better if first else None,
                    "adapters": per,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return _clean(
            {
                "schema": self.schema,
                "base_label": self.base_label,
                "alpha": self.alpha,
                "metrics": self.metrics,
                "comparisons": {k: c.to_dict() for k, c in self.comparisons.items()},
                "primary": self.primary,
                "ranking": self.ranking,
                "versus": [asdict(v) for v in self.versus],
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Leaderboard:
        comps = {k: Comparison.from_dict(v) for k, v in data["comparisons"].items()}
        where, fix = "leaderboard", "recompute it with `tunebench compare`"
        return cls(
            data["base_label"],
            data["alpha"],
            data["metrics"],
            comps,
            data.get("schema", LEADERBOARD_SCHEMA),
            check_json(data.get("primary"), str | None, where, fix),
            check_json(data.get("ranking", []), list[str], where, fix),
            check_json(data.get("versus", []), list[Versus], where, fix),
        )


def rank(comps: dict[str, Comparison], metric: str) -> list[str]:
    """Adapter names, best first on ``metric`` (its direction read from the rows); those without a value last."""

    def key(name: str) -> tuple[bool, float]:
        r = next((r for r in comps[name].rows if r.metric == metric), None)
        if r is None or r.tuned is None or not math.isfinite(r.tuned):
            return (True, 0.0)
        return (False, -r.tuned if r.higher_is_better else r.tuned)

    return sorted(comps, key=key)  # stable: a tie keeps the order the adapters were given


def versus(
    tuned: dict[str, Results], order: Sequence[str], metric: str, alpha: float, n_boot: int, seed: int
) -> list[Versus]:
    """Every pair of adapters (in ``order``) on ``metric``, paired item by item, Holm-adjusted over the pairs.

    Raises:
        ComparisonError: two adapters evaluated on other inputs, or items that do not pair (names both).
    """
    have = [a for a in order if any(m.name == metric for m in tuned[a].metrics)]
    out = []
    for i, first in enumerate(have):
        for second in have[i + 1 :]:
            a, b = tuned[first], tuned[second]
            try:
                check_same_inputs(a, b)
                am, bm = a.metric(metric), b.metric(metric)
                row = compare_metric(
                    am,
                    bm,
                    a.items.get(am.items) if am.items else None,
                    b.items.get(bm.items) if bm.items else None,
                    alpha,
                    n_boot,
                    seed,
                )
            except ComparisonError as e:
                raise ComparisonError(f"adapters {first!r} and {second!r}: {e}") from None
            out.append(Versus(first, second, row))
    for v, q in zip(out, holm([v.row.p_value for v in out]), strict=True):
        v.p_holm = q
        if q is not None and q < alpha and v.row.improvement:
            v.verdict = f"{v.second if v.row.improvement > 0 else v.first} better"
    return out


def leaderboard(
    base: Results,
    tuned: dict[str, Results],
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    primary: str | None = None,
    min_n: int = FEW_SAMPLES,
) -> Leaderboard:
    """Compare several adapters with one base, rank them on the primary metric and compare each pair on it.

    Both adapters of a pair were evaluated on the same items (their inputs are checked equal), so a pair's Δ, interval
    and p come from the same paired statistics as each adapter against the base; the pairs are one family of tests,
    their p-values Holm-adjusted.

    Args:
        base: Results of the shared base model.
        tuned: Adapter name -> its Results.
        alpha, n_boot, seed, min_n: As for ``compare``.
        metrics: Metrics to tabulate; default = every headline metric, in first-seen order.
        primary: The metric to rank by; default = the first tabulated metric.

    Raises:
        ComparisonError: an adapter evaluated on another base model or other inputs (names the adapter), or a
            primary metric no adapter has (names the known ones).
    """
    if not tuned:
        raise ValueError("leaderboard needs at least one adapter")
    comps = {}
    for name, res in tuned.items():
        try:
            comps[name] = compare(base, res, alpha, n_boot, seed, min_n=min_n)
        except ComparisonError as e:
            raise ComparisonError(f"adapter {name!r}: {e}") from None
    if metrics is None:
        seen: dict[str, None] = {}
        for c in comps.values():
            seen.update({r.metric: None for r in c.headline_rows()})
        metrics = list(seen)
    board = Leaderboard(base.label, alpha, list(metrics), comps)
    board.primary = primary or next(iter(metrics), None)
    if board.primary is None:
        return board
    known = {r.metric for c in comps.values() for r in c.rows}
    if board.primary not in known:
        raise ComparisonError(
            f"no metric {board.primary!r} to rank the adapters by; known: {', '.join(sorted(known))} (--metric)"
        )
    board.ranking = rank(comps, board.primary)
    board.versus = versus(tuned, board.ranking, board.primary, alpha, n_boot, seed)
    return board
