"""Conversations, the data step: read a source, standardize and split it, encode each split, write the split files
and the data report.

The step's rooms: ``data.standardize`` (ShareGPT, OpenAI-messages or Alpaca records -> conversations, drop
reasons, content-hash splits), ``data.encode`` (chat template, assistant-token mask), ``data.data_report`` (the
report read back, its Markdown) and ``data.sources`` (files, folders, the hub). Each name is imported from the module
that defines it.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core.config_schema import DataConfig
from tunebench.core.errors import DataError, RunFileError
from tunebench.core.io import (
    atomic_write_json,
    atomic_write_text,
    check_json,
    fingerprint,
    read_json,
    read_json_lines,
)
from tunebench.data.data_report import render_report
from tunebench.data.encode import (
    Encoded,
    TemplateInfo,
    encode_split,
    renders_tool_turns,
    template_info,
    tokens_fingerprint,
)
from tunebench.data.sources import read_source
from tunebench.data.splits import check_splits
from tunebench.data.standardize import DROP_REASONS, MALFORMED_SHOWN, SPLITS, Conversation, standardize_and_split

log = logging.getLogger(__name__)


def _length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    q = lambda p: v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]  # noqa: E731
    return {
        "n": len(v),
        "mean": round(statistics.fmean(v), 1),
        "min": v[0],
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "max": v[-1],
        "total": sum(v),
    }


@dataclass
class PreparedData:
    """The data step's product: encoded splits plus the report that describes them."""

    encoded: dict[str, list[Encoded]]
    conversations: dict[str, list[Conversation]]
    template: TemplateInfo
    report: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.report["fingerprint"]


def prepared_to_dict(prepared: PreparedData) -> dict[str, Any]:
    """``prepared`` as plain JSON-ready data (``prepared_from_dict`` reads it back exactly)."""
    return {
        "schema": "tunebench.prepared/1",
        "encoded": {s: [e.__dict__ for e in rows] for s, rows in prepared.encoded.items()},
        "conversations": {s: [c.to_dict() for c in rows] for s, rows in prepared.conversations.items()},
        "template": prepared.template.to_dict(),
        "report": prepared.report,
    }


def prepared_from_dict(data: dict[str, Any]) -> PreparedData:
    """The PreparedData ``prepared_to_dict`` wrote.

    Raises:
        DataError: not such a record (another schema, a damaged file)."""
    if not isinstance(data, dict) or data.get("schema") != "tunebench.prepared/1":
        raise DataError("not a tunebench prepared-data file (schema tunebench.prepared/1); delete it and prepare again")
    return PreparedData(
        encoded={s: [Encoded(**e) for e in rows] for s, rows in data["encoded"].items()},
        conversations={s: [Conversation(**c) for c in rows] for s, rows in data["conversations"].items()},
        template=TemplateInfo(**data["template"]),
        report=data["report"],
    )


def prepare(
    tok: Any,
    template_name: str,
    cfg: DataConfig,
    out_dir: str | Path | None = None,
    *,
    eval_every: int = 0,
    strict: bool = False,
    check_sizes: bool = True,
) -> PreparedData:
    """Read, standardize, split, encode; write the split files and the data report into ``out_dir``.

    Args:
        eval_every: ``train.eval_every``: above 0 an empty validation split is a problem (``data.splits``).
        strict: split problems are errors, not warnings.
        check_sizes: check the split sizes and say what was wrong with the source (off where the data step already
            did).

    Raises:
        DataError: unreadable source, nothing trainable, or (``strict``) a split too small to decide anything.
    """
    info = template_info(tok, template_name)  # first: a template that cannot be masked is refused before reading
    raw = read_source(cfg.source, cfg.hub_split)
    for w in raw.warnings:  # once: where the data step did (training re-reads the source), it said them already
        (log.warning if check_sizes else log.debug)(w)
    std = standardize_and_split(raw, cfg, keep_tools=renders_tool_turns(tok))
    if check_sizes:  # before encoding: a split too small is known from the hashes alone
        std.warnings += check_splits({s: len(v) for s, v in std.splits.items()}, cfg, eval_every, strict)
    encoded: dict[str, list[Encoded]] = {}
    length_dropped: dict[str, Counter] = {}
    for s in SPLITS:
        encoded[s], length_dropped[s] = encode_split(
            tok, std.splits[s], info.end_of_turn, cfg.max_length, cfg.truncation, desc=f"encode {s}"
        )
    if not encoded["train"]:
        raise DataError(
            f"{cfg.source}: every training conversation lost its assistant tokens at max_length={cfg.max_length}; "
            "raise data.max_length or use data.truncation=truncate"
        )
    kept_ids = {s: {e.id for e in encoded[s]} for s in SPLITS}
    convs = {s: [c for c in std.splits[s] if c.id in kept_ids[s]] for s in SPLITS}
    split_fp = {s: tokens_fingerprint(encoded[s]) for s in SPLITS}
    report = {
        "schema": "tunebench.data_report/1",
        "source": std.source,
        "source_identity": std.identity,
        "config": cfg.__dict__,
        "template": info.to_dict(),
        "records": std.n_records,
        "formats": dict(std.formats.most_common()),
        "dropped": dict(std.dropped.most_common()),
        "dropped_by_length": {s: dict(c) for s, c in length_dropped.items()},
        "drop_reasons": DROP_REASONS,
        "drop_examples": std.drop_examples,
        "malformed_lines": std.malformed_lines[:MALFORMED_SHOWN],
        "malformed_lines_total": len(std.malformed_lines),
        "malformed_reasons": std.malformed_reasons,
        "clean": sum(std.uncapped.values()),
        "exact_duplicates": std.duplicates,
        "split_sizes_before_caps": std.uncapped,
        "splits": {
            s: {
                "conversations": len(encoded[s]),
                "truncated": sum(e.truncated for e in encoded[s]),
                "tokens": _length_stats([len(e.input_ids) for e in encoded[s]]),
                "assistant_tokens": _length_stats([e.n_assistant for e in encoded[s]]),
                "fingerprint": split_fp[s],
            }
            for s in SPLITS
        },
        "warnings": std.warnings,
    }
    report["fingerprint"] = fingerprint([std.identity, split_fp, info.sha])
    prepared = PreparedData(encoded, convs, info, report)
    if out_dir is not None:
        write(prepared, Path(out_dir))
    return prepared


def write(prepared: PreparedData, out_dir: Path) -> None:
    """Write split files (JSONL), the data report (JSON + Markdown), atomically."""

    out_dir.mkdir(parents=True, exist_ok=True)
    for s, convs in prepared.conversations.items():
        atomic_write_text(
            out_dir / f"{s}.jsonl", "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in convs)
        )
    atomic_write_json(out_dir / "data_report.json", prepared.report)
    atomic_write_text(out_dir / "data_report.md", render_report(prepared.report))


def load_split(out_dir: str | Path, split: str) -> list[Conversation]:
    """Read back a split written by ``write``, whole: every line a conversation, as many as the data report records.

    Raises:
        DataError: the split is missing (run the data step).
        RunFileError: a line that does not read or is not a conversation (named by its line), or fewer or more
            conversations than the data report records (cut short, emptied or replaced).
    """
    path = Path(out_dir) / f"{split}.jsonl"
    run = path.parent.parent
    fix = f"the split is damaged; write it again with `tunebench data {run / 'config.yaml'} --out {run}`"
    if not path.exists():
        raise DataError(f"{path}: missing; run `tunebench data` first")
    lines = read_json_lines(path, fix)
    bad = lines.bad + ([(lines.cut_last, "cut short (the last line has no end)")] if lines.cut_last else [])
    if bad:
        more = f" ({len(bad)} such lines)" if len(bad) > 1 else ""
        raise RunFileError(f"{path} line {bad[0][0]}: {bad[0][1]}{more}; {fix}")
    convs = [check_json(rec, Conversation, f"{path} line {n}", fix) for n, rec in lines.records]
    want = _recorded_size(Path(out_dir), split)
    if want is not None and want != len(convs):
        raise RunFileError(
            f"{path}: {len(convs)} conversations where the data report records {want} (cut short, emptied or "
            f"replaced); {fix}"
        )
    return convs


def _recorded_size(out_dir: Path, split: str) -> int | None:
    """How many conversations the data report says ``split`` holds; None without a report that says."""
    path = out_dir / "data_report.json"
    if not path.exists():
        return None
    report = read_json(path, f"re-run `tunebench data {out_dir.parent / 'config.yaml'} --out {out_dir.parent}`")
    splits = report.get("splits") if isinstance(report, dict) else None
    facts = splits.get(split) if isinstance(splits, dict) else None
    size = facts.get("conversations") if isinstance(facts, dict) else None
    return size if type(size) is int else None
