"""`tunebench bench speed` / `bench eval`: training and evaluation speed of the suite's own code paths on a
CUDA GPU, with every backend in its own process, measured in one invocation and written as JSON + Markdown.

    python -m tunebench.bench.speed speed --shape llama-3.2-1b --out bench-out     # unsloth vs hf vs hf-padfree
    python -m tunebench.bench.speed eval --shape llama-3.2-1b --out bench-out      # perplexity + generation speed
    python -m tunebench.bench.speed export-data --n 3000 --out sharegpt-3000.jsonl # data for a machine without it
    python -m tunebench.bench.speed export-tokenizer --out standin-tokenizer        # tokenizer for such a machine

One invocation: a setup process measures the card's bf16 matmul peak and builds the random-weight shapes;
the parent encodes the conversations once through train/data.py; then one worker process per (shape,
backend, batch point) runs the real ``train.trainer.train`` with a StepTimer callback (Unsloth is imported
first in its own process, so it never patches the others). Results are rewritten after every worker, so
a run cut short still leaves valid files. Exit codes: 0 every row measured, 1 some row failed or was
skipped (the files say which), 2 bad input, 3 no CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tunebench.bench.scaling import combine_rank_marks, render_scaling, scaling_rows, worker_command
from tunebench.bench.shapes import export_data, load_prepared
from tunebench.core import dist
from tunebench.core.io import atomic_write_json, atomic_write_text, cache_root, read_json

log = logging.getLogger("tunebench.speed")

EXIT_OK, EXIT_INCOMPLETE, EXIT_INPUT, EXIT_NO_CUDA = 0, 1, 2, 3
NO_CUDA = ("tunebench bench {cmd} needs a CUDA GPU; measured numbers only come from one. Nothing was run or "
           "written. Run it on the GPU machine (see `python -m tunebench.bench.speed {cmd} --help`).")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED_POINT = {"batch_size": 2, "grad_accum": 4, "max_length": 2048, "r": 16}
"""The seed notebook's settings: the point at which the Unsloth-vs-hf targets are judged."""

# Name -> (train.backend, train.padding_free, train.packing, what it measures)
BACKENDS: dict[str, tuple[str, bool, bool, str]] = {
    "unsloth": ("unsloth", False, False, "Unsloth FastLanguageModel + its SFTTrainer patches, as the suite runs it by "
                "default: train.padding_free=false reaches SFTConfig explicitly, which switches off Unsloth's own "
                "padding-free choice, so batches are padded and each decoder block is compiled"),
    "unsloth-padfree": ("unsloth", True, False, "unsloth backend with train.padding_free=true: Unsloth's varlen "
                        "padding-free batches (no padding, no block compile)"),
    "hf": ("hf", False, False, "transformers + peft + bitsandbytes, SDPA attention, right-padded batches"),
    "hf-padfree": ("hf", True, False, "hf backend with train.padding_free=true: one flattened row per micro-batch; "
                   "transformers 5 builds a block-causal SDPA mask from position_ids (masking_utils."
                   "find_packed_sequence_indices)"),
    "hf-packed": ("hf", False, True, "hf backend with train.packing=true (TRL best-fit packing into max_length rows, "
                  "position_ids, the same block-causal SDPA mask)"),
}
SPEED_TARGETS = {"tokens_ratio": 1.3, "memory_ratio": 0.55, "mfu": 0.40}
EVAL_TARGETS = {"ppl_mfu": 0.45, "gen_tokens_per_s": 3000.0}


# ----------------------------------------------------------------------------- arithmetic (pure, tested)


def mfu(params: int, tokens_per_s: float, peak_tflops: float, flops_per_param_token: float = 6.0) -> float | None:
    """Model FLOPs utilisation: ``flops_per_param_token * N * tokens/s`` over the card's peak.

    6·N per token is the usual training count (forward 2·N + backward 4·N; attention scores and
    recomputation are not counted); 2·N is a forward pass.
    """
    if not peak_tflops or tokens_per_s is None:
        return None
    return flops_per_param_token * params * tokens_per_s / (peak_tflops * 1e12)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    v = sorted(values)
    if not v:
        raise ValueError("percentile of an empty list")
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize_steps(marks: list[tuple[int, float, int, int]], warmup: int) -> dict[str, Any]:
    """Throughput and step-time spread over the optimizer steps after ``warmup``.

    Args:
        marks: (global_step, seconds, cumulative real tokens, cumulative input positions) at train begin
            (step 0) and after every optimizer step, taken after a CUDA synchronize.
        warmup: steps excluded from the measurement (compilation, allocator growth, autotuning).

    Raises:
        ValueError: fewer than one measured step after warm-up.
    """
    window = [m for m in marks if m[0] >= warmup]
    if len(window) < 2:
        raise ValueError(f"only {len(marks) - 1} optimizer steps ran; need more than the {warmup} warm-up steps")
    times = [b[1] - a[1] for a, b in zip(window, window[1:], strict=False)]
    seconds = window[-1][1] - window[0][1]
    tokens = window[-1][2] - window[0][2]
    positions = window[-1][3] - window[0][3]
    return {
        "measured_steps": len(times),
        "seconds": round(seconds, 4),
        "real_tokens": tokens,
        "input_positions": positions,
        "padding_fraction": round(1 - tokens / positions, 4) if positions else None,
        "real_tokens_per_s": round(tokens / seconds, 1),
        "positions_per_s": round(positions / seconds, 1),
        "real_tokens_per_step": round(tokens / len(times), 1),
        "step_s_median": round(percentile(times, 50), 4),
        "step_s_p10": round(percentile(times, 10), 4),
        "step_s_p90": round(percentile(times, 90), 4),
    }


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"2,8,16"`` -> [2, 8, 16]; an error names the flag."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: give integers separated by commas, e.g. 2,8,16") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: every value must be >= 1")
    return values


def points_of(batch_sizes: list[int], grad_accums: list[int]) -> list[tuple[int, int]]:
    """Pair batch sizes with accumulation steps: one accumulation for all, or one per batch size."""
    if len(grad_accums) == 1:
        return [(b, grad_accums[0]) for b in batch_sizes]
    if len(grad_accums) != len(batch_sizes):
        raise ValueError(f"--grad-accum has {len(grad_accums)} values for {len(batch_sizes)} batch sizes; "
                         "give one value, or one per batch size")
    return list(zip(batch_sizes, grad_accums, strict=True))


# ----------------------------------------------------------------------------- GPU helpers (worker side)


def make_step_timer(warmup: int) -> Any:
    """A TrainerCallback that timestamps every optimizer step (after a CUDA sync) and counts tokens.

    Real tokens are counted by the suite's own ``tunebench.train.trainer._count_tokens_hook`` (attention-mask sum, or
    every position of a padding-free row); input positions (padding included) by a second hook. The peak
    memory counters are read and reset when warm-up ends, so the result holds both the peak of the whole
    ``trainer.train()`` and the steady-state peak of the measured steps.
    """
    import torch
    from transformers import TrainerCallback

    from tunebench.train.trainer import _count_tokens_hook

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.tokens = 0  # written by _count_tokens_hook
            self.positions = 0
            self.marks: list[tuple[int, float, int, int]] = []
            self.memory: dict[str, float] = {}
            self._handles: list[Any] = []

        def _positions_hook(self, module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if module.training and ids is not None:
                self.positions += int(ids.numel())

        def _mark(self, step: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.marks.append((step, time.perf_counter(), self.tokens, self.positions))

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._handles = [_count_tokens_hook(model, self),
                             model.register_forward_pre_hook(self._positions_hook, with_kwargs=True)]
            if cuda:
                self.memory["resident_at_train_begin_gib"] = torch.cuda.memory_allocated() / 2**30
            self._mark(state.global_step)

        def on_step_end(self, args, state, control, **kw):
            self._mark(state.global_step)
            if cuda and state.global_step == warmup:
                self.memory["warmup_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                self.memory["warmup_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
                torch.cuda.reset_peak_memory_stats()

        def on_train_end(self, args, state, control, **kw):
            if cuda:
                self.memory["steady_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
                self.memory["steady_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            for h in self._handles:
                h.remove()
            self._handles = []

        def memory_summary(self) -> dict[str, float]:
            m = self.memory
            out = {k: round(v, 3) for k, v in m.items()}
            if "steady_peak_allocated_gib" in m:
                out["peak_allocated_gib"] = round(max(m.get("warmup_peak_allocated_gib", 0),
                                                      m["steady_peak_allocated_gib"]), 3)
                out["peak_reserved_gib"] = round(max(m.get("warmup_peak_reserved_gib", 0),
                                                     m["steady_peak_reserved_gib"]), 3)
            return out

    return StepTimer()


# ----------------------------------------------------------------------------- workers


def run_train_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: one backend at one (batch, accumulation) point through the suite's ``train.trainer.train``."""
    import shutil

    import torch

    from tunebench.core.config import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
    from tunebench.train.trainer import train

    backend, padding_free, packing, _ = BACKENDS[spec["backend"]]
    cuda = torch.cuda.is_available()
    cfg = RunConfig(
        name=f"speed-{spec['shape']}-{spec['backend']}-{spec['batch_size']}x{spec['grad_accum']}",
        model=ModelConfig(ref=spec["model_dir"], chat_template=spec["chat_template"],
                          load_in_4bit="on" if cuda and spec.get("load_in_4bit", True) else "off"),
        data=DataConfig(source=spec["data_source"], max_length=spec["max_length"], max_validation=0, max_test=0),
        lora=LoraConfig(r=spec["r"], alpha=spec["alpha"], target_modules=list(spec["targets"])),
        train=TrainConfig(backend=backend, batch_size=spec["batch_size"], grad_accum=spec["grad_accum"],
                          max_steps=spec["warmup"] + spec["steps"], save_every=0, eval_every=0,
                          padding_free=padding_free, packing=packing, seed=3407),
    )
    prepared = load_prepared(spec["prepared"])
    timer = make_step_timer(spec["warmup"])
    t0 = time.perf_counter()
    result = train(cfg, spec["run_dir"], overwrite=True, prepared=prepared, extra_callbacks=[timer])
    wall = time.perf_counter() - t0
    man = result.manifest or {}
    marks = timer.marks
    if dist.world_size() > 1:
        marks = combine_rank_marks(dist.gather(timer.marks))
    row = summarize_steps(marks, spec["warmup"])
    row["world_size"] = dist.world_size()
    row.update(timer.memory_summary())
    per_gpu = row["real_tokens_per_s"] / dist.world_size()  # MFU is per card: N cards have N times the peak
    row["mfu"] = mfu(spec["params"], per_gpu, spec.get("peak_tflops"))
    row["mfu_datasheet"] = mfu(spec["params"], per_gpu, spec.get("datasheet_tflops"))
    row.update({
        "backend_used": (man.get("backend") or {}).get("name"),
        "mask_agreement": (man.get("backend") or {}).get("mask_agreement_with_shared"),
        "trainable_params": man.get("trainable_params"),
        "steps_run": man.get("steps"),
        "first_loss": (man.get("loss_history") or [{}])[0].get("loss"),
        "final_loss": man.get("final_train_loss"),
        "train_wall_s": round(wall, 1),
        "load_in_4bit": cfg.model.load_in_4bit == "on",
        "optimizer": "adamw_8bit" if cuda else "adamw_torch",
    })
    shutil.rmtree(spec["run_dir"], ignore_errors=True)  # the adapter of a random model is worth nothing
    return row


def worker_main(spec_arg: str) -> int:
    """``python -m tunebench.bench.speed worker SPEC``: run one job, write its result JSON (errors included)."""
    spec = json.loads(spec_arg) if spec_arg.lstrip().startswith("{") else read_json(spec_arg)
    if spec["kind"] == "train" and BACKENDS[spec["backend"]][0] == "unsloth":
        from tunebench.train.backends import import_unsloth

        err = import_unsloth()  # before transformers/trl/peft: Unsloth patches them on import
        if err:
            log.error("unsloth does not import: %s", err)
    t0 = time.perf_counter()
    try:
        if spec["kind"] == "setup":
            from tunebench.bench.shapes import run_setup

            result = run_setup(spec)
        elif spec["kind"] == "train":
            result = run_train_point(spec)
        elif spec["kind"] == "eval":
            from tunebench.bench.evalspeed import run_eval_shape

            result = run_eval_shape(spec)
        else:
            raise ValueError(f"unknown worker kind {spec['kind']!r}")
        result["status"] = "ok"
    except BaseException as e:  # recorded in the results; the parent carries on with the next job
        tb = traceback.format_exc().splitlines()
        result = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:2000]}", "traceback": tb[-25:]}
        log.error("worker %s failed: %s", spec.get("label"), result["error"])
    result["process_wall_s"] = round(time.perf_counter() - t0, 1)
    if int(os.environ.get("RANK", "0")) != 0:  # a data-parallel worker: rank 0 writes the job's row
        return 0 if result["status"] == "ok" else 1
    atomic_write_json(spec["result"], result)
    return 0 if result["status"] == "ok" else 1


# ----------------------------------------------------------------------------- parent side


class SetupError(RuntimeError):
    """The setup worker (shape building, calibration) failed: nothing can be measured."""


class Budget:
    """Wall-clock budget of one invocation: each worker gets what is left, minus a reserve for writing."""

    def __init__(self, seconds: float, reserve: float = 10.0):
        self.deadline = time.monotonic() + seconds
        self.reserve = reserve

    def left(self) -> float:
        return self.deadline - self.reserve - time.monotonic()


def spawn(spec: dict[str, Any], work: Path, budget: Budget, min_seconds: float = 45.0) -> dict[str, Any]:
    """Run one worker process (output streamed through), bounded by the budget; return its result."""
    label = spec["label"]
    left = budget.left()
    if left < min_seconds:
        return {"status": "skipped", "error": f"skipped: {left:.0f} s of the --budget-s left, fewer than {min_seconds:.0f}"}
    spec = dict(spec, result=str(work / "results" / f"{label}.json"))
    spec_path = atomic_write_json(work / "specs" / f"{label}.json", spec)
    Path(spec["result"]).unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="5", TOKENIZERS_PARALLELISM="false")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"\n=== {label}: starting worker ({left:.0f} s of budget left) ===", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(worker_command(str(spec_path), spec.get("world_size", 1)), env=env,
                            start_new_session=True)  # its own group: a timeout ends it and its children
    try:
        code = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        _stop(proc)
        return {"status": "error", "error": f"timed out after {time.monotonic() - t0:.0f} s (the --budget-s ran out)"}
    except KeyboardInterrupt:
        _stop(proc)
        raise
    elapsed = time.monotonic() - t0
    if Path(spec["result"]).exists():
        result = read_json(spec["result"])
    else:
        result = {"status": "error", "error": f"worker exited with code {code} and wrote no result "
                  "(killed for memory, or a crash below Python; see its output above)"}
    result["worker_s"] = round(elapsed, 1)
    print(f"=== {label}: {result['status']} in {elapsed:.0f} s"
          + (f" ({result.get('error')})" if result["status"] != "ok" else "") + " ===", flush=True)
    return result


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def setup(shapes: dict[str, dict[str, Any]], args: argparse.Namespace, work: Path, budget: Budget) -> dict[str, Any]:
    """Calibrate the card and build the shapes in a worker; fill in each shape's folder and description."""
    from tunebench.bench.shapes import describe

    spec = {"kind": "setup", "label": "setup", "build": [n for n, s in shapes.items() if s["build"]],
            "tokenizer": args.tokenizer, "root": str(work / "shapes"), "calibrate": True}
    res = spawn(spec, work, budget, min_seconds=20)
    if res["status"] != "ok":
        raise SetupError(f"setup failed: {res.get('error')} (check --tokenizer and --work; the worker's "
                         "output is above)")
    for name, s in shapes.items():
        if s["build"]:
            s["path"] = res["shapes"][name]["path"]
        s["info"] = describe(name, s["path"])
    return res


def common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="llama-3.2-1b",
                   help="llama-3.2-1b, llama-3.2-3b, tiny, or a model reference; several separated by commas")
    p.add_argument("--data", default="packaged:sharegpt-v3",
                   help="conversations (packaged:sharegpt-v3, or a JSONL written by export-data)")
    p.add_argument("--tokenizer", help="tokenizer folder for the stand-in (default: the packaged SmolLM2 one)")
    p.add_argument("--r", type=int, default=16, help="LoRA rank")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    p.add_argument("--lora-targets", default=",".join(DEFAULT_TARGETS), help="LoRA target modules")
    p.add_argument("--out", default="bench-out", help="folder for the JSON and Markdown results")
    p.add_argument("--work", help="scratch folder for shapes, encoded data and worker files "
                   "(default: the tunebench cache)")
    p.add_argument("--budget-s", type=float, default=570.0,
                   help="wall-clock budget; workers that would start after it are skipped (default 570)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunebench bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{speed,eval,export-data,export-tokenizer}")
    s = sub.add_parser("speed", help="training speed: unsloth vs hf (each in its own process), GPU only")
    common_flags(s)
    s.add_argument("--backends", default="unsloth,hf,hf-padfree", help=f"any of {', '.join(BACKENDS)}")
    s.add_argument("--batch-size", default="2", help="conversations per device step; a list sweeps, e.g. 2,8,16")
    s.add_argument("--grad-accum", default="4", help="accumulation steps: one value, or one per batch size")
    s.add_argument("--max-length", type=int, default=2048)
    s.add_argument("--warmup", type=int, default=6, help="optimizer steps before measuring")
    s.add_argument("--steps", type=int, default=40, help="measured optimizer steps at the first point")
    s.add_argument("--sweep-steps", type=int, default=20, help="measured optimizer steps at the other points")
    s.add_argument("--sweep-backends", default="unsloth,hf",
                   help="backends run at the points after the first (any of the above)")
    s.add_argument("--no-4bit", action="store_true", help="bf16 LoRA instead of QLoRA")
    s.add_argument("--world-size", type=int, default=1,
                   help="also run hf data-parallel under torchrun on this many GPUs and report scaling efficiency")
    s = sub.add_parser("eval", help="evaluation speed: perplexity and batched generation, GPU only")
    common_flags(s)
    s.add_argument("--ppl-batch-tokens", default="16384,65536", help="perplexity batch-token budgets (a list sweeps)")
    s.add_argument("--ppl-conversations", type=int, default=500, help="conversations scored per setting")
    s.add_argument("--max-length", type=int, default=2048)
    s.add_argument("--gen-batch", type=int, default=64, help="prompts per generate() call")
    s.add_argument("--gen-batches", type=int, default=2, help="timed generate() calls per setting")
    s.add_argument("--prompt-tokens", type=int, default=64, help="rendered prompt length in tokens")
    s.add_argument("--new-tokens", type=int, default=128, help="max new tokens per answer")
    s = sub.add_parser("export-data", help="write the first N clean training conversations as ShareGPT JSONL")
    s.add_argument("--n", type=int, default=3000)
    s.add_argument("--out", required=True)
    s.add_argument("--data", default="packaged:sharegpt-v3")
    s.add_argument("--max-mb", type=float, default=15.0, help="stop before the file grows past this")
    s = sub.add_parser("export-tokenizer", help="write the stand-in Llama-3 tokenizer folder")
    s.add_argument("--out", required=True)
    s.add_argument("--tokenizer", help="base tokenizer folder (default: the packaged SmolLM2 one)")
    s = sub.add_parser("worker", help=argparse.SUPPRESS)
    s.add_argument("spec")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tunebench bench ...`` and ``python -m tunebench.bench.speed ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    if args.command == "worker":
        return worker_main(args.spec)
    if args.command == "export-data":
        info = export_data(args.n, args.out, args.data, args.max_mb)
        print(f"wrote {info['written']} conversations ({info['mb']:.1f} MB) to {args.out}")
        return EXIT_OK
    if args.command == "export-tokenizer":
        from tunebench.bench.shapes import export_tokenizer

        print(f"stand-in tokenizer written to {export_tokenizer(args.out, args.tokenizer)}")
        return EXIT_OK
    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA.format(cmd=args.command), file=sys.stderr)
        return EXIT_NO_CUDA
    from tunebench.data.sources import DataError
    from tunebench.models.loading import ModelError

    try:
        if args.command == "speed":
            return run_speed(args)
        from tunebench.bench.evalspeed import run_eval

        return run_eval(args)
    except (argparse.ArgumentTypeError, ValueError, ModelError, DataError, FileNotFoundError, SetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT


def work_dir(args: argparse.Namespace) -> Path:
    return Path(args.work) if args.work else cache_root() / "bench"


# ----------------------------------------------------------------------------- the speed benchmark


def _names(text: str, known: dict[str, Any], flag: str) -> list[str]:
    import difflib

    names = [x.strip() for x in text.split(",") if x.strip()]
    for n in names:
        if n not in known:
            hint = difflib.get_close_matches(n, list(known), n=1)
            raise ValueError(f"{flag}: unknown {n!r} (known: {', '.join(known)})"
                             + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return names


def run_speed(args: argparse.Namespace) -> int:
    """The parent of ``bench speed``: setup, data, one worker per (point, shape, backend), results after each."""
    from tunebench.bench.shapes import prepare_data, resolve_shapes

    backends = _names(args.backends, BACKENDS, "--backends")
    sweep = _names(args.sweep_backends, BACKENDS, "--sweep-backends")
    points = points_of(parse_int_list(args.batch_size, "--batch-size"), parse_int_list(args.grad_accum, "--grad-accum"))
    budget, work, out = Budget(args.budget_s), work_dir(args), Path(args.out)
    shapes = resolve_shapes([x.strip() for x in args.shape.split(",") if x.strip()], args.tokenizer)
    first = {"batch_size": points[0][0], "grad_accum": points[0][1], "max_length": args.max_length, "r": args.r}
    results: dict[str, Any] = {
        "schema": "tunebench.speed/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "tunebench bench " + " ".join(args.argv),
        "settings": {
            "backends": {b: BACKENDS[b][3] for b in dict.fromkeys(backends + (sweep if len(points) > 1 else []))},
            "points": [list(p) for p in points],
            "sweep_backends": sweep, "max_length": args.max_length, "warmup_steps": args.warmup,
            "measured_steps_first_point": args.steps, "measured_steps_other_points": args.sweep_steps,
            "lora": {"r": args.r, "alpha": args.alpha, "targets": args.lora_targets.split(","), "dropout": 0.0},
            "quantization": "none (bf16 LoRA)" if args.no_4bit else "4-bit nf4 base weights, double quant (QLoRA)",
            "gradient_checkpointing": "on (Unsloth's offloaded variant on unsloth)", "optimizer": "adamw_8bit",
            "first_point_is_seed_settings": first == SEED_POINT, "seed_settings": SEED_POINT,
            "data": args.data,
        },
        "rows": [],
    }
    setup_res = setup(shapes, args, work, budget)
    results.update(card=setup_res["card"], environment=setup_res["environment"],
                   calibration=setup_res.get("calibration"),
                   shapes={n: s["info"] for n, s in shapes.items()})
    peak = (setup_res.get("calibration") or {}).get("peak_tflops")
    sheet = (setup_res.get("calibration") or {}).get("datasheet_tflops")
    need = max((args.warmup + (args.steps if i == 0 else args.sweep_steps)) * b * a for i, (b, a) in enumerate(points))
    need *= max(1, args.world_size)  # each data-parallel process reads its own conversations
    need += need // 10 + 8  # a few conversations lose every assistant token at max_length and are dropped
    data: dict[str, Any] = {}
    for name, s in shapes.items():
        s["prepared"], data[name], _ = prepare_data(s["path"], s["chat_template"], args.data, args.max_length, need,
                                                    work)
    results["data"] = data
    write_speed(results, out)
    for i, (bs, ga) in enumerate(points):
        for name, s in shapes.items():
            for backend in backends if i == 0 else sweep:
                label = f"{name}-{backend}-{bs}x{ga}"
                spec = {"kind": "train", "label": label, "shape": name, "backend": backend, "model_dir": s["path"],
                        "chat_template": s["chat_template"], "prepared": str(s["prepared"]), "data_source": args.data,
                        "batch_size": bs, "grad_accum": ga, "max_length": args.max_length, "warmup": args.warmup,
                        "steps": args.steps if i == 0 else args.sweep_steps, "r": args.r, "alpha": args.alpha,
                        "targets": args.lora_targets.split(","), "load_in_4bit": not args.no_4bit,
                        "params": s["info"]["params"], "peak_tflops": peak, "datasheet_tflops": sheet,
                        "run_dir": str(work / "runs" / label)}
                row = {"shape": name, "backend": backend, "point": i, "batch_size": bs, "grad_accum": ga,
                       "max_length": args.max_length, "r": args.r}
                row.update(spawn(spec, work, budget))
                results["rows"].append(row)
                write_speed(results, out)
    if args.world_size > 1:  # hf under torchrun at the first point, against its one-process row above
        bs, ga = points[0]
        for name, s in shapes.items():
            label = f"{name}-hf-{bs}x{ga}-ddp{args.world_size}"
            spec = {"kind": "train", "label": label, "shape": name, "backend": "hf", "model_dir": s["path"],
                    "chat_template": s["chat_template"], "prepared": str(s["prepared"]), "data_source": args.data,
                    "batch_size": bs, "grad_accum": ga, "max_length": args.max_length, "warmup": args.warmup,
                    "steps": args.steps, "r": args.r, "alpha": args.alpha, "targets": args.lora_targets.split(","),
                    "load_in_4bit": not args.no_4bit, "params": s["info"]["params"], "peak_tflops": peak,
                    "datasheet_tflops": sheet, "run_dir": str(work / "runs" / label), "world_size": args.world_size}
            row = {"shape": name, "backend": "hf", "point": 0, "batch_size": bs, "grad_accum": ga,
                   "max_length": args.max_length, "r": args.r, "world_size": args.world_size}
            row.update(spawn(spec, work, budget))
            results["rows"].append(row)
            write_speed(results, out)
    ok = all(r["status"] == "ok" for r in results["rows"])
    print(f"\nresults: {out / 'speed.json'} and {out / 'speed.md'}" + ("" if ok else " (some rows failed or were skipped)"))
    return EXIT_OK if ok else EXIT_INCOMPLETE


def speed_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every backend against hf at the same shape and point (same invocation, same card, same batches)."""
    out = []
    ok = [r for r in rows if r.get("status") == "ok" and r.get("world_size", 1) == 1]
    for base in (r for r in ok if r["backend"] == "hf"):
        for r in ok:
            if r is base or (r["shape"], r["point"]) != (base["shape"], base["point"]):
                continue
            out.append({
                "shape": r["shape"], "point": r["point"], "batch_size": r["batch_size"], "grad_accum": r["grad_accum"],
                "backend": r["backend"], "vs": "hf",
                "real_tokens_per_s_ratio": round(r["real_tokens_per_s"] / base["real_tokens_per_s"], 3),
                "peak_allocated_ratio": _ratio(r.get("peak_allocated_gib"), base.get("peak_allocated_gib")),
                "peak_reserved_ratio": _ratio(r.get("peak_reserved_gib"), base.get("peak_reserved_gib")),
                "same_tokens": r["real_tokens"] == base["real_tokens"],
            })
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _target(name: str, shape: str, value: float | None, threshold: float, higher_is_better: bool, where: str,
            missing: str = "") -> dict[str, Any]:
    met = None if value is None else (value >= threshold if higher_is_better else value <= threshold)
    return {"target": name, "shape": shape, "threshold": threshold, "higher_is_better": higher_is_better,
            "value": None if value is None else round(value, 4), "met": met, "where": where,
            "margin": None if value is None else round(value - threshold, 4),
            "margin_relative": None if value is None else round(value / threshold - 1, 4),
            "note": missing if value is None else ""}


def speed_targets(rows: list[dict[str, Any]], shapes: list[str]) -> list[dict[str, Any]]:
    """The issue's targets per shape: each Unsloth row vs hf at the first point, and the best MFU of any row."""
    out = []
    for shape in shapes:
        ok = [r for r in rows if r.get("status") == "ok" and r["shape"] == shape]
        first = {r["backend"]: r for r in ok if r["point"] == 0 and r.get("world_size", 1) == 1}
        h = first.get("hf")
        why = "needs ok unsloth and hf rows at the first point"
        for name in [b for b in first if b.startswith("unsloth")] or ["unsloth"]:
            u = first.get(name)
            out.append(_target(f"{name} real tokens/s ÷ hf >= 1.3", shape,
                               u["real_tokens_per_s"] / h["real_tokens_per_s"] if u and h else None,
                               SPEED_TARGETS["tokens_ratio"], True, "first point", why))
            out.append(_target(f"{name} peak allocated ÷ hf <= 0.55", shape,
                               _ratio(u.get("peak_allocated_gib"), h.get("peak_allocated_gib")) if u and h else None,
                               SPEED_TARGETS["memory_ratio"], False, "first point", why))
        best = max((r for r in ok if r.get("mfu") is not None), key=lambda r: r["mfu"], default=None)
        out.append(_target("MFU (6·N·real tokens/s ÷ measured peak) >= 40%", shape,
                           best["mfu"] if best else None, SPEED_TARGETS["mfu"], True,
                           f"{best['backend']} {best['batch_size']}x{best['grad_accum']}" if best else "best row",
                           "no ok row"))
    return out


def write_speed(results: dict[str, Any], out: Path) -> None:
    """speed.json (the source of truth), then speed.md rendered from it; both atomically."""
    results["ratios"] = speed_ratios(results["rows"])
    results["targets"] = speed_targets(results["rows"], list(results.get("shapes", {})))
    results["scaling"] = scaling_rows(results["rows"])
    atomic_write_json(out / "speed.json", results)
    atomic_write_text(out / "speed.md", render_speed_md(results))


def _f(x: Any, fmt: str = ",.0f", none: str = "–") -> str:
    return none if x is None else format(x, fmt)


def header_lines(results: dict[str, Any], title: str) -> list[str]:
    """Card, versions and calibration lines shared by both reports."""
    env, card, cal = results.get("environment") or {}, results.get("card") or {}, results.get("calibration") or {}
    versions = " · ".join(f"{k} {env.get(k) or 'absent'}" for k in
                          ("torch", "transformers", "trl", "peft", "unsloth", "unsloth-zoo", "bitsandbytes", "accelerate"))
    return [
        f"# {title}", "",
        f"- card: **{card.get('name', 'unknown')}** ({_f(card.get('memory_gib'), '.1f')} GiB, compute capability "
        f"{card.get('capability', '?')}); bf16 matmul peak measured **{_f(cal.get('peak_tflops'), '.0f')} TFLOP/s** "
        f"({cal.get('method', 'not measured')}; datasheet dense bf16 {_f(cal.get('datasheet_tflops'), '.0f')})",
        f"- versions: python {env.get('python')} · CUDA {env.get('cuda')} · {versions}",
        f"- tunebench commit: `{env.get('tunebench_commit')}` · created {results.get('created')} · "
        f"command `{results.get('command')}`",
    ]


def render_speed_md(results: dict[str, Any]) -> str:
    """Markdown view of speed.json (the JSON is the source of truth)."""
    st = results.get("settings", {})
    lora = st.get("lora", {})
    lines = header_lines(results, "Training speed: the suite's train() per backend")
    lines += [
        f"- settings: {st.get('quantization')}; LoRA r={lora.get('r')} alpha={lora.get('alpha')} on "
        f"{', '.join(lora.get('targets', []))}; max length {st.get('max_length')}; {st.get('optimizer')}; "
        f"gradient checkpointing {st.get('gradient_checkpointing')}; warm-up {st.get('warmup_steps')} steps, then "
        f"{st.get('measured_steps_first_point')} measured steps at the first point and "
        f"{st.get('measured_steps_other_points')} at the others; first point "
        + ("= the seed's settings (2 × 4, 2048, r16)" if st.get("first_point_is_seed_settings") else
           "differs from the seed's settings (2 × 4, 2048, r16)"),
    ]
    for name, d in (results.get("data") or {}).items():
        t = d.get("tokens", {})
        lines.append(f"- data ({name}): {d.get('conversations')} conversations of `{d.get('source')}` through "
                     f"train/data.py ({d.get('template')} template); tokens per conversation p50 {t.get('p50')}, "
                     f"p90 {t.get('p90')}, max {t.get('max')}; {d.get('truncated')} truncated at {d.get('max_length')}")
    for b, note in st.get("backends", {}).items():
        lines.append(f"- `{b}`: {note}")
    lines += ["", "> **Random weights, stand-in tokenizer.** Each shape is the published Llama 3.2 architecture with "
              "random bf16 weights (speed does not depend on their values; losses do, so ignore them). Token "
              "counts come from a stand-in tokenizer (SmolLM2's vocabulary plus the Llama 3 special tokens), "
              "which splits text into more tokens than Llama 3's would. **MFU** = 6 · N · real tokens/s ÷ the "
              "measured matmul peak, N = all parameters with tied embeddings counted once; attention FLOPs and "
              "gradient-checkpointing recomputation are not counted. **Peak memory** = "
              "`torch.cuda.max_memory_allocated` over `trainer.train()` (the suite's trainer resets it after the "
              "model load): 4-bit weights, LoRA, optimizer states, activations and loss buffers; *steady* = the "
              "measured steps only; *reserved* = what the caching allocator held. Real tokens exclude padding; "
              "every row at one point draws the same batches (same seed, same data).", ""]
    rows = results.get("rows", [])
    for name, info in (results.get("shapes") or {}).items():
        lines += [f"## {name}: {info.get('params', 0):,} parameters, {info.get('weights')}", "",
                  "| backend | batch × accum | real tok/s | tok/s incl. padding | step s median (p10–p90) | "
                  "peak alloc GiB (steady) | peak reserved GiB | MFU | status |",
                  "|---|---|---:|---:|---|---:|---:|---:|---|"]
        for r in (r for r in rows if r["shape"] == name):
            if r.get("status") != "ok":
                lines.append(f"| {r['backend']} | {r['batch_size']} × {r['grad_accum']} | | | | | | | "
                             f"{r.get('status')}: {str(r.get('error', ''))[:160].replace('|', '/')} |")
                continue
            lines.append(
                f"| {r['backend']} | {r['batch_size']} × {r['grad_accum']} | {_f(r['real_tokens_per_s'])} | "
                f"{_f(r['positions_per_s'])} | {_f(r['step_s_median'], '.3f')} ({_f(r['step_s_p10'], '.3f')}–"
                f"{_f(r['step_s_p90'], '.3f')}) | {_f(r.get('peak_allocated_gib'), '.2f')} "
                f"({_f(r.get('steady_peak_allocated_gib'), '.2f')}) | {_f(r.get('peak_reserved_gib'), '.2f')} | "
                f"{_f(r.get('mfu'), '.1%')} | ok ({r['measured_steps']} steps, {r['real_tokens']:,} real tokens"
                + ("" if r.get("mask_agreement") in (None, 1.0) else
                   f"; Unsloth's mask = shared mask on {r['mask_agreement']:.0%} of conversations") + ") |")
        lines.append("")
    ratios = results.get("ratios") or []
    if ratios:
        lines += ["## Ratios against hf (same invocation)", "",
                  "| shape | batch × accum | backend | real tok/s × | peak alloc × | peak reserved × | same batches |",
                  "|---|---|---|---:|---:|---:|---|"]
        for q in ratios:
            lines.append(f"| {q['shape']} | {q['batch_size']} × {q['grad_accum']} | {q['backend']} | "
                         f"{_f(q['real_tokens_per_s_ratio'], '.2f')} | {_f(q['peak_allocated_ratio'], '.2f')} | "
                         f"{_f(q['peak_reserved_ratio'], '.2f')} | {'yes' if q['same_tokens'] else 'no'} |")
        lines.append("")
    lines += render_scaling(results.get("scaling") or [])
    lines += target_table(results.get("targets") or [])
    return "\n".join(lines) + "\n"


def target_table(targets: list[dict[str, Any]]) -> list[str]:
    """The targets section: value, threshold, met, margin."""
    lines = ["## Targets", "", "| target | shape | where | value | met | margin |", "|---|---|---|---:|---|---:|"]
    for t in targets:
        pct = abs(t["threshold"]) < 1 and "MFU" in t["target"]
        val = "–" if t["value"] is None else (f"{t['value']:.1%}" if pct else f"{t['value']:,.2f}")
        met = {True: "**yes**", False: "**no**", None: f"not measured ({t['note']})"}[t["met"]]
        margin = "–" if t["margin"] is None else (
            f"{t['margin']:+.1%}" if pct else f"{t['margin']:+,.2f}") + (
            "" if t["margin_relative"] is None else f" ({t['margin_relative']:+.0%} of the threshold)")
        lines.append(f"| {t['target']} | {t['shape']} | {t['where']} | {val} | {met} | {margin} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
