"""The `tunebench` command. Each subcommand parses, builds the config, and calls one function.

Exit codes: 0 ok · 1 a quality gate failed · 2 invalid input (config, data, model, rules) · 3 the gate could not
conclude (an interval straddles a margin; more items needed) · 130 interrupted (a resumable checkpoint was saved).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from tunebench.app.pipeline import finish, resolve_template, run, write_config
from tunebench.app.preflight import preflight
from tunebench.app.serve import ServeOptions, serve
from tunebench.app.sweep import SweepOptions, sweep
from tunebench.core import dist
from tunebench.core.config import (
    RunConfig,
    SamplingConfig,
    dump_yaml,
    load_config,
    preset_names,
    read_run_config,
)
from tunebench.core.errors import (
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    ConfigError,
    Interrupted,
    MissingRunFile,
    PipelineError,
    TunebenchError,
)
from tunebench.core.io import (
    atomic_write_json,
    atomic_write_text,
    cache_root,
    disk_full,
    is_disk_full,
    read_json,
)
from tunebench.core.lock import run_lock
from tunebench.core.signals import sigterm_as_interrupt
from tunebench.data import conversations as data_mod
from tunebench.data.splits import MIN_TEST_CONVERSATIONS
from tunebench.evals.chat import chat, quiet_loading
from tunebench.evals.contract import check_contract
from tunebench.evals.llamacpp import LABEL_SUFFIX
from tunebench.evals.llamacpp_eval import evaluate_gguf_llamacpp
from tunebench.evals.modeling import load_for_eval
from tunebench.evals.runner import check_artifact_template, evaluate_model, save_contamination
from tunebench.models.loading import load_tokenizer, resolve_model
from tunebench.reports.compare import ARTIFACT_PREFIX, SERVED_PREFIX, Comparison, leaderboard_from_runs
from tunebench.reports.gate import GATES_DIR, gate_main
from tunebench.reports.render import export_view, metric_table, render_leaderboard
from tunebench.train.backends import import_unsloth
from tunebench.train.export import adapter_dir, export_merged
from tunebench.train.gguf_export import export_gguf, parse_quants
from tunebench.train.trainer import latest_checkpoint, train

log = logging.getLogger("tunebench")

EXAMPLES = """examples:
  tunebench run smoke                         # offline CPU demo: packaged SmolLM2 + ShareGPT, ~10 min
  tunebench run llama-3.2-1b-finetome         # GPU + hub: Unsloth QLoRA on FineTome-100k
  tunebench train smoke train.lr=1e-4 lora.r=32
  tunebench eval runs/smoke                   # base and tuned of a trained run
  tunebench eval --model packaged:smollm2-135m-instruct --adapter runs/smoke/adapter --data-from runs/smoke
  tunebench gate runs/smoke --rules default          # a shipped gate (configs/gates/default.yaml) or a YAML path
  tunebench compare runs/a runs/b             # leaderboard of adapters against one base
  tunebench chat --model packaged:smollm2-135m-instruct --adapter runs/smoke/adapter
  tunebench export runs/smoke --merged
  tunebench export runs/smoke --gguf --quant f16,q8_0
  tunebench eval --model runs/smoke/export/model-q8_0.gguf --data-from runs/smoke   # + its Δ against the adapter
  tunebench eval --model runs/smoke/export/model-q8_0.gguf --runtime llama.cpp --data-from runs/smoke
  tunebench serve runs/smoke --quant q8_0     # OpenAI-compatible server on 127.0.0.1:8080
  tunebench sweep smoke --trials 8            # Optuna search; picks the cheapest config indistinguishable from the best
  tunebench bench speed --shape llama-3.2-1b  # GPU only
"""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "matplotlib", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # optional native kernels that a CPU install lacks by design: their load failures are not the user's problem
    for noisy in ("torchao", "bitsandbytes.backends.cpu.ops"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _config(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.preset, args.overrides)
    preflight(cfg)  # task names, probe files, gate rules: before any model loads
    return cfg


def _run_dir(args: argparse.Namespace, cfg: RunConfig) -> Path:
    return Path(args.out) if getattr(args, "out", None) else Path("runs") / cfg.name


def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        print(name)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    try:
        cfg, note = load_config(args.preset, args.overrides), None
    except ConfigError as e:  # a preset for another machine (a GPU preset here): show what it asks for
        cfg, note = load_config(args.preset, args.overrides, resolved=False), f"# not resolvable on this machine: {e}"
    preflight(cfg)
    print(dump_yaml(cfg), end="")
    if note:
        print(note)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    cfg = _config(args)
    run_dir = _run_dir(args, cfg)
    source = resolve_model(cfg.model.ref, cfg.model.revision)
    cfg = resolve_template(cfg, source)
    tok, tname = load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    prepared = data_mod.prepare(
        tok, tname, cfg.data, run_dir / "data", eval_every=cfg.train.eval_every, strict=args.strict
    )
    print(data_mod.render_report(prepared.report))
    print(f"data report: {run_dir / 'data' / 'data_report.md'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg.train.backend == "unsloth":
        import_unsloth()  # before the template lookup imports transformers: Unsloth patches it on import
    cfg = resolve_template(cfg, resolve_model(cfg.model.ref, cfg.model.revision))
    run_dir = _run_dir(args, cfg)
    with run_lock(run_dir, "train"):
        return _train(args, cfg, run_dir)


def _train(args: argparse.Namespace, cfg: RunConfig, run_dir: Path) -> int:
    resume = _again(args, add="--resume")
    try:
        result = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, strict=args.strict)
    except KeyboardInterrupt:  # before the trainer's own handler was up, or a second Ctrl-C
        raise Interrupted(
            f"training in {run_dir} stopped; {_checkpoint_note(run_dir)}. Continue with `{resume}`"
        ) from None
    if result.interrupted:
        print(
            f"interrupted: training in {run_dir} stopped; {_checkpoint_note(run_dir)}. Continue with `{resume}`",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if result.manifest is None:  # not the main process of a distributed job: it wrote nothing
        return 0
    write_config(cfg, run_dir)
    m = result.manifest
    print(
        f"adapter: {result.adapter_dir}  backend={m.get('backend', {}).get('name')}  steps={m.get('steps')}  "
        f"loss={m.get('final_train_loss')}  real tokens/s={m.get('tokens_per_s')}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.run and "=" in args.run and not Path(args.run).exists():  # an override, not a run folder
        args.overrides, args.run = [args.run, *args.overrides], None
    if args.run:
        return _eval_run(args)
    if args.endpoint and (args.model or args.adapter or args.runtime != "transformers"):
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
    run_dir = Path(args.data_from)
    if args.endpoint:
        return _eval_endpoint(args, run_dir)
    # a .gguf without an adapter is an exported artifact: checked for the run's template, scored as written
    artifact = Path(args.model).suffix == ".gguf" and not args.adapter
    if args.runtime == "llama.cpp":
        if not artifact:
            raise ConfigError(
                f"--runtime llama.cpp scores an exported GGUF (RUN/export/model-<type>.gguf) without "
                f"--adapter; got --model {args.model}" + (" with --adapter" if args.adapter else "")
            )
        cfg = load_config(run_dir / "config.yaml", args.overrides)
        label = args.label or artifact_label(args.model) + LABEL_SUFFIX
        out = Path(args.out) if args.out else run_dir / "eval" / label / "results.json"
        evaluate_gguf_llamacpp(cfg, run_dir, args.model, label, out)
        print(f"{label}: {out}")
        if label.startswith(ARTIFACT_PREFIX) and out == run_dir / "eval" / label / "results.json":
            _report_artifact(run_dir, cfg, label)
        return 0
    cfg = load_config(run_dir / "config.yaml", [f"model.ref={args.model}", *args.overrides])
    preflight(cfg)
    label = args.label or (artifact_label(args.model) if artifact else "tuned" if args.adapter else "base")
    out = Path(args.out) if args.out else run_dir / "eval" / label / "results.json"
    if artifact:  # the template in the metadata first: a file without one is named as such, not as unloadable
        check_artifact_template(args.model, run_dir)
        check_contract(args.model, run_dir / "adapter", list(cfg.eval.probe_files))
    try:
        evaluate_model(cfg, run_dir, label, args.adapter, out, artifact=artifact)
    except KeyboardInterrupt:
        raise Interrupted(
            f"the evaluation of {args.model} stopped before {out} was written; {_cache_note(cfg)}. "
            f"Continue with `{_again(args)}`"
        ) from None
    if dist.is_main():
        print(f"{label}: {out}")
        if artifact and label.startswith(ARTIFACT_PREFIX) and out == run_dir / "eval" / label / "results.json":
            _report_artifact(run_dir, cfg, label)
    return 0


def _eval_run(args: argparse.Namespace) -> int:
    """`tunebench eval RUN`: base and tuned on the run's inputs, then the run's report re-rendered."""
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise PipelineError(
            f"{run_dir}: not a tunebench run folder (no config.yaml); give the folder that "
            "`tunebench run` or `tunebench train` wrote (runs/<name>)"
        )
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    preflight(cfg)
    dist.init()
    contamination = save_contamination(run_dir, cfg) if dist.is_main() else None
    for label, adapter in (("base", None), ("tuned", run_dir / "adapter")):
        out = run_dir / "eval" / label / "results.json"
        try:
            evaluate_model(cfg, run_dir, label, adapter, out, contamination)
        except KeyboardInterrupt:
            kept = "the base results were written; " if label == "tuned" else ""
            # base is done: the tuned side alone continues it
            again = (
                _again(args)
                if label == "base"
                else shlex.join(
                    [
                        "tunebench",
                        "eval",
                        "--model",
                        cfg.model.ref,
                        "--adapter",
                        str(adapter),
                        "--data-from",
                        str(run_dir),
                        *args.overrides,
                    ]
                )
            )
            raise Interrupted(
                f"the {label} evaluation of {run_dir} stopped before {out} was written; {kept}"
                f"{_cache_note(cfg)}. Continue with `{again}`"
            ) from None
        if dist.is_main():
            print(f"{label}: {out}")
    if dist.is_main():
        result = finish(run_dir, cfg)
        print("\n" + result.headline)
        print(f"report: {result.report}")
    return 0


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
            cfg, run_dir, args.endpoint, label, out, args.served_model, args.api_key_env, args.concurrency
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"the evaluation of {args.endpoint} stopped before {out} was written (nothing of it is "
            f"kept: a server is asked again). Run `{_again(args)}` again"
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
    if label.startswith(SERVED_PREFIX) and out == run_dir / "eval" / label / "results.json":
        _report_artifact(run_dir, cfg, label)
    return 0


def _served_vs_artifact(run_dir: Path, cfg: RunConfig, served: Any) -> None:
    """Print the served answers against the in-process llama.cpp scoring of the file the server lists, if any."""
    from tunebench.reports.compare import load_artifact_results, served_against_artifacts

    results = {k: v for k, v in load_artifact_results(run_dir).items() if not k.startswith(SERVED_PREFIX)}
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
    name, path = label.removeprefix(ARTIFACT_PREFIX), run_dir / "export_comparison.json"  # served keeps its label
    fresh = path.exists() and path.stat().st_mtime >= (run_dir / "eval" / label / "results.json").stat().st_mtime
    exported = read_json(path) if fresh else {}
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


def _again(args: argparse.Namespace, add: str | None = None) -> str:
    """The command line that continues an interrupted command: the same one, less ``--overwrite`` (which would
    discard what was saved), plus ``add``."""
    argv = [a for a in args.argv if a != "--overwrite"]
    return shlex.join(["tunebench", *argv, *([add] if add and add not in argv else [])])


def _checkpoint_note(run_dir: Path) -> str:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return f"its latest checkpoint is {ckpt}" if ckpt else "no checkpoint was saved yet (training starts over)"


def _cache_note(cfg: RunConfig) -> str:
    if cfg.eval.probe_files and cfg.eval.probe_sampling:
        return (
            f"the probe answers generated so far are cached in {cache_root() / 'generations'} and are reused "
            "(perplexity and lm-eval tasks run again)"
        )
    return "nothing of it was kept (perplexity and lm-eval tasks run again)"


def _run_interrupted(args: argparse.Namespace, cfg: RunConfig, run_dir: Path) -> str:
    """What a stopped `tunebench run` kept, and the command that continues it."""
    path = run_dir / "stages.json"
    done = list(read_json(path)) if path.exists() else []
    kept = [f"the finished stages ({', '.join(done)}) are recorded in {path}" if done else "no stage had finished"]
    if "train" not in done and "data" in done:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        kept.append(f"training resumes from {ckpt}" if ckpt else "training had saved no checkpoint yet")
    elif "train" in done and not all(f"eval_{side}" in done for side in ("base", "tuned")):
        kept.append(_cache_note(cfg))
    return (
        f"the run in {run_dir} stopped; {'; '.join(kept)}. Continue with `{_again(args)}`: finished stages are skipped"
    )


def artifact_label(gguf: str | Path) -> str:
    """``RUN/export/model-q8_0.gguf`` -> ``gguf-q8_0``: the results folder and label of an exported artifact."""

    return ARTIFACT_PREFIX + Path(gguf).stem.removeprefix("model-")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    run_dir = _run_dir(args, cfg)
    try:
        result = run(cfg, run_dir, overwrite=args.overwrite, strict=args.strict)
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C here, or in the training child (it saved a checkpoint)
        raise Interrupted(_run_interrupted(args, cfg, run_dir)) from None
    print("\n" + result.headline)
    print(f"report: {result.report}")
    return result.gate_code if args.gate_exit else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    opts = SweepOptions(
        args.preset,
        args.trials,
        list(args.overrides),
        Path(args.out) if args.out else None,
        args.space,
        args.storage,
        args.study,
        args.seeds,
        args.pruner,
        args.sampler_seed,
        confirm=not args.no_confirm,
    )
    try:
        result = sweep(opts)
    except KeyboardInterrupt:  # between trials, before the loop's own handler
        raise Interrupted(f"the sweep stopped; every finished trial is kept. Continue with `{_again(args)}`") from None
    print(f"\nsweep: {result.ran} trial(s) run here; report: {result.report}")
    if result.config_line:
        print(f"chosen: trial {result.chosen}: {result.config_line}")
    if result.confirm is not None:
        print("\n" + result.confirm.headline)
        print(f"confirmation report: {result.confirm.report}")
        return result.confirm.gate_code if args.gate_exit else 0
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise PipelineError(
            f"{run_dir}: not a tunebench run folder (no config.yaml); give the folder that "
            "`tunebench run` wrote (runs/<name>)"
        )
    # the run's own resolved config, as recorded: a GPU run's folder re-renders on any machine
    result = finish(run_dir, read_run_config(run_dir))
    print(result.headline)
    print(f"report: {result.report}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    return gate_main(args.run, shipped_rules(args.rules), args.out)


def shipped_rules(rules: str | None) -> str | None:
    """``configs/gates/NAME.yaml``, as the docs write it, names the shipped file (package data) when the working
    folder has no such file; any other value goes to the gate as given (a path, or a shipped name like ``default``)."""
    if rules is None or Path(rules).exists():
        return rules
    p = Path(rules)
    shipped = GATES_DIR / p.name
    return str(shipped) if p.parent.parts[-2:] == ("configs", "gates") and shipped.is_file() else rules


def cmd_compare(args: argparse.Namespace) -> int:
    text = render_leaderboard(leaderboard_from_runs(args.runs))
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    with contextlib.nullcontext() if args.verbose else quiet_loading():  # one line before the first prompt
        loaded = load_for_eval(args.model, args.adapter, args.template)
    sampling = SamplingConfig(
        name="chat", temperature=args.temperature, min_p=args.min_p, max_new_tokens=args.max_new_tokens
    )
    chat(loaded, sampling, system=args.system)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if not (args.merged or args.gguf):
        raise ConfigError(
            "export needs --merged (a 16-bit transformers folder) and/or --gguf [--quant f16,q8_0] "
            "(the adapter folder itself is already the LoRA export)"
        )
    if args.gguf:
        parse_quants(args.quant)  # refuse a bad type before the merged export spends minutes
    if args.merged:
        out = export_merged(args.run, args.out if not args.gguf else None, dtype=args.dtype)
        print(f"merged model: {out}")
    if args.gguf:
        out = export_gguf(args.run, args.quant, args.out)
        probe_files = (
            list(read_run_config(args.run).eval.probe_files) if (Path(args.run) / "config.yaml").exists() else []
        )
        for q in parse_quants(args.quant):
            report = check_contract(out / f"model-{q}.gguf", adapter_dir(args.run), probe_files)
            atomic_write_json(out / f"contract-{q}.json", report.to_dict())
            print(
                f"contract {q}: {', '.join(report.runtimes)} feed the same tokens on {report.prompts} prompts"
                + (f" (not checked: {'; '.join(report.skipped)})" if report.skipped else "")
            )
        artifacts = read_json(out / "export.json")["artifacts"]
        for a in artifacts:
            print(
                f"gguf: {out / a['file']}  ({a['quant']}, {a['bytes'] / 1e6:.0f} MB)  Modelfile: {out / a['modelfile']}"
            )
        run_dir = _run_folder_of(Path(args.run))
        for a in artifacts if run_dir else []:  # scored on the run's own test split, against its adapter
            print(f"evaluate: tunebench eval --model {out / a['file']} --data-from {run_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    probe_files = list(read_run_config(run_dir).eval.probe_files) if (run_dir / "config.yaml").exists() else []
    opts = ServeOptions(
        run_dir,
        quant=args.quant,
        host=args.host,
        port=args.port,
        api_key_env=args.api_key_env,
        no_export=args.no_export,
        n_ctx=args.n_ctx,
        engine=args.engine,
    )
    return serve(opts, probe_files)


def _run_folder_of(path: Path) -> Path | None:
    """The run folder of ``path`` (a run folder, or the adapter folder inside one), or None."""
    return next((p for p in (path, path.parent) if (p / "config.yaml").is_file()), None)


def cmd_bench(args: argparse.Namespace) -> int:
    # `tunebench bench ...` is dispatched by tunebench.cli before this parser runs; the entry is here for --help
    raise ConfigError("run the benchmarks as `tunebench bench speed|eval ...` (or python -m tunebench bench ...)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunebench",
        description="Fine-tune chat models with LoRA and prove, with intervals, whether the adapter beats its base.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def preset_cmd(name: str, fn, help: str, out: bool = True) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("preset", help="preset name (see `tunebench presets`) or a YAML file")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 lora.r=32")
        if out:
            s.add_argument("--out", help="run folder (default runs/<name>)")
            s.add_argument(
                "--strict",
                action="store_true",
                help="splits too small to decide anything are errors "
                f"(exit 2), not warnings: test below {MIN_TEST_CONVERSATIONS} conversations, or no "
                "validation while train.eval_every > 0",
            )
        s.set_defaults(fn=fn)
        return s

    s = sub.add_parser("presets", help="list the shipped presets")
    s.set_defaults(fn=cmd_presets)
    preset_cmd("config", cmd_config, "print the resolved config", out=False)
    preset_cmd("data", cmd_data, "prepare data: standardize, split, render, mask; write the data report")
    s = preset_cmd("train", cmd_train, "train a LoRA adapter")
    s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    s.add_argument("--overwrite", action="store_true", help="discard earlier training output in the folder")
    s = preset_cmd("run", cmd_run, "the whole pipeline: data, train, eval base+tuned, compare, report, gate")
    s.add_argument("--overwrite", action="store_true", help="start the run folder from scratch")
    s.add_argument(
        "--gate-exit", action="store_true", help="exit with the gate's code (1 a rule failed, 3 inconclusive)"
    )

    s = sub.add_parser("sweep", help="LoRA / hyperparameter search (Optuna) that picks a winner with confidence")
    s.add_argument("preset", help="preset name (see `tunebench presets`) or a YAML file")
    s.add_argument("overrides", nargs="*", help="dotted overrides every trial starts from, e.g. train.max_steps=30")
    s.add_argument(
        "--trials",
        type=int,
        required=True,
        help="finished trials the study should hold (a re-run counts those already there)",
    )
    s.add_argument("--space", help="search space YAML (default: the preset's, configs/spaces/PRESET.yaml)")
    s.add_argument(
        "--storage",
        help="Optuna storage URL (default sqlite:///OUT/study.db); postgresql://... or "
        "mysql://... shares one study across machines",
    )
    s.add_argument("--study", help="study name in the storage (default tunebench-<preset name>)")
    s.add_argument("--out", help="sweep folder (default runs/<name>-sweep)")
    s.add_argument("--seeds", type=int, default=1, help="train each configuration with K seeds (default 1)")
    s.add_argument(
        "--pruner",
        choices=["median", "hyperband", "none"],
        default="median",
        help="stop unpromising trials on their validation losses (needs train.eval_every > 0)",
    )
    s.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    s.add_argument(
        "--no-confirm",
        action="store_true",
        help="skip the chosen configuration's test-split run against base (OUT/confirm)",
    )
    s.add_argument("--gate-exit", action="store_true", help="exit with the confirmation gate's code")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("eval", help="evaluate base and tuned of a run, or one model on a run's inputs")
    s.add_argument("run", nargs="?", help="run folder (evaluates base and tuned)")
    s.add_argument("overrides", nargs="*", default=[], help="dotted overrides of the run's config")
    s.add_argument("--model", help="model reference (hub id, folder, .gguf, packaged:...)")
    s.add_argument("--adapter", help="LoRA adapter folder")
    s.add_argument("--data-from", help="run folder whose test split and settings to use with --model")
    s.add_argument("--label", help="label in the results (default base/tuned)")
    s.add_argument("--out", help="results.json path")
    s.add_argument(
        "--runtime",
        choices=["transformers", "llama.cpp"],
        default="transformers",
        help="engine that scores a .gguf: transformers' GGUF loader, or llama.cpp itself (with parity "
        "against the run's adapter; needs the serve extra)",
    )
    s.add_argument(
        "--endpoint",
        metavar="URL",
        help="evaluate an OpenAI-compatible server (e.g. `tunebench serve`'s "
        "http://127.0.0.1:8080/v1) on --data-from's inputs; label served unless --label",
    )
    s.add_argument("--served-model", help="model name to send to --endpoint (default: the first it lists)")
    s.add_argument("--api-key-env", help="environment variable holding --endpoint's key (never written anywhere)")
    s.add_argument("--concurrency", type=int, default=8, help="--endpoint requests in flight at once (default 8)")
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("report", help="re-render report.md, comparison.json and gate.json of a run")
    s.add_argument("run")
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("gate", help="release gate: exit 0 pass, 1 fail, 3 inconclusive, 2 invalid input")
    s.add_argument("run")
    s.add_argument(
        "--rules",
        help="rules YAML, or a shipped gate name (default; configs/gates/NAME.yaml names the "
        "shipped file too); default: the run's gate.rules, else the shipped default",
    )
    s.add_argument("--out", help="verdict JSON (default RUN/gate.json)")
    s.set_defaults(fn=cmd_gate)
    s = sub.add_parser("compare", help="leaderboard: several runs' adapters against their common base")
    s.add_argument("runs", nargs="+")
    s.add_argument("--out", help="write the Markdown table here too")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser(
        "chat", help="interactive chat, streamed token by token", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    s.add_argument(
        "--model",
        default="packaged:smollm2-135m-instruct",
        help="model reference (hub id, folder, .gguf, packaged:...)",
    )
    s.add_argument("--adapter", help="LoRA adapter folder (e.g. runs/smoke/adapter)")
    s.add_argument("--template", default="auto", help="chat template (auto: the adapter's, else the model's)")
    s.add_argument("--system", help="system prompt, kept across /reset")
    s.add_argument("--temperature", type=float, default=1.5, help="sampling temperature (0 = greedy)")
    s.add_argument("--min-p", type=float, default=0.1, help="min-p sampling cutoff")
    s.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest answer in tokens (kept free in the model's context)"
    )
    s.set_defaults(fn=cmd_chat)
    s = sub.add_parser("export", help="write the merged model: a 16-bit folder (--merged) and/or GGUF files (--gguf)")
    s.add_argument("run", help="run folder or adapter folder")
    s.add_argument("--merged", action="store_true", help="a merged 16-bit transformers folder (RUN/merged)")
    s.add_argument(
        "--gguf", action="store_true", help="GGUF files + Ollama Modelfiles for llama.cpp/Ollama (RUN/export)"
    )
    s.add_argument(
        "--quant",
        default="f16,q8_0",
        help="GGUF types, comma-separated (default f16,q8_0; also f32, bf16, q4_0, q4_1, q5_0, q5_1)",
    )
    s.add_argument("--out", help="output folder (default RUN/merged, or RUN/export with --gguf)")
    s.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    s.set_defaults(fn=cmd_export)
    s = sub.add_parser("serve", help="OpenAI-compatible server (llama.cpp) on the run's exported GGUF")
    s.add_argument("run", help="run folder (its export/model-<quant>.gguf; exported first when missing)")
    s.add_argument("--quant", default="q8_0", help="which exported GGUF type to serve (default q8_0)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --api-key-env)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--api-key-env", help="name of the environment variable holding the API key clients must send")
    s.add_argument("--no-export", action="store_true", help="fail (exit 2) instead of exporting a missing GGUF")
    s.add_argument("--n-ctx", type=int, default=4096, help="context length of the server (tokens)")
    s.add_argument(
        "--engine",
        choices=["llama.cpp", "vllm"],
        default="llama.cpp",
        help="llama.cpp on the exported GGUF (default), or vLLM on the base with the adapter as a runtime "
        "LoRA named `tuned` (GPU; needs vLLM installed; not run on the developers' machines)",
    )
    s.set_defaults(fn=cmd_serve)
    s = sub.add_parser("bench", help="GPU benchmarks: `tunebench bench speed|eval --help`", add_help=False)
    s.add_argument("bench_args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_bench)
    return p


def _fail(err: BaseException, code: int, verbose: bool) -> int:
    """Print one paragraph (the traceback too with -v) and return the exit code."""
    if verbose:
        traceback.print_exception(err)
    label = "interrupted" if code == EXIT_INTERRUPTED else "error"
    print(f"{label}: {err}", file=sys.stderr)
    return code


LOCKED_COMMANDS = ("eval", "report", "export")
"""Commands that write an existing run folder named on the command line; `run` and `train` lock the folder
they resolve from the config (pipeline.run, cmd_train)."""


def _command_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """The run folder's lock for commands that write one (one writer per folder); a folder that is not there is
    left to the command's own error."""
    folder = getattr(args, "data_from", None) or getattr(args, "run", None)
    if args.command in LOCKED_COMMANDS and folder and Path(folder).is_dir():
        return run_lock(folder, args.command)
    return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run one subcommand, and map errors to exit codes by class (see core.errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides may follow the options too (`tunebench sweep smoke --trials 8 train.max_steps=30`)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv  # what an interrupted command tells the user to run again
    _setup_logging(args.verbose)
    try:
        with sigterm_as_interrupt(), _command_lock(args):
            return args.fn(args)
    except TunebenchError as e:
        return _fail(e, e.exit_code, args.verbose)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        return _fail(e, EXIT_INVALID_INPUT, args.verbose)  # a path the user named that is not there / not usable
    except Exception as e:
        if is_disk_full(e):  # a write outside tunebench's own (a library's save): name the file and the space
            where = getattr(e, "filename", None) or getattr(args, "out", None) or "."
            return _fail(disk_full(e, where), EXIT_INVALID_INPUT, args.verbose)
        raise
    except KeyboardInterrupt as e:  # a command with nothing to resume: say so rather than print an empty line
        stopped = Interrupted(f"`{_again(args)}` stopped before it finished. Run it again")
        stopped.__traceback__ = e.__traceback__
        return _fail(stopped, EXIT_INTERRUPTED, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
