"""The report's sections on the run itself: training, data, contamination, the gate's table, the environment."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from tunebench.core.markdown import kv_table, table
from tunebench.core.numbers import fmt, fmt_interval
from tunebench.reports.more_items import get_path


def _utc(ts: Any) -> str | None:
    """A Unix time as an ISO UTC timestamp (manifests store seconds since the epoch)."""

    if not isinstance(ts, (int, float)):
        return ts
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _peak_memory(mem: dict[str, Any]) -> str:
    """The GPU allocator's peaks; on CPU there is none to read, only the process's peak resident memory."""
    if mem.get("kind") != "cpu_rss":
        return (
            f"{fmt(mem.get('allocated_gib'), pattern='{:.2f}', missing=None)} GiB allocated, "
            f"{fmt(mem.get('reserved_gib'), pattern='{:.2f}', missing=None)} GiB reserved ({mem.get('kind')})"
        )
    rss = fmt(mem.get("rss_gib"), pattern="{:.2f}", missing=None)
    return "not measured (CPU)" + (f"; peak resident memory of the process {rss} GiB" if rss else "")


def training_summary(m: dict[str, Any]) -> str | None:
    """Key facts of the training manifest as a two-column table."""
    cfg = m.get("config") or {}
    lora, train = cfg.get("lora") or {}, cfg.get("train") or {}
    backend = m.get("backend") or {}
    mem = m.get("peak_memory") or {}
    losses, evals = m.get("loss_history") or [], m.get("eval_history") or []
    batch = (
        f"{train['batch_size']} × {train['grad_accum']} accumulation"
        if "batch_size" in train and "grad_accum" in train
        else None
    )
    memory = _peak_memory(mem) if mem else None
    params = None
    if m.get("trainable_params") is not None:
        trainable = fmt(m.get("trainable_params"), pattern="{:,}", missing=None)
        total = fmt(m.get("total_params"), pattern="{:,}", missing=None)
        params = f"{trainable} of {total} ({fmt(m.get('trainable_percent'), pattern='{:.3f}', missing=None)}%)"
    lora_text = (
        f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
        f"rsLoRA={lora.get('use_rslora')}, targets: {', '.join(lora.get('target_modules') or [])}"
        if lora
        else None
    )
    return kv_table(
        [
            ("Base model", get_path(m, "model", "ref")),
            ("Model identity", get_path(m, "model", "identity")),
            ("Chat template", get_path(m, "template", "name")),
            ("Backend", f"{backend.get('name')} ({backend.get('reason')})" if backend else None),
            ("LoRA", lora_text),
            (
                "Learning rate",
                f"{train.get('lr')} ({train.get('scheduler')}, {_warmup(train)})" if "lr" in train else None,
            ),
            ("Batch", batch),
            ("Optimizer", train.get("optimizer")),
            ("Seed", train.get("seed")),
            ("Steps", m.get("steps")),
            ("Tokens seen", fmt(m.get("tokens_seen"), pattern="{:,}", missing=None)),
            ("Wall time", fmt(m.get("wall_time_s"), pattern="{:.1f} s", missing=None)),
            ("Throughput", fmt(m.get("tokens_per_s"), pattern="{:.1f} tokens/s", missing=None)),
            ("Peak memory", memory),
            ("Trainable parameters", params),
            ("Final training loss", fmt(losses[-1].get("loss"), pattern="{:.4f}", missing=None) if losses else None),
            ("Base validation loss (step 0)", fmt(m.get("base_eval_loss"), pattern="{:.4f}", missing=None)),
            (
                "Final validation loss",
                fmt(evals[-1].get("eval_loss"), pattern="{:.4f}", missing=None) if evals else None,
            ),
            ("Data fingerprint", get_path(m, "data", "fingerprint")),
            ("Git commit", m.get("git_commit")),
            ("Source fingerprint", get_path(m, "versions", "tunebench_source")),
            ("Created", _utc(m.get("created"))),
        ],
        headers=("Training", ""),
    )


def data_summary(d: dict[str, Any]) -> dict[str, Any]:
    """Overview, per-split and dropped-record tables of the data report."""
    overview = kv_table(
        [
            ("Source", d.get("source")),
            ("Records read", fmt(d.get("records"), pattern="{:,}", missing=None)),
            ("Clean conversations", fmt(d.get("clean"), pattern="{:,}", missing=None)),
            ("Chat template", get_path(d, "template", "name")),
            ("Fingerprint", d.get("fingerprint")),
        ],
        headers=("Data", ""),
    )
    total = lambda v: v.get("total") if isinstance(v, dict) else v  # noqa: E731
    splits = [
        [
            name,
            s.get("conversations"),
            fmt(total(s.get("tokens")), pattern="{:,}", missing=None),
            fmt(total(s.get("assistant_tokens")), pattern="{:,}", missing=None),
            s.get("fingerprint"),
        ]
        for name, s in (d.get("splits") or {}).items()
    ]
    dropped = [[reason, n] for reason, n in (d.get("dropped") or {}).items()]
    return {
        "overview": overview,
        "splits": table(splits, ["Split", "Conversations", "Tokens", "Assistant tokens", "Fingerprint"])
        if splits
        else None,
        "dropped": table(dropped, ["Dropped because", "Records"]) if dropped else None,
        "warnings": [str(w) for w in d.get("warnings") or []],
    }


def contamination_table(artifacts: Sequence[dict[str, Any] | None]) -> str | None:
    """Train/eval n-gram overlap per evaluation set (the first artifacts holding it win).

    Accepts ``evals.contamination`` output (``{"n", ..., "sets": {name: {"checked", "contaminated", "share",
    "worst": [{"id", "fraction", ...}]}}}``) or a plain ``{name: {"n", "overlapping", "share", "worst"}}``.
    """
    cont = next((a["contamination"] for a in artifacts if a and a.get("contamination")), None)
    if not isinstance(cont, dict):
        return None
    sets = cont["sets"] if isinstance(cont.get("sets"), dict) else cont
    gram = f"{cont['n']}-grams" if isinstance(cont.get("n"), int) else "n-grams"

    def worst(ws: Any) -> str:
        # an item's own share of n-grams found in training: "2 of 45", not a rounded "0%" beside a 4.44% share
        shown = []
        for w in (ws or [])[:3]:
            if isinstance(w, dict):
                share, matched, total = w.get("fraction", w.get("share")), w.get("matched"), w.get("ngrams")
                text = str(w.get("id", "?"))
                if isinstance(matched, int) and isinstance(total, int):
                    text += f" ({matched} of its {total} {gram})"
                elif isinstance(share, (int, float)):
                    text += f" ({share * 100:.2g}% of its {gram})"
            else:
                text = str(w)
            shown.append(text if len(text) <= 60 else text[:57] + "...")
        return ", ".join(shown)

    rows = []
    for name, c in sets.items():
        if not isinstance(c, dict):
            continue
        share = c.get("share")
        rows.append(
            [
                name,
                c.get("checked", c.get("n", c.get("items"))),
                c.get("contaminated", c.get("overlapping")),
                f"{share * 100:.2f}%" if isinstance(share, (int, float)) else None,
                worst(c.get("worst")),
            ]
        )
    return (
        table(
            rows,
            [
                "Evaluation set",
                "Items checked",
                "Items overlapping with training",
                "Share of items",
                "Most overlapping items",
            ],
        )
        if rows
        else None
    )


def gate_table(gate: dict[str, Any]) -> str | None:
    rows = [
        [
            r.get("rule"),
            f"`{r.get('metric')}`",
            r.get("base"),
            r.get("tuned"),
            fmt(r.get("delta"), True),
            fmt_interval(r.get("ci_low"), r.get("ci_high")),
            r.get("threshold"),
            r.get("status"),
            r.get("items_needed") if r.get("items_needed") is not None else "",
            r.get("reason"),
        ]
        for r in gate.get("rows") or []
    ]
    return (
        table(
            rows, ["Rule", "Metric", "Base", "Tuned", "Δ", "CI of Δ", "Threshold", "Status", "Items needed", "Reason"]
        )
        if rows
        else None
    )


def _flat(d: dict[str, Any] | None) -> list[tuple[str, Any]]:
    return [(str(k), v) for k, v in (d or {}).items()]


def _stage_rows(times: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """One row per pipeline stage with its wall time (timings.json), then their sum."""
    stages = (times or {}).get("stages") or {}
    rows = [(f"wall time: {name.replace('_', ' ')}", f"{sec:.1f} s") for name, sec in stages.items()]
    return rows + ([("wall time: all stages", f"{sum(stages.values()):.1f} s")] if stages else [])


def environment_tables(
    evaluation: dict[str, Any] | None, training: dict[str, Any] | None, stage_times: dict[str, Any] | None = None
) -> tuple[str | None, str | None]:
    """The evaluation's environment (with stage times), then only what training ran with differently.

    Both record mostly the same versions; printing both tables in full printed the environment twice.
    """
    evaluation = evaluation or {}
    differs = [(k, v) for k, v in _flat(training) if v is not None and evaluation.get(k) != v]
    env = kv_table(_flat(evaluation) + _stage_rows(stage_times), headers=("Environment", ""))
    if not evaluation:  # no evaluation environment: the training one is the only one there is
        return env, kv_table(_flat(training), headers=("Training environment", ""))
    return env, kv_table(differs, headers=("Training ran with (where it differs)", ""))


def _warmup(train: dict[str, Any]) -> str:
    """The warm-up as configured: a share of the updates (warmup_ratio, which replaces the steps) or steps."""
    ratio = train.get("warmup_ratio")
    return (
        f"{fmt(ratio, pattern='{:.0%}')} of the updates warming up"
        if ratio is not None
        else (f"{train.get('warmup_steps')} warm-up steps")
    )
