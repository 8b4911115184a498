"""`tunebench eval`: a run's base and tuned, one model (an adapter, an exported GGUF in transformers or llama.cpp) on a
run's inputs, or an OpenAI-compatible endpoint; then the run's report re-rendered with what was scored."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from tunebench.app.cli_notes import again_command, cache_note
from tunebench.app.eval_settings import eval_settings
from tunebench.app.pipeline import finish
from tunebench.app.preflight import preflight
from tunebench.app.shards import eval_shard
from tunebench.app.stages import Fingerprints, Stages, check_run_folder, run_folder
from tunebench.compare.comparison import Comparison
from tunebench.core import dist
from tunebench.core.config import load_config
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import ConfigError, Interrupted, MissingRunFile
from tunebench.core.io import check_json, read_json
from tunebench.core.runtimes import (
    SERVED_PREFIX,
    TRANSFORMERS,
    file_label,
    is_artifact_label,
    is_served_label,
    label_artifact,
)
from tunebench.evals.contract import check_contract
from tunebench.evals.driver import evaluate, open_runtime
from tunebench.evals.runner import check_artifact_template, evaluate_model, save_contamination
from tunebench.models.loading import resolve_model
from tunebench.reports.render_evals import export_view
from tunebench.reports.render_tables import metric_table

REUSED = "same model, adapter, data and settings; --force recomputes"
"""Why `tunebench eval` reused saved results instead of computing them again."""


def cmd_eval(args: argparse.Namespace) -> int:
    if args.run and "=" in args.run and not Path(args.run).exists():  # an override, not a run folder
        args.overrides, args.run = [args.run, *args.overrides], None
    if args.shard is not None:
        return eval_shard(args)
    if args.run:
        return _eval_run(args)
    if args.endpoint and (args.model or args.adapter or args.runtime != TRANSFORMERS):
        raise ConfigError("--endpoint evaluates what a server serves: leave out --model, --adapter and --runtime")
    if not args.model and not args.endpoint:
        raise ConfigError(
            "give a run folder (tunebench eval RUN), --model REF [--adapter DIR] --data-from RUN, or "
            "--endpoint URL --data-from RUN"
        )
    if not args.data_from:
        raise ConfigError(
            f"{'--endpoint' if args.endpoint else '--model'} needs --data-from RUN: the run folder "
            "whose test split and settings to use"
        )
    run_dir = run_folder(args.data_from)  # a link loop or a file is named as such, not as a missing preset
    if args.endpoint:
        return _eval_endpoint(args, run_dir)
    # a .gguf without an adapter is an exported artifact: checked for the run's template, scored as written
    artifact = Path(args.model).suffix == ".gguf" and not args.adapter
    if args.runtime != TRANSFORMERS:  # another runtime scores an exported file as written (evals.driver's registry)
        if not artifact:
            raise ConfigError(
                f"--runtime {args.runtime} scores an exported GGUF (RUN/export/model-<type>.gguf) without "
                f"--adapter; got --model {args.model}" + (" with --adapter" if args.adapter else "")
            )
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        label = args.label or file_label(args.model, args.runtime)
        out = Path(args.out) if args.out else run_dir / "eval" / label / "results.json"
        settings = eval_settings(cfg).for_artifact(args.model)
        evaluate(open_runtime(args.runtime, settings, run_dir), settings, run_dir, label, out)
        print(f"{label}: {out}")
        if is_artifact_label(label) and out == run_dir / "eval" / label / "results.json":
            _report_artifact(run_dir, cfg, label)
        return 0
    cfg = load_config(run_dir / "config.yaml", [f"model.ref={args.model}", *args.overrides])
    preflight(cfg)
    label = args.label or (file_label(args.model) if artifact else "tuned" if args.adapter else "base")
    out = Path(args.out) if args.out else run_dir / "eval" / label / "results.json"
    if not artifact and _current_side(args, cfg, run_dir, label, out):
        print(f"{label}: reused {out} ({REUSED})")
        return 0
    if artifact:  # the template in the metadata first: a file without one is named as such, not as unloadable
        check_artifact_template(args.model, run_dir)
        check_contract(args.model, run_dir / "adapter", list(cfg.eval.probe_files))
    try:
        settings = eval_settings(cfg)
        evaluate_model(settings.for_artifact(args.model) if artifact else settings, run_dir, label, args.adapter, out)
    except KeyboardInterrupt:
        raise Interrupted(
            f"the evaluation of {args.model} stopped before {out} was written; {cache_note(cfg)}. "
            f"Continue with `{again_command(args)}`"
        ) from None
    if dist.is_main():
        print(f"{label}: {out}")
        if artifact and is_artifact_label(label) and out == run_dir / "eval" / label / "results.json":
            _report_artifact(run_dir, cfg, label)
    return 0


def _eval_run(args: argparse.Namespace) -> int:
    """`tunebench eval RUN`: base and tuned on the run's inputs (each reused when its saved results are current, unless
    --force), then the run's report re-rendered."""
    run_dir = run_folder(args.run)
    check_run_folder(run_dir, splits=True)  # a damaged config or split exits 2 here, before any model loads
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    preflight(cfg)
    dist.init()
    stages = Stages(run_dir)
    wanted = _stage_fingerprints(cfg, run_dir)
    contamination_path = run_dir / "eval" / "contamination.json"
    if not args.force and stages.fresh("contamination", wanted["contamination"], contamination_path):
        contamination = read_json(contamination_path)
    else:
        contamination = save_contamination(run_dir, cfg.eval) if dist.is_main() else None
        if dist.is_main():
            stages.mark("contamination", wanted["contamination"], [contamination_path])
    reused = []
    for label, adapter in (("base", None), ("tuned", run_dir / "adapter")):
        out, stage = run_dir / "eval" / label / "results.json", f"eval_{label}"
        if not args.force and stages.fresh(stage, wanted[stage], out):
            reused.append(label)
            continue
        try:
            with stages.clock.stage(stage):
                evaluate_model(eval_settings(cfg), run_dir, label, adapter, out, contamination)
        except KeyboardInterrupt:
            raise Interrupted(_eval_run_interrupted(args, cfg, run_dir, label, out)) from None
        if dist.is_main():
            stages.mark(stage, wanted[stage], [out])
            print(f"{label}: {out}")
    if dist.is_main():
        if reused:  # one line: what was not computed again, and why
            files = ", ".join(str(run_dir / "eval" / x / "results.json") for x in reused)
            print(f"{' and '.join(reused)}: reused {files} ({REUSED})")
        result = finish(run_dir, cfg)
        print("\n" + result.headline)
        print(f"report: {result.report}")
    return 0


def _current_side(args: argparse.Namespace, cfg: RunConfig, run_dir: Path, label: str, out: Path) -> bool:
    """Whether `eval --model M [--adapter A] --data-from RUN` asks for what the run's own base or tuned results already
    hold, still current: the same file, model, adapter, data and settings (and no --force)."""
    if args.force or label not in ("base", "tuned") or out != run_dir / "eval" / label / "results.json":
        return False
    given = Path(args.adapter).resolve() if args.adapter else None
    if given != (None if label == "base" else (run_dir / "adapter").resolve()):
        return False
    stage = f"eval_{label}"
    return Stages(run_dir).fresh(stage, _stage_fingerprints(cfg, run_dir)[stage], out)


def _stage_fingerprints(cfg: RunConfig, run_dir: Path) -> dict[str, str | None]:
    """What `tunebench run` records for the stages `eval RUN` computes (its results are the same files): the
    contamination and base evaluation on the model, data and settings; the tuned one on the adapter too."""
    fps = Fingerprints.of(cfg, resolve_model(cfg.model.ref, cfg.model.revision).identity)
    manifest = run_dir / "adapter" / "manifest.json"
    tuned = fps.tuned(read_json(manifest)) if manifest.is_file() else None
    return {"contamination": fps.eval, "eval_base": fps.eval, "eval_tuned": tuned}


def _eval_run_interrupted(args: argparse.Namespace, cfg: RunConfig, run_dir: Path, label: str, out: Path) -> str:
    """What a stopped `eval RUN` kept, and the command that continues it: the same one while the base was running;
    the tuned side alone once the base results are written."""
    kept = "the base results were written; " if label == "tuned" else ""
    again = (
        again_command(args)
        if label == "base"
        else shlex.join(
            [
                "tunebench",
                "eval",
                "--model",
                cfg.model.ref,
                "--adapter",
                str(run_dir / "adapter"),
                "--data-from",
                str(run_dir),
                *args.overrides,
            ]
        )
    )
    return (
        f"the {label} evaluation of {run_dir} stopped before {out} was written; {kept}"
        f"{cache_note(cfg)}. Continue with `{again}`"
    )


def _eval_endpoint(args: argparse.Namespace, run_dir: Path) -> int:
    """`tunebench eval --endpoint URL --data-from RUN`: the served model on the run's inputs, paired with the adapter
    (the report's Export section) and with the in-process llama.cpp artifact the server serves, when scored."""
    from tunebench.evals.served import evaluate_endpoint

    if args.concurrency < 1:
        raise ConfigError(f"--concurrency {args.concurrency}: use at least 1 request in flight")
    if not (run_dir / "adapter").is_dir():
        raise MissingRunFile(
            f"{run_dir}: no adapter/ to pair the served model with; give the run folder that "
            "`tunebench run` or `tunebench train` wrote"
        )
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    label = args.label or SERVED_PREFIX
    out = Path(args.out) if args.out else run_dir / "eval" / label / "results.json"
    try:
        served = evaluate_endpoint(
            eval_settings(cfg),
            run_dir,
            args.endpoint,
            label,
            out,
            args.served_model,
            args.api_key_env,
            args.concurrency,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"the evaluation of {args.endpoint} stopped before {out} was written (nothing of it is "
            f"kept: a server is asked again). Run `{again_command(args)}` again"
        ) from None
    check = served.artifacts.get("likelihood_check")
    if check and not check["ok"]:
        print(f"{label}: no perplexity: the server at {args.endpoint} failed the log-prob check: {check['why']}")
    lm_check = served.artifacts.get("lm_eval_check")
    if lm_check and not lm_check["ok"]:
        print(
            f"{label}: no lm-eval tasks: the server at {args.endpoint} failed the continuation check: {lm_check['why']}"
        )
    print(f"{label}: {out}")
    _served_vs_artifact(run_dir, cfg, served)
    if is_served_label(label) and out == run_dir / "eval" / label / "results.json":
        _report_artifact(run_dir, cfg, label)
    return 0


def _served_vs_artifact(run_dir: Path, cfg: RunConfig, served: Any) -> None:
    """Print the served answers against the in-process llama.cpp scoring of the file the server lists, if any."""
    from tunebench.compare.runs import load_artifact_results, served_against_artifacts

    results = {k: v for k, v in load_artifact_results(run_dir).items() if not is_served_label(k)}
    for p in served_against_artifacts({**results, served.label: served}, cfg.report.alpha, cfg.eval.bootstrap_samples):
        if p.comparison is None:
            print(f"{served.label} against {p.artifact} (in-process llama.cpp, same file): not comparable ({p.why})")
            continue
        print(
            f"\n{served.label} against {p.artifact} (in-process llama.cpp on the same file {p.gguf}; Δ = served − "
            f"in-process):"
        )
        for sampling, (equal, total) in p.identical.items():
            print(f"- {sampling}: {equal} of {total} answers identical")
        print(metric_table(p.comparison.headline_rows(), p.comparison.alpha, detailed=False))


def _report_artifact(run_dir: Path, cfg: RunConfig, label: str) -> None:
    """Re-render the run's report with the artifact just scored (report.md, comparison.json,
    export_comparison.json) and print the artifact's Δ against the adapter as the report's export section does."""
    if not all((run_dir / "eval" / side / "results.json").is_file() for side in ("base", "tuned")):
        print(
            f"report: not refreshed: {run_dir} has no base and tuned results to compare with yet "
            f"(`tunebench eval {run_dir}`)"
        )
        return
    result = finish(run_dir, cfg)
    name, path = label_artifact(label), run_dir / "export_comparison.json"  # served keeps its label
    fresh = path.exists() and path.stat().st_mtime >= (run_dir / "eval" / label / "results.json").stat().st_mtime
    fix = f"recompute it with `tunebench report {run_dir}`"
    exported = check_json(read_json(path, fix), dict[str, Any], str(path), fix) if fresh else {}
    if name in exported:
        view = export_view(
            Comparison.from_dict(read_json(run_dir / "comparison.json")), {name: Comparison.from_dict(exported[name])}
        )
        print(
            f"\n{label} against the adapter it was exported from (Δ = artifact − adapter, {view['level']} "
            "intervals paired item by item):"
        )
        for line in view["lines"]:
            print(f"- {line}")
        print("\n" + view["table"])
    else:
        print(f"{label} was left out of the report's export section: the warning above says why")
    print(f"report: {result.report}")
