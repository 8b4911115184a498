"""Typed evaluation records and their JSON form (schema ``tunebench.results/1``).

One ``results.json`` per evaluated model. Each metric carries its value, n, a 95% interval (or stderr),
``higher_is_better``, and a pointer to per-item records so that base and tuned can be compared with paired
statistics.

Per-item records are ``{"id": str, "num": float, "den": float}``; a metric's value is computed from the
items by its ``aggregate``:

- ``mean``:      sum(num) / sum(den)            (den = 1 per item: a plain mean; accuracy, pass rate)
- ``exp_ratio``: exp(sum(num) / sum(den))       (perplexity: num = summed NLL, den = token count)

so the same resampling code serves every metric.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from tunebench.core.errors import RunFileError
from tunebench.core.io import atomic_write_json, check_json, read_json, short, show_json
from tunebench.core.runtimes import artifact_eval_command, is_artifact_label, label_artifact

SCHEMA = "tunebench.results/1"
Aggregate = Literal["mean", "exp_ratio"]
SHARD_ORDER = "shard_order"
"""Results of one shard (``tunebench eval RUN --shard i/N``) carry ``artifacts["shard_order/<family>"]``: every
metric's item ids in the order an unsharded run lists them, for ``tunebench merge``."""


class Item(TypedDict):
    """One per-item record (see the module docstring)."""

    id: str
    num: float
    den: float


@dataclass
class Metric:
    """One number about one model, with its uncertainty."""

    name: str
    """Unique within a results file, slash-separated: ``perplexity/test``, ``lm_eval/<task>/<metric>``,
    ``probes/<set>/<sampling>/pass_rate``."""
    value: float
    higher_is_better: bool
    n: int
    """How many items the value is computed from (see ``unit``)."""
    unit: str = "items"
    """What n counts: conversations, documents, samples, prompts..."""
    ci_low: float | None = None
    ci_high: float | None = None
    """95% interval of the value (bootstrap, Wilson, or lm-eval stderr x 1.96)."""
    ci_method: str | None = None
    stderr: float | None = None
    aggregate: Aggregate = "mean"
    items: str | None = None
    """Key into ``Results.items`` holding this metric's per-item records, if any."""
    group: str | None = None
    """For reports: perplexity | lm_eval | probes | ..."""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    """Everything measured about one model (base, or base + adapter)."""

    label: str
    """``base`` or ``tuned`` (or an adapter's name in a leaderboard)."""
    model: dict[str, Any]
    """What was evaluated: base model source, adapter path and hash, chat template."""
    inputs: dict[str, Any]
    """Fingerprints of what was fed in (test tokens, probe sets, sampling, lm-eval tasks).

    Comparisons require equality."""
    metrics: list[Metric] = field(default_factory=list)
    items: dict[str, list[Item]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    """Extra data for reports: probe transcripts, contamination, lm-eval configs..."""
    environment: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    schema: str = SCHEMA

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.metrics)
        raise KeyError(f"no metric {name!r} in {self.label} results; known: {known}")

    def add(self, metric: Metric, items: list[dict[str, Any]] | None = None) -> Metric:
        """Add a metric (replacing one of the same name) and its per-item records."""
        self.metrics = [m for m in self.metrics if m.name != metric.name] + [metric]
        if items is not None:
            key = metric.items or metric.name
            metric.items = key
            self.items[key] = items
        return metric

    def merge(self, other: Results) -> None:
        """Fold another partial result (e.g. from the lm-eval subprocess) into this one."""
        for m in other.metrics:
            self.add(m, other.items.get(m.items) if m.items else None)
        self.inputs.update(other.inputs)
        self.artifacts.update(other.artifacts)
        self.timings.update(other.timings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "results", fix: str = "re-run the evaluation") -> Results:
        """Results from their JSON form, every field checked against its type.

        Raises:
            RunFileError: another schema, a field of the wrong type or a required one missing (names ``where``,
                the field and ``fix``).
        """
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != SCHEMA:
            got = f"schema {short(schema)}" if isinstance(data, dict) else f"holds {show_json(data)}"
            raise RunFileError(f"{where}: {got}, not a {SCHEMA!r} results object; {fix}")
        return check_json(data, cls, where, fix)

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """Read and check a results.json.

        Raises:
            FileNotFoundError: no such file.
            RunFileError: damaged or of the wrong shape; the message says which command writes it again.
        """
        path = Path(path)
        fix = rerun_hint(path)
        return cls.from_dict(read_json(path, fix), where=str(path), fix=fix)


def rerun_hint(path: str | Path) -> str:
    """The command that writes a results file again, from where it lies in its run folder."""
    path = Path(path)
    up = [p.name for p in path.parents]
    if len(up) > 4 and up[2] == "shards" and up[3] == "eval":  # RUN/eval/shards/i-of-N/LABEL/results.json
        index, _, count = path.parents[1].name.partition("-of-")
        return f"re-run `tunebench eval {path.parents[4]} --shard {index}/{count}`"
    if path.parent.parent.name != "eval":
        return "re-run the `tunebench eval` that wrote it"
    run, label = path.parents[2], path.parent.name
    if label in ("base", "tuned"):
        return f"re-run `tunebench eval {run}`"
    if is_artifact_label(label):
        return f"re-run `{artifact_eval_command(label_artifact(label), run)}`"
    return f"re-run `tunebench eval --model MODEL --data-from {run} --label {label}`"


def aggregate(items: list[dict[str, Any]], how: Aggregate) -> float:
    """A metric's value from its per-item records."""
    num = sum(float(i["num"]) for i in items)
    den = sum(float(i["den"]) for i in items)
    if den == 0:
        return float("nan")
    return math.exp(num / den) if how == "exp_ratio" else num / den
