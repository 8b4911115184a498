"""Per-item view of a run (schema ``tunebench.per_item/1``, written as ``RUN/per_item.json``): the items that changed
most between base and tuned, and a side-by-side sample of both models' answers.

- Flips: for every top-level metric with per-item records on both sides (test conversations, lm-eval documents,
  probe samples), the items whose value moved most each way. A pass/fail item flips (fail -> pass or pass -> fail);
  any other item (a conversation's perplexity) moves by its Δ, and the largest Δ each way are kept. Each item links
  to its record in ``eval/<label>/results.json`` (a line anchor when the file is as tunebench writes it).
- Side by side: the first N prompts the judge compared (its held-out set first), with its verdict, from
  ``eval/judge/judgments.jsonl``; without a judge, the probes' greedy answers, whose checks are the verdict; with
  neither, no answers were saved and the view says so (nothing is generated at report time).

``per_item`` is pure (two Results, the comparison, the judge's records); ``per_item_of_run`` reads a run folder.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tunebench.compare.comparison import Comparison
from tunebench.core import stats
from tunebench.core.errors import RunFileError
from tunebench.core.io import JSON_MAX_BYTES, check_json, parse_json, read_json, read_json_lines, read_text
from tunebench.evals.results import Results

SCHEMA = "tunebench.per_item/1"
FILE = "per_item.json"
RESULTS = {"base": "eval/base/results.json", "tuned": "eval/tuned/results.json"}
"""Each side's results file, relative to the run folder (and so to report.md beside it)."""
JUDGMENTS = "eval/judge/judgments.jsonl"
HELD_OUT_SET = "heldout"
"""The judge's prompt set of held-out test prompts: shown first in the side-by-side sample."""

RecordLines = dict[str, dict[str, dict[str, int]]]
"""side -> items key -> item id -> the line its record starts on in that side's results file."""


@dataclass
class Flip:
    """One item whose value changed: Δ = tuned − base."""

    id: str
    base: float
    tuned: float
    delta: float
    base_link: str
    tuned_link: str
    """Relative links (from the run folder) to the item's record in each side's results."""
    note: str | None = None
    """Why the failing side failed (a probe's failed check), when the run recorded it."""


@dataclass
class MetricFlips:
    """The items of one metric that changed most each way."""

    metric: str
    kind: Literal["pass_fail", "continuous"]
    unit: str
    higher_is_better: bool
    n: int
    """Items both sides scored."""
    n_better: int
    """Items that got better (pass_fail: fail -> pass)."""
    n_worse: int
    better: list[Flip] = field(default_factory=list)
    """The largest improvements, largest first (at most the report's ``flips`` setting)."""
    worse: list[Flip] = field(default_factory=list)


@dataclass
class AnswerPair:
    """One prompt answered by both models."""

    id: str
    prompt: str
    base: str
    tuned: str
    verdict: str | None
    """The judge's verdict (``tuned better`` / ``base better`` / ``tie`` / ``orders disagree`` / ``no verdict``), or the
    probe checks' outcome on each side."""
    link: str | None = None
    """Relative link to the record the answers come from."""


@dataclass
class PerItem:
    """Flips per metric, and the side-by-side sample of answers with where it came from."""

    flips: list[MetricFlips] = field(default_factory=list)
    side_by_side: list[AnswerPair] = field(default_factory=list)
    side_by_side_source: str | None = None
    """``judge/<set>`` or ``probes/<set>/<sampling>``; None when the run saved no answers."""
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = FILE) -> PerItem:
        """A PerItem from its JSON form, every field checked against its type.

        Raises:
            RunFileError: another schema or a field of the wrong type.
        """
        fix = "recompute it with `tunebench report RUN`"
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise RunFileError(f"{where}: not a {SCHEMA!r} per-item view; {fix}")
        return check_json(data, cls, where, fix)


# ----------------------------------------------------------------------------- flips


def _value(item: dict[str, Any], aggregate: str) -> float:
    num, den = float(item["num"]), float(item["den"])
    if den == 0:
        return math.nan
    return math.exp(num / den) if aggregate == "exp_ratio" else num / den


def _link(side: str, key: str, item_id: str, lines: RecordLines | None) -> str:
    line = ((lines or {}).get(side) or {}).get(key, {}).get(item_id)
    return RESULTS[side] + (f"#L{line}" if line else "")


def _probe_notes(res: Results, metric: str) -> dict[str, str]:
    """Probe sample id -> its failed checks, for ``probes/<set>/<sampling>/...`` metrics."""
    parts = metric.split("/")
    if parts[0] != "probes" or len(parts) < 4:
        return {}
    rows = ((res.artifacts.get("probe_transcripts") or {}).get(parts[1]) or {}).get(parts[2]) or []
    out = {}
    for t in rows:
        failed = t.get("failed") or t.get("failed_check")
        if failed and not t.get("passed"):
            out[str(t.get("id"))] = "; ".join(map(str, failed)) if isinstance(failed, list) else str(failed)
    return out


def metric_flips(
    base: Results, tuned: Results, metric: str, k: int, lines: RecordLines | None = None
) -> MetricFlips | None:
    """The items of ``metric`` that changed most each way (None without per-item records on both sides)."""
    bm, tm = base.metric(metric), tuned.metric(metric)
    b_items = base.items.get(bm.items) if bm.items else None
    t_items = tuned.items.get(tm.items) if tm.items else None
    if not b_items or not t_items:
        return None
    by_id = {str(i["id"]): i for i in t_items}
    pairs = [(b, by_id[str(b["id"])]) for b in b_items if str(b["id"]) in by_id]
    binary = all(
        stats.is_binary(np.array([p[s]["num"] for p in pairs], float), np.array([p[s]["den"] for p in pairs], float))
        for s in (0, 1)
    )
    notes = {"base": _probe_notes(base, metric), "tuned": _probe_notes(tuned, metric)}
    moved = []
    for b, t in pairs:
        bv, tv = _value(b, bm.aggregate), _value(t, tm.aggregate)
        if not (math.isfinite(bv) and math.isfinite(tv)) or bv == tv:
            continue
        item_id = str(b["id"])
        better = (tv > bv) == bm.higher_is_better
        worse_side = "base" if better else "tuned"
        moved.append(
            Flip(
                item_id,
                bv,
                tv,
                tv - bv,
                _link("base", bm.items or metric, item_id, lines),
                _link("tuned", tm.items or metric, item_id, lines),
                notes[worse_side].get(item_id),
            )
        )
    # a flip of a pass/fail item is as large as any other: those keep the results' order; other items, largest Δ first
    up = [f for f in moved if (f.delta > 0) == bm.higher_is_better]
    down = [f for f in moved if (f.delta > 0) != bm.higher_is_better]
    if not binary:
        up.sort(key=lambda f: (-abs(f.delta), f.id))
        down.sort(key=lambda f: (-abs(f.delta), f.id))
    return MetricFlips(
        metric=metric,
        kind="pass_fail" if binary else "continuous",
        unit=bm.unit,
        higher_is_better=bm.higher_is_better,
        n=len(pairs),
        n_better=len(up),
        n_worse=len(down),
        better=up[:k],
        worse=down[:k],
    )


# ----------------------------------------------------------------------------- side by side


def _judge_verdict(r: dict[str, Any]) -> str:
    score = r.get("score")
    if score is None:
        return "no verdict"
    if score == 0:
        return "orders disagree (a tie)" if r.get("consistent") is False else "tie"
    return "tuned better" if score > 0 else "base better"


def judged_pairs(judgments: list[dict[str, Any]], n: int) -> tuple[list[AnswerPair], str | None]:
    """The first ``n`` judged prompts of the held-out set (else of the first set judged), with the judge's verdict.

    Args:
        judgments: judgments.jsonl's records in file order, each with ``line`` (its line number) added.
        n: How many prompts.
    """
    pairs = [r for r in judgments if "base_answer" in r and "tuned_answer" in r]
    if not pairs or n <= 0:
        return [], None
    sets = list(dict.fromkeys(str(r.get("set")) for r in pairs))
    chosen = HELD_OUT_SET if HELD_OUT_SET in sets else sets[0]
    shown = [r for r in pairs if str(r.get("set")) == chosen][:n]
    out = [
        AnswerPair(
            str(r["id"]),
            str(r.get("question", "")),
            str(r["base_answer"]),
            str(r["tuned_answer"]),
            _judge_verdict(r),
            f"{JUDGMENTS}#L{r['line']}" if r.get("line") else JUDGMENTS,
        )
        for r in shown
    ]
    return out, f"judge/{chosen}"


def _check(t: dict[str, Any]) -> str:
    return "pass" if t.get("passed") else "fail"


def probe_pairs(base: Results, tuned: Results, n: int) -> tuple[list[AnswerPair], str | None]:
    """The first ``n`` probe prompts both sides answered, greedy decoding first (one deterministic answer each)."""
    b_all = base.artifacts.get("probe_transcripts") or {}
    t_all = tuned.artifacts.get("probe_transcripts") or {}
    for set_name, b_set in b_all.items():
        t_set = t_all.get(set_name) or {}
        for sampling in sorted(b_set, key=lambda s: (s != "greedy", s)):
            other = {str(t.get("id")): t for t in t_set.get(sampling) or []}
            both = [(b, other[str(b.get("id"))]) for b in b_set[sampling] or [] if str(b.get("id")) in other]
            if both and n > 0:
                return [
                    AnswerPair(
                        str(b.get("id")),
                        str(b.get("prompt", "")),
                        str(b.get("output", "")),
                        str(t.get("output", "")),
                        f"probe checks: base {_check(b)}, tuned {_check(t)}",
                    )
                    for b, t in both[:n]
                ], f"probes/{set_name}/{sampling}"
    return [], None


# ----------------------------------------------------------------------------- the whole view


def flip_metrics(comparison: Comparison) -> list[str]:
    """The metrics whose items are shown: top-level rows (not a breakdown's members, which share their items), not the
    judge's (its answers are in the side-by-side sample)."""
    return [r.metric for r in comparison.rows if r.family is None and r.group != "judge"]


def per_item(
    base: Results,
    tuned: Results,
    comparison: Comparison,
    judgments: list[dict[str, Any]] | None = None,
    side_by_side: int = 5,
    flips: int = 5,
    lines: RecordLines | None = None,
) -> PerItem:
    """The per-item view (pure: reads nothing).

    Args:
        base, tuned: The two Results the comparison was made from.
        comparison: Their comparison (which metrics are top-level).
        judgments: The judge's records (judgments.jsonl, with ``line`` numbers), or None without a judge stage.
        side_by_side: Prompts in the answer sample (report.side_by_side).
        flips: Items shown each way per metric (report.flips).
        lines: Where each item's record starts in each side's results file (``record_lines``), for link anchors.
    """
    out = PerItem()
    for metric in flip_metrics(comparison):
        mf = metric_flips(base, tuned, metric, flips, lines)
        if mf is not None:
            out.flips.append(mf)
    out.side_by_side, out.side_by_side_source = judged_pairs(judgments or [], side_by_side)
    if not out.side_by_side:
        out.side_by_side, out.side_by_side_source = probe_pairs(base, tuned, side_by_side)
    return out


# ----------------------------------------------------------------------------- run folders (I/O)


def _fragment(text: str) -> Any:
    """One JSON scalar cut from a line of a file already read through core.io (a key or an id)."""
    return parse_json(text, "results.json")


def record_lines(text: str) -> dict[str, dict[str, int]]:
    """Items key -> item id -> the 1-based line its record opens on, in a results.json as ``atomic_write_json``
    writes it (indented by 2); {} for any other layout (the links then name the file alone)."""
    out: dict[str, dict[str, int]] = {}
    in_items, key, prev = False, None, 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not in_items:
            in_items = line == '  "items": {'
        elif line.startswith("  }"):
            break
        elif line.startswith('    "') and line.endswith("["):
            try:
                key = _fragment(line.strip()[: -len(": [")])
            except RunFileError:
                key = None
            out.setdefault(str(key), {})
        elif key is not None and line.startswith('        "id": '):
            try:
                out[str(key)][str(_fragment(line.strip()[len('"id": ') :].rstrip(",")))] = prev
            except RunFileError:
                pass
        if line.strip() == "{":
            prev = n
    return out


def read_judgments(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """The judge's records in file order, each with its ``line``; None when the run has no judgments.jsonl.

    Raises:
        RunFileError: a line that is not a JSON object (names the file and line).
    """
    path = Path(run_dir) / JUDGMENTS
    if not path.is_file():
        return None
    fix = "re-run the judge stage (`tunebench run`)"
    lines = read_json_lines(path, fix)
    if lines.bad or lines.cut_last is not None:
        n, why = lines.bad[0] if lines.bad else (lines.cut_last, "cut short")
        raise RunFileError(f"{path} line {n}: {why}; {fix}")
    out = []
    for n, rec in lines.records:
        if not isinstance(rec, dict):
            raise RunFileError(f"{path} line {n}: not a JSON object; {fix}")
        out.append({**rec, "line": n})
    return out


def per_item_of_run(
    run_dir: str | Path,
    results: dict[str, Results],
    comparison: Comparison,
    with_judge: bool = True,
    side_by_side: int = 5,
    flips: int = 5,
) -> PerItem:
    """The per-item view of a run folder: its results files' record lines and, when ``with_judge``, its judgments."""
    run = Path(run_dir)
    lines = {
        side: record_lines(read_text(run / rel, "re-run its evaluation (`tunebench eval RUN`)", limit=JSON_MAX_BYTES))
        if (run / rel).is_file()
        else {}
        for side, rel in RESULTS.items()
    }
    judgments = read_judgments(run) if with_judge else None
    return per_item(results["base"], results["tuned"], comparison, judgments, side_by_side, flips, lines)


def load_per_item(path: str | Path) -> PerItem:
    """Read and check a per_item.json."""
    return PerItem.from_dict(read_json(path, "recompute it with `tunebench report RUN`"), str(path))
