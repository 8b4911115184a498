"""The `tunebench` command's parser: one function per subcommand (or family of them), each adding its flags.

``build_parser`` takes the handlers by subcommand name (``cli.build_parser`` passes its ``cmd_*`` functions), so the
parser is read apart from what the commands do. Its ``--help`` texts are the command's documentation: the tests
run every example of ``EXAMPLES``.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable, Mapping
from typing import Any

from tunebench.app.sweep_study import HEARTBEAT_S, LOST_AFTER
from tunebench.core.config import field_type
from tunebench.core.config_build import switch_of
from tunebench.core.errors import ConfigError
from tunebench.core.runtimes import EVAL_RUNTIMES, LLAMA_CPP, SERVE_ENGINES, TRANSFORMERS
from tunebench.data.splits import MIN_TEST_CONVERSATIONS

Handlers = Mapping[str, Callable[[argparse.Namespace], int]]
"""Subcommand name -> the function that runs it (``args.fn``)."""
Subparsers = Any  # argparse's _SubParsersAction: private in typeshed

EXAMPLES = """examples:
  tunebench run smoke                         # offline CPU demo: packaged SmolLM2 + ShareGPT, ~10 min
  tunebench run llama-3.2-1b-finetome         # GPU + hub: Unsloth QLoRA on FineTome-100k
  tunebench train smoke train.lr=1e-4 lora.r=32
  tunebench eval runs/smoke                   # base and tuned of a trained run
  tunebench eval --model packaged:smollm2-135m-instruct --adapter runs/smoke/adapter --data-from runs/smoke
  tunebench gate runs/smoke --rules default          # a shipped gate (configs/gates/default.yaml) or a YAML path
  tunebench compare runs/a runs/b             # adapters against one base, ranked, and each pair paired
  tunebench chat --model packaged:smollm2-135m-instruct --adapter runs/smoke/adapter
  tunebench export runs/smoke --merged
  tunebench export runs/smoke --gguf --quant f16,q8_0
  tunebench eval --model runs/smoke/export/model-q8_0.gguf --data-from runs/smoke   # + its Δ against the adapter
  tunebench eval --model runs/smoke/export/model-q8_0.gguf --runtime llama.cpp --data-from runs/smoke
  tunebench serve runs/smoke --quant q8_0     # OpenAI-compatible server on 127.0.0.1:8080
  tunebench sweep smoke --trials 8            # Optuna search; picks the cheapest config indistinguishable from the best
  tunebench bench speed --shape llama-3.2-1b  # GPU only
"""


BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


class FlagParser(argparse.ArgumentParser):
    """An argparse parser whose subcommands that take dotted overrides (``takes_overrides``) also read a config key
    or alias written as a flag, as TRL's command line takes them: ``--learning_rate 2e-4``, ``--lora-r=8``,
    ``--train.max_steps -1``, ``--bf16`` (a boolean without a value is true) become ``learning_rate=2e-4``... The
    command's own options (and their abbreviations) keep their meaning; an unknown flag is refused with a
    did-you-mean."""

    takes_overrides = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """argparse's, after the flags that name config keys were rewritten as dotted overrides."""
        if args is not None and self.takes_overrides:
            args = self._flags_as_overrides(list(args))
        return super().parse_known_args(args, namespace)

    def _own_option(self, flag: str) -> bool:
        """``flag`` is one of this command's options or an abbreviation argparse expands to one."""
        return any(option.startswith(flag) for option in self._option_string_actions)

    def _flags_as_overrides(self, args: list[str]) -> list[str]:
        out, i = [], 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                return out + args[i:]
            flag, eq, value = arg.partition("=")
            if not arg.startswith("--") or self._own_option(flag):
                out.append(arg)
                i += 1
                continue
            key = flag[2:].replace("-", "_")
            try:
                tp = field_type(key)
            except ConfigError as e:
                self.error(f"{flag} is not an option of this command, nor a config key: {e}")
            boolean = switch_of(key.split(".")) is not None or tp is bool or bool in typing.get_args(tp)
            nxt = args[i + 1] if i + 1 < len(args) else None
            if not eq and boolean:  # `--bf16` alone is true, as on TRL's command line
                value, i = (nxt, i + 1) if nxt is not None and nxt.lower() in BOOLEAN_WORDS else ("true", i)
            elif not eq:
                if nxt is None or nxt.startswith("--"):
                    self.error(f"{flag} needs a value (e.g. {flag} VALUE, or {key}=VALUE)")
                value, i = nxt, i + 1
            out.append(f"{key}={value}")
            i += 1
        return out


def build_parser(fns: Handlers) -> argparse.ArgumentParser:
    """The `tunebench` parser, whose subcommands call ``fns[name]`` (as ``args.fn``)."""
    p = FlagParser(
        prog="tunebench",
        description="Fine-tune chat models with LoRA and prove, with intervals, whether the adapter beats its base.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    add_preset_commands(sub, fns)
    add_sweep(sub, fns)
    add_eval(sub, fns)
    add_run_readers(sub, fns)
    add_chat(sub, fns)
    add_export(sub, fns)
    add_serve(sub, fns)
    s = sub.add_parser("bench", help="GPU benchmarks: `tunebench bench speed|eval --help`", add_help=False)
    s.add_argument("bench_args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=fns["bench"])
    return p


def add_preset_commands(sub: Subparsers, fns: Handlers) -> None:
    """presets, and the commands that take a preset and dotted overrides: config, data, train, run."""
    s = sub.add_parser("presets", help="list the shipped presets")
    s.set_defaults(fn=fns["presets"])
    add_preset_command(sub, "config", fns["config"], "print the resolved config", out=False)
    add_preset_command(
        sub, "data", fns["data"], "prepare data: standardize, split, render, mask; write the data report"
    )
    s = add_preset_command(sub, "train", fns["train"], "train a LoRA adapter")
    s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    s.add_argument("--overwrite", action="store_true", help="discard earlier training output in the folder")
    s = add_preset_command(
        sub, "run", fns["run"], "the whole pipeline: data, train, eval base+tuned, compare, report, gate"
    )
    s.add_argument("--overwrite", action="store_true", help="start the run folder from scratch")
    s.add_argument(
        "--gate-exit", action="store_true", help="exit with the gate's code (1 a rule failed, 3 inconclusive)"
    )


def add_preset_command(
    sub: Subparsers, name: str, fn: Callable[[argparse.Namespace], int], help: str, out: bool = True
) -> argparse.ArgumentParser:
    """A subcommand of a preset and dotted overrides (with ``--out`` and ``--strict`` when it writes a run folder)."""
    s = sub.add_parser(name, help=help)
    s.takes_overrides = True
    s.add_argument("preset", help="preset name (see `tunebench presets`) or a YAML file")
    s.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 lora.r=32 (or flags: --learning_rate 1e-4)"
    )
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


def add_sweep(sub: Subparsers, fns: Handlers) -> None:
    """`tunebench sweep`: the study's size, space, storage, seeds, pruner and confirmation."""
    s = sub.add_parser("sweep", help="LoRA / hyperparameter search (Optuna) that picks a winner with confidence")
    s.takes_overrides = True
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
        help="where the study lives (default sqlite:///OUT/study.db); to share one study across machines, "
        "a database server, postgresql://USER:PASS@HOST/DB (or mysql://...), or journal:PATH, an Optuna journal "
        "file on a disk every machine mounts. Every worker runs the same command (docs/scale-out.md)",
    )
    s.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT_S,
        metavar="SECONDS",
        help=f"a running trial's heartbeat period (default {HEARTBEAT_S}); a trial silent for {LOST_AFTER} beats "
        "lost its worker: another worker fails it and runs its configuration again. The same for every worker",
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
    s.set_defaults(fn=fns["sweep"])


SHARD_EXAMPLES = """sharded over machines (0-based shards; merge refuses missing, duplicated or mismatched ones):
  tunebench eval runs/smoke --shard 0/2       # on machine A
  tunebench eval runs/smoke --shard 1/2       # on machine B, same run folder (shared disk)
  tunebench merge runs/smoke                  # once both are written: eval/{base,tuned}/results.json + report
  sbatch --array=0-7 --wrap 'tunebench eval runs/x --shard slurm'   # a SLURM array: index and count from it
"""


def add_eval(sub: Subparsers, fns: Handlers) -> None:
    """`tunebench eval`: a run's base and tuned, one model on a run's inputs, or a served endpoint."""
    s = sub.add_parser(
        "eval",
        help="evaluate base and tuned of a run, or one model on a run's inputs",
        epilog=SHARD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.takes_overrides = True
    s.add_argument("run", nargs="?", help="run folder (evaluates base and tuned)")
    s.add_argument("overrides", nargs="*", default=[], help="dotted overrides of the run's config")
    s.add_argument("--model", help="model reference (hub id, folder, .gguf, packaged:...)")
    s.add_argument("--adapter", help="LoRA adapter folder")
    s.add_argument("--data-from", help="run folder whose test split and settings to use with --model")
    s.add_argument("--label", help="label in the results (default base/tuned)")
    s.add_argument("--out", help="results.json path")
    s.add_argument(
        "--runtime",
        choices=list(EVAL_RUNTIMES),
        default=TRANSFORMERS,
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
    s.add_argument(
        "--force",
        action="store_true",
        help="evaluate again even where the run's saved base/tuned results are current (same model, adapter, data, "
        "settings)",
    )
    s.add_argument(
        "--shard",
        metavar="I/N|slurm",
        help="evaluate only shard I of N (0-based: 0/N .. N-1/N) of a run's items, into RUN/eval/shards/I-of-N/; "
        "`slurm` takes I and N from SLURM_ARRAY_TASK_ID/_MIN/_COUNT. Join with `tunebench merge RUN`",
    )
    s.set_defaults(fn=fns["eval"])
    s = sub.add_parser(
        "merge",
        help="join the shards of `eval RUN --shard I/N` into the run's results and report",
        description="Join RUN/eval/shards/*-of-N/ into RUN/eval/{base,tuned}/results.json (values and intervals "
        "computed again from every shard's per-item records: equal to one unsharded evaluation), then render the "
        "report as `tunebench eval RUN` does. Refuses (exit 2, nothing written) missing or duplicated shards, shards "
        "of two splits, and shards evaluated with other settings, data, adapter or package versions.",
        epilog=SHARD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("run", help="run folder whose eval/shards/ to join")
    s.add_argument("overrides", nargs="*", default=[], help="the dotted overrides the shards were evaluated with")
    s.set_defaults(fn=fns["merge"])


def add_run_readers(sub: Subparsers, fns: Handlers) -> None:
    """The commands that read finished runs: report, gate, compare."""
    s = sub.add_parser("report", help="re-render report.md, comparison.json and gate.json of a run")
    s.add_argument("run")
    s.set_defaults(fn=fns["report"])
    s = sub.add_parser("gate", help="release gate: exit 0 pass, 1 fail, 3 inconclusive, 2 invalid input")
    s.add_argument("run")
    s.add_argument(
        "--rules",
        help="rules YAML, or a shipped gate name (default; configs/gates/NAME.yaml names the "
        "shipped file too); default: the run's gate.rules, else the shipped default",
    )
    s.add_argument("--out", help="verdict JSON (default RUN/gate.json)")
    s.set_defaults(fn=fns["gate"])
    s = sub.add_parser(
        "compare",
        help="leaderboard: several runs' adapters against their common base; or two lm-eval runs, paired (--lm-eval)",
        epilog="""examples:
  tunebench compare runs/a runs/b             # adapters of runs a, b against run a's base
  lm_eval --model hf --model_args pretrained=M --tasks arc_easy --log_samples --output_path out/base
  lm_eval --model hf --model_args pretrained=M,peft=ADAPTER --tasks arc_easy --log_samples --output_path out/lora
  tunebench compare --lm-eval out/base out/lora --out cmp --gate-exit   # B - A paired by doc_id; report, gate
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("runs", nargs="+", help="run folders; with --lm-eval, A B: two lm-eval --output_path folders")
    s.add_argument("--metric", help="rank the adapters by this metric (default: the first headline metric)")
    s.add_argument("--json", help="write the leaderboard's data (ranking, pairs, comparisons) here as JSON")
    s.add_argument(
        "--lm-eval",
        action="store_true",
        help="A B are lm-eval runs written with --log_samples (the --output_path folder, the model folder in it, or "
        "its results_*.json): B against A, paired document by document, with tunebench's rows, report and gate",
    )
    s.add_argument(
        "--out",
        help="write the Markdown table here too; with --lm-eval, a folder for report.md, comparison.json and gate.json",
    )
    s.add_argument("--rules", help="with --lm-eval: gate rules YAML or shipped gate name (default lm_eval)")
    s.add_argument("--alpha", type=float, default=0.05, help="with --lm-eval: two-sided level (default 0.05)")
    s.add_argument("--n-boot", type=int, default=2000, help="with --lm-eval: bootstrap resamples (default 2000)")
    s.add_argument(
        "--gate-exit", action="store_true", help="with --lm-eval: exit with the gate's code (1 fail, 3 inconclusive)"
    )
    s.set_defaults(fn=fns["compare"])


def add_chat(sub: Subparsers, fns: Handlers) -> None:
    """`tunebench chat`: the model, adapter, template and sampling of an interactive chat."""
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
    s.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 decodes greedily (the same answer every time); above 0 samples",
    )
    s.add_argument("--min-p", type=float, default=0.1, help="min-p cutoff when sampling (temperature above 0)")
    s.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest answer in tokens (kept free in the model's context)"
    )
    s.set_defaults(fn=fns["chat"])


def add_export(sub: Subparsers, fns: Handlers) -> None:
    """`tunebench export`: a merged 16-bit folder and/or GGUF files."""
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
    s.set_defaults(fn=fns["export"])


def add_serve(sub: Subparsers, fns: Handlers) -> None:
    """`tunebench serve`: the served GGUF, address, key, context and engine."""
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
        choices=list(SERVE_ENGINES),
        default=LLAMA_CPP,
        help="llama.cpp on the exported GGUF (default), or vLLM on the base with the adapter as a runtime "
        "LoRA named `tuned` (GPU; needs vLLM installed; not run on the developers' machines)",
    )
    s.set_defaults(fn=fns["serve"])
