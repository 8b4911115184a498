"""`tunebench run`: data -> train -> evaluate base and tuned -> compare -> report -> gate, in one run folder.

Each stage records a fingerprint of its inputs in ``stages.json``; a re-run skips stages whose inputs
have not changed, so a rerun after a crash continues where it stopped (training resumes from its last
checkpoint). Training runs in a child process: Unsloth must be imported before transformers there, and
evaluation must never run on Unsloth-patched transformers.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunebench.app.preflight import preflight
from tunebench.app.stages import StageClock as StageClock  # re-exported
from tunebench.app.stages import Stages
from tunebench.core import tracking
from tunebench.core.config import RunConfig, asked, dump_yaml, from_dict, to_dict
from tunebench.core.errors import (
    EXIT_INTERRUPTED,
    ComparisonError,
    ConfigError,
    Interrupted,
    PipelineError,
)
from tunebench.core.io import (
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    package_version,
    read_json,
)
from tunebench.core.lock import LOCK_FILES, run_lock
from tunebench.data import conversations as data_mod
from tunebench.evals.contract import check_contract
from tunebench.evals.judge import judge_fingerprint, run_judge
from tunebench.evals.llamacpp import LABEL_SUFFIX
from tunebench.evals.llamacpp_eval import evaluate_gguf_llamacpp
from tunebench.evals.runner import evaluate_model, save_contamination
from tunebench.models.loading import (
    ModelSource,
    choose_template,
    load_config_of,
    load_tokenizer,
    resolve_model,
)
from tunebench.reports.compare import (
    ARTIFACT_PREFIX,
    compare,
    compare_artifacts,
    load_artifact_results,
    load_judge_results,
    load_run_results,
    served_against_artifacts,
)
from tunebench.reports.gate import gate_main
from tunebench.reports.per_item import FILE as PER_ITEM_FILE
from tunebench.reports.per_item import per_item_of_run
from tunebench.reports.plots import draw_report_plots
from tunebench.reports.render import context_from_run, metric_table, render_report
from tunebench.reports.tracking import comparison_metrics, log_metrics
from tunebench.train.gguf_export import export_gguf
from tunebench.train.model_card import append_evaluation

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    run_dir: Path
    report: Path
    gate_code: int
    headline: str


def resolve_template(cfg: RunConfig, source: ModelSource) -> RunConfig:
    """Resolve ``model.chat_template=auto`` from the model itself (the machine-dependent values were resolved by
    load_config), so every stage reads one concrete template name."""
    if cfg.model.chat_template != "auto":
        return cfg
    name = choose_template("auto", load_config_of(source, cfg.model.trust_remote_code))
    out = from_dict(to_dict(cfg))
    out.model.chat_template = name
    out.resolution["model.chat_template"] = (
        "llama-3.1: a Llama 3.x model" if name == "llama-3.1" else "the model's own template (not a Llama 3.x model)"
    )
    return out


def write_config(cfg: RunConfig, run_dir: Path) -> None:
    """config.yaml: the resolved config every stage reads; config.asked.yaml: what was asked for."""
    atomic_write_text(run_dir / "config.asked.yaml", yaml.safe_dump(asked(cfg), sort_keys=False))
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))


def prepare_run_dir(cfg: RunConfig, run_dir: Path, overwrite: bool) -> None:
    """Create the run folder, or accept it if it holds the same config; refuse a different one."""
    cfg_path = run_dir / "config.yaml"
    if run_dir.exists() and any(p.name not in LOCK_FILES for p in run_dir.iterdir()):
        if overwrite:  # everything but the lock this process holds (a new lock file would admit a second writer)
            for p in run_dir.iterdir():
                if p.name not in LOCK_FILES:
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
        elif cfg_path.exists():
            old = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
            try:  # a section added since (e.g. export) takes its defaults: the same run, not another config
                old = to_dict(from_dict(old))
            except ConfigError:
                pass
            old, new = _settings(old), _settings(to_dict(cfg))
            if fingerprint(_trained(old)) != fingerprint(_trained(new)):
                raise PipelineError(
                    f"{run_dir} holds a run with another config ({_diff(_trained(old), _trained(new))}); pass "
                    f"--overwrite to replace it or --out to use another folder (the {', '.join(EVAL_SECTIONS)} "
                    "settings may change: a run reuses its adapter and evaluates again)"
                )
            if fingerprint(old) != fingerprint(new):
                log.info(
                    "%s: the settings changed since the last run (%s); the adapter is reused, the stages they feed "
                    "run again",
                    run_dir,
                    "; ".join(_diffs(old, new)),
                )
        else:
            raise PipelineError(f"{run_dir} exists and is not a tunebench run; pass --overwrite or --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """What makes two configs the same run: every setting, not the reasons ``auto`` recorded for its values (their
    wording may change between versions; the values they explain are settings themselves)."""
    return {k: v for k, v in cfg.items() if k != "resolution"}


EVAL_SECTIONS = ("eval", "report", "gate")
"""Config sections no training stage reads (the judge is eval.judge): a finished run whose config differs only in
them is the same run, and `run` reruns just the stages they feed (each stage's fingerprint decides)."""


def _trained(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings without the sections that only evaluation, report and gate read."""
    return {k: v for k, v in settings.items() if k not in EVAL_SECTIONS}


def _diff(a: Any, b: Any, prefix: str = "") -> str:
    return (_diffs(a, b, prefix) or ["the settings differ"])[0]


def _diffs(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Every setting that differs, as ``key: old -> new`` (dotted keys, sorted)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out += _diffs(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run a training child and return its exit code. The child gets the terminal's SIGINT itself; a SIGTERM sent
    to this process alone (a scheduler, `kill`) is passed on, so the child finishes its step and checkpoints instead
    of being killed mid-save."""
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _train_child(run_dir: Path) -> None:
    """Run `tunebench train` on the run's config in a child process; Ctrl-C reaches it and it checkpoints."""
    cmd = [sys.executable, "-m", "tunebench", "train", str(run_dir / "config.yaml"), "--out", str(run_dir), "--resume"]
    log.info("training in a child process: %s", " ".join(cmd))
    code = run_child(cmd)
    if code == EXIT_INTERRUPTED:
        raise Interrupted(
            f"training was interrupted; a checkpoint is in {run_dir}/checkpoints. "
            "Run the same command again to continue."
        )
    if code != 0:
        raise PipelineError(f"training failed (exit code {code}); see the messages above")


def train_settings(cfg: RunConfig) -> dict[str, Any]:
    """The train section as the train stage's fingerprint reads it: trackers watch training, they don't change the
    adapter, so turning one on does not train again."""
    return {k: v for k, v in to_dict(cfg.train).items() if k != "report_to"}


def run(
    cfg: RunConfig, run_dir: str | Path, overwrite: bool = False, progress: bool = True, strict: bool = False
) -> PipelineResult:
    """The whole pipeline. Returns where the report is and the gate's exit code; ``strict`` refuses splits too
    small to decide anything (data.splits) instead of warning."""
    run_dir = Path(run_dir)
    preflight(cfg, whole_run=True)  # a typo in a task name, probe file or gate rule fails here, not after training
    with run_lock(run_dir, "run"):
        return _run(cfg, run_dir, overwrite, progress, strict)


def _run(cfg: RunConfig, run_dir: Path, overwrite: bool, progress: bool, strict: bool) -> PipelineResult:
    """The stages of `run`, under the run folder's lock."""
    source = resolve_model(cfg.model.ref, cfg.model.revision)
    cfg = resolve_template(cfg, source)
    prepare_run_dir(cfg, run_dir, overwrite)
    stages = Stages(run_dir)

    def data() -> None:
        tok, tname = load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)
        data_mod.prepare(tok, tname, cfg.data, run_dir / "data", eval_every=cfg.train.eval_every, strict=strict)

    data_fp = fingerprint([to_dict(cfg.data), cfg.model.chat_template, source.identity])
    stages.run("data", data_fp, [run_dir / "data" / "data_report.json"], data)

    def train() -> None:
        if stages.done.get("train") not in (None, train_fp):  # settings changed: old checkpoints don't apply
            shutil.rmtree(adapter, ignore_errors=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        _train_child(run_dir)

    train_fp = fingerprint([data_fp, to_dict(cfg.model), to_dict(cfg.lora), train_settings(cfg)])
    adapter = run_dir / "adapter"
    stages.run("train", train_fp, [adapter / "manifest.json"], train)

    # the judge has its own stage: its settings leave perplexity, probes and lm-eval alone
    eval_settings = {k: v for k, v in to_dict(cfg.eval).items() if k != "judge"}
    eval_fp = fingerprint([data_fp, to_dict(cfg.model), eval_settings, cfg.report.alpha])
    contamination_path = run_dir / "eval" / "contamination.json"
    stages.run("contamination", eval_fp, [contamination_path], lambda: save_contamination(run_dir, cfg))
    contamination = read_json(contamination_path)

    base_path = run_dir / "eval" / "base" / "results.json"
    stages.run(
        "eval_base",
        eval_fp,
        [base_path],
        lambda: evaluate_model(cfg, run_dir, "base", None, base_path, contamination, progress),
    )

    manifest = read_json(adapter / "manifest.json")
    adapter_fp = fingerprint([train_fp, manifest.get("created")])  # this adapter, as trained
    tuned_fp = fingerprint([eval_fp, train_fp, manifest.get("created")])
    tuned_path = run_dir / "eval" / "tuned" / "results.json"
    stages.run(
        "eval_tuned",
        tuned_fp,
        [tuned_path],
        lambda: evaluate_model(cfg, run_dir, "tuned", adapter, tuned_path, contamination, progress),
    )

    if cfg.eval.judge.enabled:
        judge_path = run_dir / "eval" / "judge"
        stages.run(
            "judge",
            # the adapter and the judge's own settings (judge_fingerprint), not the other evaluations': a new
            # lm-eval task or probe set leaves the judgments standing
            fingerprint([data_fp, adapter_fp, judge_fingerprint(cfg)]),
            [judge_path / "results.json", judge_path / "judgments.jsonl"],
            lambda: run_judge(cfg, run_dir, adapter, judge_path, progress),
        )

    if cfg.export.gguf:
        export_stage(cfg, run_dir, stages, adapter_fp, eval_fp, contamination, progress)
    if stages.reuse_line():
        log.info("%s", stages.reuse_line())
    result = finish(run_dir, cfg)
    # compare, gate and report always run (cheap, deterministic): recorded so stages.json tells when they last ran,
    # without checksums (every finish rewrites them: a run stopped inside one must not leave stale sums "done")
    stages.mark("report", fingerprint([to_dict(cfg.report), to_dict(cfg.gate), cfg.eval.judge.enabled]))
    return result


def export_stage(
    cfg: RunConfig,
    run_dir: Path,
    stages: Stages,
    adapter_fp: str,
    eval_fp: str,
    contamination: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write the GGUF files of cfg.export.gguf, then score each like the adapter (eval/gguf-<type>/results.json).

    Cached like the other stages: the export reruns when the adapter, the types or gguf-py change; an
    artifact's evaluation when its file or the evaluation settings change.

    Returns:
        The GGUF paths.
    """

    files = [run_dir / "export" / f"model-{q}.gguf" for q in cfg.export.gguf]
    export_fp = fingerprint([adapter_fp, list(cfg.export.gguf), package_version("gguf")])
    stages.run(
        "export",
        export_fp,
        [*files, run_dir / "export" / "export.json"],
        lambda: export_and_check(run_dir, list(cfg.export.gguf), list(cfg.eval.probe_files)),
    )
    runtimes = artifact_runtimes(cfg.export.evaluate)
    for q, path in zip(cfg.export.gguf, files, strict=True):
        if "transformers" in runtimes:
            label = ARTIFACT_PREFIX + q
            out = run_dir / "eval" / label / "results.json"
            acfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, ref=str(path)))
            stages.run(
                f"eval_{label}",
                fingerprint([eval_fp, export_fp, q]),
                [out],
                lambda acfg=acfg, label=label, out=out: evaluate_model(
                    acfg, run_dir, label, None, out, contamination, progress, artifact=True
                ),
            )
        if "llama.cpp" in runtimes:
            label = ARTIFACT_PREFIX + q + LABEL_SUFFIX
            out = run_dir / "eval" / label / "results.json"
            stages.run(
                f"eval_{label}",
                fingerprint([eval_fp, export_fp, q, package_version("llama_cpp_python")]),
                [out],
                lambda path=path, label=label, out=out: evaluate_gguf_llamacpp(
                    cfg, run_dir, path, label, out, contamination, progress
                ),
            )
    return files


def artifact_runtimes(evaluate: str | bool) -> list[str]:
    """Runtimes that score each exported artifact (``export.evaluate``): true = transformers."""
    if evaluate is False:
        return []
    return {"both": ["transformers", "llama.cpp"], "llama.cpp": ["llama.cpp"]}.get(str(evaluate), ["transformers"])


def export_and_check(run_dir: Path, quants: list[str], probe_files: list[str]) -> Path:
    """Write the GGUF files, then check each file's template and token contract (evals.contract).

    Raises:
        ContractError: a file would be fed other tokens than the run was evaluated on (the files stay, with
            ``contract-<type>.json`` absent, and the stage is not recorded as done).
    """
    out = export_gguf(run_dir, quants)
    for q in quants:
        report = check_contract(out / f"model-{q}.gguf", run_dir / "adapter", probe_files)
        atomic_write_json(out / f"contract-{q}.json", report.to_dict())
        log.info(
            "contract %s: %s agree on %d prompts%s",
            q,
            ", ".join(report.runtimes),
            report.prompts,
            f" (skipped: {'; '.join(report.skipped)})" if report.skipped else "",
        )
    return out


def finish(run_dir: Path, cfg: RunConfig) -> PipelineResult:
    """Compare, gate and render from the results files (always recomputed: cheap and deterministic)."""

    results = load_run_results(run_dir)
    judged = load_judge_results(run_dir) if cfg.eval.judge.enabled else None
    comparison = compare(results["base"], results["tuned"], cfg.report.alpha, cfg.eval.bootstrap_samples, judged=judged)
    atomic_write_json(run_dir / "comparison.json", comparison.to_dict())
    if tracking.active(cfg.train.report_to):  # the results beside the training curves, at the last step
        steps = (
            read_json(run_dir / "adapter" / "manifest.json").get("steps", 0)
            if (run_dir / "adapter" / "manifest.json").is_file()
            else 0
        )
        log_metrics(cfg.train.report_to, run_dir, comparison_metrics(comparison.rows), step=steps, run_name=cfg.name)
    exported = {}
    for name, res in load_artifact_results(run_dir).items():
        try:
            exported.update(
                compare_artifacts(results["tuned"], {name: res}, cfg.report.alpha, cfg.eval.bootstrap_samples)
            )
        except ComparisonError as e:  # e.g. scored before the evaluation settings changed: left out, said why
            log.warning("export section: %s; re-evaluate it to include it", e)
    if exported:
        atomic_write_json(run_dir / "export_comparison.json", {q: c.to_dict() for q, c in exported.items()})
    per = per_item_of_run(
        run_dir, results, comparison, judged is not None, cfg.report.side_by_side, cfg.report.flips
    )  # data first: per_item.json, then the report's answers side by side and flips
    atomic_write_json(run_dir / PER_ITEM_FILE, per.to_dict())
    buf = io.StringIO()
    code = gate_main(run_dir, cfg.gate.rules, stream=buf)
    context = context_from_run(run_dir, results)
    context["per_item"] = per
    if exported:
        context["export_comparisons"] = exported
        context["served_parity"] = served_against_artifacts(
            load_artifact_results(run_dir), cfg.report.alpha, cfg.eval.bootstrap_samples
        )
    context.update(draw_report_plots(run_dir, comparison, context).files)  # PNGs beside report.md, linked from it
    report = render_report(comparison, context)
    atomic_write_text(run_dir / "report.md", report)
    headline = metric_table(comparison.headline_rows(), comparison.alpha, detailed=False)
    append_evaluation(run_dir / "adapter", headline, run_dir / "report.md")
    return PipelineResult(run_dir, run_dir / "report.md", code, headline + "\n\n" + buf.getvalue())
