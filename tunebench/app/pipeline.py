"""`tunebench run`: data -> train -> evaluate base and tuned -> compare -> report -> gate, in one run folder.

Each stage records a fingerprint of its inputs in ``stages.json``; a re-run skips stages whose inputs
have not changed, so a rerun after a crash continues where it stopped (training resumes from its last
checkpoint). Training runs in a child process: Unsloth must be imported before transformers there, and
evaluation must never run on Unsloth-patched transformers.
"""

from __future__ import annotations

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

from tunebench.app import ranks
from tunebench.app.eval_settings import eval_settings
from tunebench.app.preflight import preflight
from tunebench.app.stages import Fingerprints, Stages
from tunebench.compare.comparison import Comparison, compare
from tunebench.compare.per_item import FILE as PER_ITEM_FILE
from tunebench.compare.per_item import per_item_of_run
from tunebench.compare.rows import JUDGE_DIR, load_judge_results
from tunebench.compare.runs import (
    compare_artifacts,
    load_artifact_results,
    load_run_results,
    run_settings,
    served_against_artifacts,
)
from tunebench.core import output, tracking
from tunebench.core.config_build import dump_yaml, from_dict, to_dict
from tunebench.core.config_resolve import asked
from tunebench.core.config_schema import RunConfig
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
    read_json_object,
    read_yaml,
    short,
)
from tunebench.core.lock import LOCK_FILES, run_lock
from tunebench.core.runtimes import RUNTIME_PACKAGES, artifact_label, artifact_runtimes, gguf_file_name
from tunebench.data import conversations as data_mod
from tunebench.data.standardize import SPLITS
from tunebench.evals.contract import check_contract
from tunebench.evals.driver import evaluate, open_runtime
from tunebench.evals.judge.stage import judge_fingerprint, run_judge
from tunebench.evals.results import Results
from tunebench.evals.runner import evaluate_model, save_contamination
from tunebench.gate.verdict import judge_run, write_verdict
from tunebench.models.loading import (
    ModelSource,
    choose_template,
    load_config_of,
    load_tokenizer,
    resolve_model,
)
from tunebench.reports.plots import draw_report_plots
from tunebench.reports.render import context_from_run, render_report
from tunebench.reports.render_tables import metric_table
from tunebench.reports.tracking import comparison_metrics, log_metrics
from tunebench.train.gguf_export import export_gguf
from tunebench.train.model_card import with_evaluation

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
            fix = "restore it from a copy, or pass --overwrite to start the run again (--out to use another folder)"
            old = read_yaml(cfg_path, fix, PipelineError)
            if not isinstance(old, dict) or not old:  # never compared as the defaults
                raise PipelineError(f"{cfg_path}: {'empty' if old is None else 'not a mapping of sections'}; {fix}")
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
    return [f"{prefix.rstrip('.')}: {short(a)} -> {short(b)}"]


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run a training child and return its exit code. The child gets the terminal's SIGINT itself; a SIGTERM sent
    to this process alone (a scheduler, `kill`) is passed on, so the child finishes its step and checkpoints instead
    of being killed mid-save. A child that ends otherwise than cleanly after a SIGTERM was passed on (one still
    starting up can die of it, e.g. SIGABRT inside an import) is reported as interrupted (``EXIT_INTERRUPTED``), not
    as a failure: this process was asked to stop."""
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    stopped = []

    def pass_on(signum: int, frame: Any) -> None:
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)

    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, pass_on)
    try:
        code = proc.wait()
        return EXIT_INTERRUPTED if stopped and code != 0 else code
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _train_child(run_dir: Path, env: dict[str, str] | None = None) -> None:
    """Run `tunebench train` on the run's config in a child process; Ctrl-C reaches it and it checkpoints. ``env``:
    under a launcher, the child's ranks and rendezvous (``ranks.Crew.training_env``)."""
    cmd = [sys.executable, "-m", "tunebench", "train", str(run_dir / "config.yaml"), "--out", str(run_dir), "--resume"]
    log.info("training in a child process: %s", " ".join(cmd))
    code = run_child(cmd, env)
    if code == EXIT_INTERRUPTED:
        raise Interrupted(
            f"training was interrupted; a checkpoint is in {run_dir}/checkpoints. "
            "Run the same command again to continue."
        )
    if code != 0:
        raise PipelineError(f"training failed (exit code {code}); see the messages above")


def run(
    cfg: RunConfig, run_dir: str | Path, overwrite: bool = False, progress: bool = True, strict: bool = False
) -> PipelineResult | None:
    """The whole pipeline. Returns where the report is and the gate's exit code; ``strict`` refuses splits too
    small to decide anything (data.splits) instead of warning.

    Under a launcher (app.ranks) rank 0 runs it and returns the result; the other processes train and evaluate
    when it says so, and return None.
    """
    run_dir = Path(run_dir)
    preflight(cfg, whole_run=True)  # a typo in a task name, probe file or gate rule fails here, not after training
    crew = ranks.join()
    if crew is not None and not crew.main:
        ranks.follow(
            crew,
            run_dir,
            _train_child,
            lambda config, label, adapter: evaluate_model(
                eval_settings(from_dict(config)), run_dir, label, adapter, None, None, progress=False
            ),
        )
        return None
    with run_lock(run_dir, "run"):
        return _run(cfg, run_dir, overwrite, progress, strict, crew)


def _run(
    cfg: RunConfig, run_dir: Path, overwrite: bool, progress: bool, strict: bool, crew: ranks.Crew | None = None
) -> PipelineResult:
    """The stages of `run`, under the run folder's lock; with a ``crew`` (a launcher's processes), training and the
    evaluations of base and tuned spread over them."""
    source = resolve_model(cfg.model.ref, cfg.model.revision)
    cfg = resolve_template(cfg, source)
    prepare_run_dir(cfg, run_dir, overwrite)
    output.log_to(run_dir / "run.log")  # library warnings and log lines (the terminal shows ours): after --overwrite
    stages = Stages(run_dir)

    def data() -> None:
        tok, tname = load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)
        data_mod.prepare(tok, tname, cfg.data, run_dir / "data", eval_every=cfg.train.eval_every, strict=strict)

    fps = Fingerprints.of(cfg, source.identity)
    data_fp, train_fp, eval_fp = fps.data, fps.train, fps.eval
    splits = [run_dir / "data" / f"{s}.jsonl" for s in SPLITS]  # a damaged split is noticed, not skipped
    stages.run("data", data_fp, [run_dir / "data" / "data_report.json", *splits], data)

    def train() -> None:
        if stages.done.get("train") not in (None, train_fp):  # settings changed: old checkpoints don't apply
            shutil.rmtree(adapter, ignore_errors=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if crew is None:
            _train_child(run_dir)
        else:  # every process's child, meeting at a port of their own
            port = ranks.free_port()
            crew.tell(ranks.Message("train", port=port))
            _train_child(run_dir, crew.training_env(port))

    adapter = run_dir / "adapter"
    stages.run("train", train_fp, [adapter / "manifest.json"], train)

    contamination_path = run_dir / "eval" / "contamination.json"
    stages.run("contamination", eval_fp, [contamination_path], lambda: save_contamination(run_dir, cfg.eval))
    contamination = read_json_object(
        contamination_path, f"delete it to compute it again (`tunebench run` with --out {run_dir})"
    )

    base_path = run_dir / "eval" / "base" / "results.json"
    stages.run(
        "eval_base",
        eval_fp,
        [base_path],
        lambda: _evaluate(crew, cfg, run_dir, "base", None, base_path, contamination, progress),
    )

    manifest = read_json_object(adapter / "manifest.json", "train the adapter again (delete adapter/ and run again)")
    adapter_fp = fingerprint([train_fp, manifest.get("created")])  # this adapter, as trained
    tuned_fp = fps.tuned(manifest)
    tuned_path = run_dir / "eval" / "tuned" / "results.json"
    stages.run(
        "eval_tuned",
        tuned_fp,
        [tuned_path],
        lambda: _evaluate(crew, cfg, run_dir, "tuned", adapter, tuned_path, contamination, progress),
    )
    if crew is not None:
        crew.release()  # the rest is rank 0's alone

    if cfg.eval.judge.enabled:
        judge_fp = fingerprint([data_fp, adapter_fp, judge_fingerprint(eval_settings(cfg))])
        _judge_stage(cfg, run_dir, stages, judge_fp, progress)
    if cfg.export.gguf:
        export_stage(cfg, run_dir, stages, adapter_fp, eval_fp, contamination, progress)
    if stages.reuse_line():
        log.info("%s", stages.reuse_line())
    result = finish(run_dir, cfg)
    # compare, gate and report always run (cheap, deterministic): recorded so stages.json tells when they last ran,
    # without checksums (every finish rewrites them: a run stopped inside one must not leave stale sums "done")
    stages.mark("report", fingerprint([to_dict(cfg.report), to_dict(cfg.gate), cfg.eval.judge.enabled]))
    return result


def _judge_stage(cfg: RunConfig, run_dir: Path, stages: Stages, judge_fp: str, progress: bool) -> None:
    """The judge's stage; ``judge_fp``: the data, the adapter and the judge's own settings (judge_fingerprint), not the
    other evaluations': a new lm-eval task or probe set leaves the judgments standing."""
    judge_path = run_dir / "eval" / "judge"
    stages.run(
        "judge",
        judge_fp,
        [judge_path / "results.json", judge_path / "judgments.jsonl"],
        lambda: run_judge(eval_settings(cfg), run_dir, run_dir / "adapter", judge_path, progress),
    )


def _evaluate(
    crew: ranks.Crew | None,
    cfg: RunConfig,
    run_dir: Path,
    label: str,
    adapter: Path | None,
    out: Path,
    contamination: dict[str, Any],
    progress: bool,
) -> None:
    """Evaluate one model (``evals.runner.evaluate_model``: the driver in transformers); with a crew, every process
    its share of the batches."""
    if crew is not None:
        crew.tell(ranks.Message("eval", config=to_dict(cfg), label=label, adapter=str(adapter) if adapter else None))
    evaluate_model(eval_settings(cfg), run_dir, label, adapter, out, contamination, progress)


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

    files = [run_dir / "export" / gguf_file_name(q) for q in cfg.export.gguf]
    export_fp = fingerprint([adapter_fp, list(cfg.export.gguf), package_version("gguf")])
    stages.run(
        "export",
        export_fp,
        [*files, run_dir / "export" / "export.json"],
        lambda: export_and_check(run_dir, list(cfg.export.gguf), list(cfg.eval.probe_files)),
    )
    settings = eval_settings(cfg)
    for q, path in zip(cfg.export.gguf, files, strict=True):
        for runtime in artifact_runtimes(cfg.export.evaluate):  # each scores the file as written
            label = artifact_label(q, runtime)
            out = run_dir / "eval" / label / "results.json"
            engine = [package_version(RUNTIME_PACKAGES[runtime])] if runtime in RUNTIME_PACKAGES else []
            stages.run(
                f"eval_{label}",
                fingerprint([eval_fp, export_fp, q, *engine]),
                [out],
                lambda runtime=runtime, scored=settings.for_artifact(path), label=label, out=out: evaluate(
                    open_runtime(runtime, scored, run_dir),
                    scored,
                    run_dir,
                    label,
                    out,
                    contamination,
                    progress,
                ),
            )
    return files


def export_and_check(run_dir: Path, quants: list[str], probe_files: list[str]) -> Path:
    """Write the GGUF files, then check each file's template and token contract (evals.contract).

    Raises:
        ContractError: a file would be fed other tokens than the run was evaluated on (the files stay, with
            ``contract-<type>.json`` absent, and the stage is not recorded as done).
    """
    out = export_gguf(run_dir, quants)
    for q in quants:
        report = check_contract(out / gguf_file_name(q), run_dir / "adapter", probe_files)
        atomic_write_json(out / f"contract-{q}.json", report.to_dict())
        log.info(
            "contract %s: %s agree on %d prompts%s",
            q,
            ", ".join(report.runtimes),
            report.prompts,
            f" (skipped: {'; '.join(report.skipped)})" if report.skipped else "",
        )
    return out


def _as_the_gate_computes(run_dir: Path, comparison: Comparison, judged: Results | None) -> bool:
    """Whether ``comparison`` is the one ``judge_run`` would compute for the run: at the alpha, bootstrap size and
    min_n of its config.yaml (``run_settings``), with the judge's results whenever the run folder has them (the
    gate reads them even where the config turns the judge off, and the report does not)."""
    settings = run_settings(run_dir)
    recorded = (settings["alpha"], settings["n_boot"], settings["min_n"])
    if (comparison.alpha, comparison.n_boot, comparison.min_n) != recorded:
        return False
    return judged is not None or not (run_dir / "eval" / JUDGE_DIR / "results.json").exists()


def finish(run_dir: Path, cfg: RunConfig) -> PipelineResult:
    """Compare, gate and render from the results files (always recomputed: cheap and deterministic).

    Everything is read and judged before anything is written, so a damaged file or invalid gate rules exit 2 with
    the run folder as it was (comparison.json, gate.json, report.md, the plots and the model card untouched).
    """
    results = load_run_results(run_dir)
    judged = load_judge_results(run_dir) if cfg.eval.judge.enabled else None
    comparison = compare(
        results["base"],
        results["tuned"],
        cfg.report.alpha,
        cfg.eval.bootstrap_samples,
        judged=judged,
        min_n=cfg.report.min_n,
    )
    artifacts = load_artifact_results(run_dir)
    exported, skipped = {}, False
    for name, res in artifacts.items():
        try:
            exported.update(
                compare_artifacts(
                    results["tuned"], {name: res}, cfg.report.alpha, cfg.eval.bootstrap_samples, min_n=cfg.report.min_n
                )
            )
        except ComparisonError as e:  # e.g. scored before the evaluation settings changed: left out, said why
            log.warning("export section: %s; re-evaluate it to include it", e)
            skipped = True
    if _as_the_gate_computes(run_dir, comparison, judged):  # judged on what was just computed, not computed again
        # with an artifact left out, the gate compares the artifacts itself (and refuses a rule on that one, as before)
        verdict = judge_run(
            run_dir, cfg.gate.rules, comparison.seed, comparison=comparison, artifacts=None if skipped else exported
        )
    else:
        verdict = judge_run(run_dir, cfg.gate.rules)
    context = context_from_run(run_dir, results, gate=verdict.to_dict())
    per = per_item_of_run(
        run_dir, results, comparison, judged is not None, cfg.report.side_by_side, cfg.report.flips
    )  # data first: per_item.json, then the report's answers side by side and flips
    context["per_item"] = per
    if exported:
        context["export_comparisons"] = exported
        context["served_parity"] = served_against_artifacts(artifacts, cfg.report.alpha, cfg.eval.bootstrap_samples)
    headline = metric_table(comparison.headline_rows(), comparison.alpha, detailed=False)
    card = with_evaluation(run_dir / "adapter", headline, run_dir / "report.md")
    steps = (context.get("manifest") or {}).get("steps", 0)
    # everything read and judged: now write
    atomic_write_json(run_dir / "comparison.json", comparison.to_dict())
    if tracking.active(cfg.train.report_to):  # the results beside the training curves, at the last step
        log_metrics(cfg.train.report_to, run_dir, comparison_metrics(comparison.rows), step=steps, run_name=cfg.name)
    if exported:
        atomic_write_json(run_dir / "export_comparison.json", {q: c.to_dict() for q, c in exported.items()})
    atomic_write_json(run_dir / PER_ITEM_FILE, per.to_dict())
    buf = io.StringIO()
    write_verdict(verdict, run_dir / "gate.json", buf)
    context.update(draw_report_plots(run_dir, comparison, context).files)  # PNGs beside report.md, linked from it
    atomic_write_text(run_dir / "report.md", render_report(comparison, context))
    if card is not None:
        atomic_write_text(run_dir / "adapter" / "README.md", card)
    return PipelineResult(run_dir, run_dir / "report.md", verdict.exit_code, headline + "\n\n" + buf.getvalue())
