"""`tunebench eval RUN --shard i/N` and `tunebench merge RUN`: one evaluation spread over machines (a SLURM array, a
Kubernetes indexed Job), then joined into the results one machine would have written.

Layout: shard ``i`` of ``N`` writes ``RUN/eval/shards/<i>-of-<N>/{base,tuned}/results.json`` (never the unsharded
``RUN/eval/{base,tuned}/results.json``), under its own lock, so every shard of a run on a shared disk writes at
once. Each results file records, under ``artifacts["shard"]``, its index and count, the fingerprint of what it was
evaluated on (the run's evaluation and model settings, test tokens, template, adapter weights, the number of
shards) and the versions that compute the numbers. ``merge`` refuses, before writing anything: no shard, shards of
two splits, a missing or duplicated shard, a shard of other settings or versions, then joins each model's shards
(``evals.shard_merge``), writes the unsharded results and renders the report as ``tunebench eval RUN`` does.
Which items a shard scores, and why merged equals unsharded: ``core.shards``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from tunebench.app.cli_notes import again_command, cache_note
from tunebench.app.eval_settings import eval_settings
from tunebench.app.pipeline import PipelineResult, finish
from tunebench.app.preflight import preflight
from tunebench.core import dist
from tunebench.core.config import load_config
from tunebench.core.config_build import to_dict
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError, Interrupted, MissingRunFile, PipelineError, ShardError
from tunebench.core.io import atomic_write_json, fingerprint, package_version
from tunebench.core.lock import run_lock
from tunebench.core.runtimes import TRANSFORMERS
from tunebench.core.shards import Shard, parse_shard
from tunebench.data.data_report import read_report
from tunebench.evals.results import Results
from tunebench.evals.runner import contamination_report, evaluate_model, probe_prompt_texts
from tunebench.evals.shard_merge import Part, merge_parts
from tunebench.models.adapters import adapter_sha

SHARDS = "shards"
"""RUN/eval/shards/<i>-of-<N>/: one shard's results."""
RECORD = "shard"
"""``artifacts["shard"]`` of a shard's results: index, count, fingerprint, versions, interval settings."""
LABELS = ("base", "tuned")
VERSIONS = ("tunebench", "torch", "transformers", "peft", "lm-eval")
"""Packages whose versions every shard must share: they compute the numbers."""
_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def shard_dir(run_dir: Path, shard: Shard) -> Path:
    """RUN/eval/shards/<i>-of-<N>."""
    return run_dir / "eval" / SHARDS / shard.name


def settings_fingerprint(cfg: RunConfig, run_dir: Path, count: int) -> str:
    """What every shard of one merge must have been evaluated on: the evaluation settings (the judge's apart: it
    is not sharded), the model section, the interval level, the test tokens and template of the data step, the
    adapter's weights, and the number of shards."""
    report = read_report(run_dir / "data")
    return fingerprint(
        {
            "eval": {k: v for k, v in to_dict(cfg.eval).items() if k != "judge"},
            "model": to_dict(cfg.model),
            "alpha": cfg.report.alpha,
            "test": report["splits"]["test"]["fingerprint"],
            "template": report["template"]["sha"],
            "adapter": adapter_sha(run_dir / "adapter"),
            "shards": count,
        }
    )


def eval_shard(args: argparse.Namespace) -> int:
    """`tunebench eval RUN --shard i/N` (or ``--shard slurm``): base and tuned on shard i's items.

    Raises:
        ConfigError: a bad shard, or --shard with a form of eval other than RUN.
    """
    shard = parse_shard(args.shard)
    flags = {"--model": args.model, "--endpoint": args.endpoint, "--out": args.out, "--label": args.label}
    others = [f for f, v in {**flags, "--data-from": args.data_from}.items() if v]
    others += ["--runtime"] if args.runtime != TRANSFORMERS else []
    if not args.run or others:
        raise ConfigError(
            "--shard splits the evaluation of a run's base and tuned (`tunebench eval RUN --shard i/N`)"
            + (f"; leave out {', '.join(others)}" if others else "; give the run folder")
            + ": exported artifacts, endpoints and single models are evaluated on one machine"
        )
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise PipelineError(
            f"{run_dir}: not a tunebench run folder (no config.yaml); give the folder `tunebench run` wrote"
        )
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    preflight(cfg)
    dist.init()
    record = {
        "index": shard.index,
        "count": shard.count,
        "fingerprint": settings_fingerprint(cfg, run_dir, shard.count),
        "versions": {name: package_version(name) for name in VERSIONS},
        "bootstrap_samples": cfg.eval.bootstrap_samples,
        "alpha": cfg.report.alpha,
    }
    probes = probe_prompt_texts(cfg.eval) if cfg.eval.probe_files else None
    contamination = contamination_report(run_dir, cfg.eval, probes) if dist.is_main() else None
    with run_lock(shard_dir(run_dir, shard), f"eval --shard {shard.index}/{shard.count}"):
        for label, adapter in zip(LABELS, (None, run_dir / "adapter"), strict=True):
            out = shard_dir(run_dir, shard) / label / "results.json"
            try:
                res = evaluate_model(eval_settings(cfg), run_dir, label, adapter, None, contamination, shard=shard)
            except KeyboardInterrupt:
                raise Interrupted(
                    f"shard {shard.index}/{shard.count} of {run_dir} stopped before {out} was written; "
                    f"{cache_note(cfg)}. Continue with `{again_command(args)}`"
                ) from None
            if dist.is_main():
                res.artifacts[RECORD] = record
                res.save(out)
                print(f"{label} (shard {shard.index}/{shard.count}): {out}")
    if dist.is_main():
        print(f"join the {shard.count} shards, once all are written: tunebench merge {run_dir}")
    return 0


def merge(run_dir: Path, overrides: list[str]) -> PipelineResult:
    """`tunebench merge RUN`: every shard's results joined into RUN/eval/{base,tuned}/results.json, then the
    report; nothing is written when a shard is missing, duplicated or of other settings.

    Raises:
        ShardError, MissingRunFile, RunFileError: what does not join, with the command that fixes it.
    """
    if not (run_dir / "config.yaml").is_file():
        raise PipelineError(
            f"{run_dir}: not a tunebench run folder (no config.yaml); give the folder `tunebench run` wrote"
        )
    cfg = load_config(run_dir / "config.yaml", overrides)
    folders = _shard_folders(run_dir)
    parts = {
        label: [Part(str(f / label / "results.json"), _load(f, label, run_dir)) for f in folders] for label in LABELS
    }
    record = _check_records(parts, cfg, run_dir)
    for part in (p for ps in parts.values() for p in ps):
        del part.results.artifacts[RECORD]  # checked: the unsharded results have no shard
    merged = {label: merge_parts(p, record["bootstrap_samples"], record["alpha"]) for label, p in parts.items()}
    for label, res in merged.items():
        res.save(run_dir / "eval" / label / "results.json")
    if "contamination" in merged["base"].artifacts:  # as `tunebench eval RUN` writes it
        atomic_write_json(run_dir / "eval" / "contamination.json", merged["base"].artifacts["contamination"])
    return finish(run_dir, cfg)


def _shard_folders(run_dir: Path) -> list[Path]:
    """RUN/eval/shards/<i>-of-<N> of one split, every index present, in order.

    Raises:
        ShardError: no shard, shards of several splits, or missing indices (with the commands that write them).
    """
    root = run_dir / "eval" / SHARDS
    found = {
        (int(m.group(1)), int(m.group(2))): p
        for p in sorted(root.iterdir() if root.is_dir() else [])
        if p.is_dir() and (m := _NAME.match(p.name))
    }
    if not found:
        raise ShardError(
            f"{root}: no shards to merge; evaluate them first, one per machine: `tunebench eval {run_dir} --shard "
            "i/N` for i = 0 .. N-1"
        )
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        split = "; ".join(f"{n} shards: {', '.join(p.name for (i, c), p in found.items() if c == n)}" for n in counts)
        raise ShardError(
            f"{root} holds shards of {len(counts)} different splits ({split}); delete the folders of the split "
            "you do not want, then merge again"
        )
    count = counts[0]
    missing = [i for i in range(count) if (i, count) not in found]
    if missing:
        commands = "; ".join(f"tunebench eval {run_dir} --shard {i}/{count}" for i in missing)
        raise ShardError(
            f"{root}: shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}-of-{count}' for i in missing)} of "
            f"{count} missing; evaluate {'them' if len(missing) > 1 else 'it'} first: {commands}"
        )
    return [found[(i, count)] for i in range(count)]


def _load(folder: Path, label: str, run_dir: Path) -> Results:
    path = folder / label / "results.json"
    if not path.is_file():
        index, _, count = folder.name.partition("-of-")
        raise MissingRunFile(
            f"{path}: missing: shard {index}/{count} has not finished its {label} evaluation; "
            f"run `tunebench eval {run_dir} --shard {index}/{count}` (again)"
        )
    return Results.load(path)


def _check_records(parts: dict[str, list[Part]], cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Every shard's record: its index and count those of its folder (a copied folder is a duplicate), one
    fingerprint, that of the run's settings now, the same versions.

    Returns:
        The first shard's record.

    Raises:
        ShardError: naming the shard and what differs.
    """
    records = []
    for ps in parts.values():
        for k, p in enumerate(ps):
            rec = p.results.artifacts.get(RECORD)
            if not isinstance(rec, dict) or not {"index", "count", "fingerprint"} <= set(rec):
                raise ShardError(f"{p.where}: not the results of `tunebench eval RUN --shard` (no shard record)")
            if (rec["index"], rec["count"]) != (k, len(ps)):
                raise ShardError(
                    f"{p.where}: holds shard {rec['index']}/{rec['count']}, not {k}/{len(ps)}: a copy of another "
                    f"shard's folder, so that shard would count twice. Delete it and run `tunebench eval {run_dir} "
                    f"--shard {k}/{len(ps)}`"
                )
            records.append((p, rec))
    first_part, first = records[0]
    for p, rec in records[1:]:
        for key, what in (("fingerprint", "settings"), ("versions", "package versions")):
            if rec.get(key) != first.get(key):
                raise ShardError(
                    f"{p.where} and {first_part.where} were evaluated with other {what} ({_show(rec.get(key))} "
                    f"against {_show(first.get(key))}); evaluate every shard with the same config, overrides and "
                    "installation"
                )
    want = settings_fingerprint(cfg, run_dir, first["count"])
    if first["fingerprint"] != want:
        raise ShardError(
            f"the shards of {run_dir} were evaluated with other settings than its config.yaml with the overrides "
            f"given to merge (fingerprint {first['fingerprint']}, now {want}): give merge the same overrides as "
            "eval --shard, or evaluate the shards again"
        )
    return first


def _show(v: Any) -> str:
    return str(v) if not isinstance(v, dict) else ", ".join(f"{k} {x}" for k, x in v.items())
