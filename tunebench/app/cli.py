"""The `tunebench` command. Each subcommand parses, builds the config, and calls one function.

Exit codes: 0 ok · 1 a quality gate failed · 2 invalid input (config, data, model, rules) · 3 the gate could not
conclude (an interval straddles a margin; more items needed) · 130 interrupted (a resumable checkpoint was saved).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from tunebench.app import cli_parser
from tunebench.app.cli_eval import cmd_eval
from tunebench.app.cli_notes import again_command, checkpoint_note, run_interrupted_note
from tunebench.app.lm_eval_compare import compare_lm_eval
from tunebench.app.pipeline import finish, resolve_template, run, write_config
from tunebench.app.preflight import preflight
from tunebench.app.serve import ServeOptions, serve
from tunebench.app.shards import merge
from tunebench.app.stages import check_run_folder, run_folder
from tunebench.app.sweep import sweep
from tunebench.app.sweep_study import SweepOptions
from tunebench.compare.runs import leaderboard_from_runs
from tunebench.core import output
from tunebench.core.config import load_config, preset_names, read_run_config
from tunebench.core.config_build import dump_yaml
from tunebench.core.config_schema import RunConfig, SamplingConfig
from tunebench.core.errors import (
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    ConfigError,
    Interrupted,
    PipelineError,
    TunebenchError,
)
from tunebench.core.io import (
    atomic_write_json,
    atomic_write_text,
    disk_full,
    folder_problem,
    is_disk_full,
    read_json,
)
from tunebench.core.lock import run_lock
from tunebench.core.runtimes import gguf_file_name
from tunebench.core.signals import sigterm_as_interrupt
from tunebench.data import conversations as data_mod
from tunebench.data.data_report import render_report
from tunebench.evals.chat import chat, quiet_loading
from tunebench.evals.contract import check_contract
from tunebench.evals.modeling import load_for_eval
from tunebench.gate.files import verdict_path
from tunebench.gate.rules import GATES_DIR
from tunebench.gate.verdict import gate_main
from tunebench.models.loading import load_tokenizer, resolve_model
from tunebench.reports.render import render_leaderboard
from tunebench.train.backends import import_unsloth
from tunebench.train.export import adapter_dir, export_merged
from tunebench.train.gguf_export import export_gguf, parse_quants
from tunebench.train.trainer import train

log = logging.getLogger("tunebench")


def _config(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.preset, args.overrides)
    preflight(cfg)  # task names, probe files, gate rules: before any model loads
    return cfg


def _run_dir(args: argparse.Namespace, cfg: RunConfig) -> Path:
    path = Path(args.out) if getattr(args, "out", None) else Path("runs") / cfg.name
    problem = folder_problem(path, must_exist=False)
    if problem:
        raise PipelineError(f"{path}: {problem}; give --out a folder (it is made when it is not there)")
    return path


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
    prepared = data_mod.prepare(
        tok, tname, cfg.data, run_dir / "data", eval_every=cfg.train.eval_every, strict=args.strict
    )
    output.log_to(run_dir / "run.log")  # with what was said so far
    write_config(cfg, run_dir)  # after the data step: data that cannot be used leaves the folder as it was
    print(render_report(prepared.report))
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
    resume = again_command(args, add="--resume")
    output.log_to(run_dir / "run.log")  # `run`'s training child: the run's log already
    try:
        result = train(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, strict=args.strict)
    except KeyboardInterrupt:  # before the trainer's own handler was up, or a second Ctrl-C
        raise Interrupted(
            f"training in {run_dir} stopped; {checkpoint_note(run_dir)}. Continue with `{resume}`"
        ) from None
    if result.interrupted:
        print(
            f"interrupted: training in {run_dir} stopped; {checkpoint_note(run_dir)}. Continue with `{resume}`",
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


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    run_dir = _run_dir(args, cfg)
    try:
        result = run(cfg, run_dir, overwrite=args.overwrite, strict=args.strict)
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C here, or in the training child (it saved a checkpoint)
        raise Interrupted(run_interrupted_note(args, cfg, run_dir)) from None
    if result is None:  # not the main process of a launched run: rank 0 reports
        return 0
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
        heartbeat=args.heartbeat,
    )
    try:
        result = sweep(opts)
    except KeyboardInterrupt:  # between trials, before the loop's own handler
        raise Interrupted(
            f"the sweep stopped; every finished trial is kept. Continue with `{again_command(args)}`"
        ) from None
    print(f"\nsweep: {result.ran} trial(s) run here; report: {result.report}")
    if result.config_line:
        print(f"chosen: trial {result.chosen}: {result.config_line}")
    if result.confirm is not None:
        print("\n" + result.confirm.headline)
        print(f"confirmation report: {result.confirm.report}")
        return result.confirm.gate_code if args.gate_exit else 0
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = run_folder(args.run, "`tunebench run`")
    check_run_folder(run_dir)  # an empty or replaced config.yaml exits 2, never renders on the defaults
    # the run's own resolved config, as recorded: a GPU run's folder re-renders on any machine
    result = finish(run_dir, read_run_config(run_dir))
    print(result.headline)
    print(f"report: {result.report}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    result = merge(Path(args.run), args.overrides)
    print(result.headline)
    print(f"report: {result.report}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    rules = shipped_rules(args.rules)
    _check_folder(args.run)
    # other rules than the run's own write gate-<name>.json beside gate.json, never over it
    out = args.out or (verdict_path(args.run, rules) if rules is not None and Path(args.run).is_dir() else None)
    return gate_main(args.run, rules, out)


def shipped_rules(rules: str | None) -> str | None:
    """``configs/gates/NAME.yaml``, as the docs write it, names the shipped file (package data) when the working
    folder has no such file; any other value goes to the gate as given (a path, or a shipped name like ``default``)."""
    if rules is None or Path(rules).exists():
        return rules
    p = Path(rules)
    shipped = GATES_DIR / p.name
    return str(shipped) if p.parent.parts[-2:] == ("configs", "gates") and shipped.is_file() else rules


def _check_folder(folder: str) -> None:
    """A run folder that `gate` or `compare` reads, checked before use (``check_run_folder``); one without a
    config.yaml (results copied alone) is read at the default settings, as before."""
    if folder_problem(folder):
        run_folder(folder)  # says why it is not one
    if (Path(folder) / "config.yaml").exists():
        check_run_folder(Path(folder))


def cmd_compare(args: argparse.Namespace) -> int:
    if args.lm_eval:
        return _compare_lm_eval(args)
    for folder in args.runs:
        _check_folder(folder)
    board = leaderboard_from_runs(args.runs, primary=args.metric)
    text = render_leaderboard(board)
    print(text)
    if args.json:
        atomic_write_json(args.json, board.to_dict())
    if args.out:
        atomic_write_text(args.out, text)
    return 0


def _compare_lm_eval(args: argparse.Namespace) -> int:
    if len(args.runs) != 2:
        raise ConfigError(f"--lm-eval compares two lm-eval runs, A and B (B - A); got {len(args.runs)}")
    if not 0 < args.alpha < 1 or args.n_boot < 100:
        raise ConfigError(f"--alpha {args.alpha} must lie in (0, 1) and --n-boot {args.n_boot} be at least 100")
    done = compare_lm_eval(*args.runs, out=args.out, rules=args.rules, alpha=args.alpha, n_boot=args.n_boot)
    print(done.text)
    return done.verdict.exit_code if args.gate_exit else 0


def cmd_chat(args: argparse.Namespace) -> int:
    with contextlib.nullcontext() if args.verbose else quiet_loading():  # one line before the first prompt
        loaded = load_for_eval(args.model, args.adapter, args.template)
    greedy = args.temperature == 0
    sampling = SamplingConfig(
        name="greedy" if greedy else "sampled",
        temperature=args.temperature,
        min_p=None if greedy else args.min_p,
        max_new_tokens=args.max_new_tokens,
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
            report = check_contract(out / gguf_file_name(q), adapter_dir(args.run), probe_files)
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
        verbose=args.verbose,
    )
    return serve(opts, probe_files)


def _run_folder_of(path: Path) -> Path | None:
    """The run folder of ``path`` (a run folder, or the adapter folder inside one), or None."""
    return next((p for p in (path, path.parent) if (p / "config.yaml").is_file()), None)


def cmd_bench(args: argparse.Namespace) -> int:
    # `tunebench bench ...` is dispatched by tunebench.cli before this parser runs; the entry is here for --help
    raise ConfigError("run the benchmarks as `tunebench bench speed|eval ...` (or python -m tunebench bench ...)")


def build_parser() -> argparse.ArgumentParser:
    """The `tunebench` parser (``cli_parser``), each subcommand calling its ``cmd_*`` function here."""
    handlers = {
        "presets": cmd_presets,
        "config": cmd_config,
        "data": cmd_data,
        "train": cmd_train,
        "run": cmd_run,
        "sweep": cmd_sweep,
        "eval": cmd_eval,
        "report": cmd_report,
        "merge": cmd_merge,
        "gate": cmd_gate,
        "compare": cmd_compare,
        "chat": cmd_chat,
        "export": cmd_export,
        "serve": cmd_serve,
        "bench": cmd_bench,
    }
    return cli_parser.build_parser(handlers)


MESSAGE_MAX = 4000
"""Characters of an error message printed at most: the readers cut each value they show, this bounds the rest."""


def _fail(err: BaseException, code: int, verbose: bool) -> int:
    """Print one paragraph (the traceback too with -v) and return the exit code."""
    if verbose:
        traceback.print_exception(err)
    label = "interrupted" if code == EXIT_INTERRUPTED else "error"
    text = " ".join(str(err).split("\n"))  # one paragraph, whatever a library put in its message
    if len(text) > MESSAGE_MAX:
        text = text[: MESSAGE_MAX // 2] + " [...] " + text[-MESSAGE_MAX // 4 :]
    print(f"{label}: {text}", file=sys.stderr)
    return code


LOCKED_COMMANDS = ("eval", "report", "export", "merge")
"""Commands that write an existing run folder named on the command line; `run` and `train` lock the folder
they resolve from the config (pipeline.run, cmd_train)."""


def _command_lock(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """The run folder's lock for commands that write one (one writer per folder); a folder that is not there is
    left to the command's own error."""
    folder = getattr(args, "data_from", None) or getattr(args, "run", None)
    # a shard locks its own folder (app.shards): every shard of a run writes at once
    if args.command in LOCKED_COMMANDS and folder and Path(folder).is_dir() and not getattr(args, "shard", None):
        return run_lock(folder, args.command)
    return contextlib.nullcontext()


STAGE_COMMANDS = ("data", "eval", "export")
"""Commands that are one stage: one bar over the work inside (`run` has a bar per stage, `train` its steps' bar,
`sweep` its trials' bar)."""


@contextlib.contextmanager
def _command_output(args: argparse.Namespace) -> Iterator[None]:
    """The run folder's run.log for a command that names an existing run folder (`run`, `train` and `sweep` open
    theirs once they have it), and the bar of a command that is one stage."""
    folder = getattr(args, "data_from", None) or getattr(args, "run", None)
    run_dir = _run_folder_of(Path(folder)) if args.command in ("eval", "export") and folder else None
    if run_dir is not None:
        output.log_to(run_dir / "run.log")
    if args.command not in STAGE_COMMANDS:
        yield
        return
    with output.stage(args.command):
        yield


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as `tunebench` does: dotted overrides may also follow the options.

    Args:
        argv: the arguments after `tunebench`.

    Returns:
        The namespace; a subcommand that takes overrides has every ``key=value`` in ``overrides``, in order.

    Raises:
        SystemExit: exit 2 with argparse's usage line for anything the parser does not know (argparse's own refusal).
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `tunebench sweep smoke --trials 8 train.max_steps=30`: argparse stops the positional list at the first option
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run one subcommand, and map errors to exit codes by class (see core.errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # before parsing: a config key written as a flag (--learning_rate) is read, and announced, while parsing
    output.setup(bool({"-v", "--verbose"} & set(argv[: next((i for i, a in enumerate(argv) if a[:1] != "-"), 0)])))
    args = parse_args(argv)
    args.argv = argv  # what an interrupted command tells the user to run again
    try:
        with sigterm_as_interrupt(), _command_lock(args), _command_output(args):
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
        stopped = Interrupted(f"`{again_command(args)}` stopped before it finished. Run it again")
        stopped.__traceback__ = e.__traceback__
        return _fail(stopped, EXIT_INTERRUPTED, args.verbose)
    finally:
        output.reset()


if __name__ == "__main__":
    sys.exit(main())
