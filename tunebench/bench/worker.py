"""Benchmark worker processes: ``python -m tunebench.bench.speed worker SPEC`` runs one job (setup, one training
point, a find-best sweep, or an evaluation shape) and writes its result JSON, errors included.

Each job runs in its own process so that Unsloth, imported first there, never patches another backend.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import shutil
import time
import traceback
from typing import Any, NamedTuple

from tunebench.bench.evalworker import run_eval_shape
from tunebench.bench.metrics import mfu, summarize_steps
from tunebench.bench.prepared import load_prepared
from tunebench.bench.scaling import combine_rank_marks
from tunebench.bench.shapes import run_setup
from tunebench.bench.specs import EvalSpec, SetupSpec, SweepSpec, TrainSpec
from tunebench.bench.timer import make_step_timer
from tunebench.core import dist
from tunebench.core.config_resolve import resolve
from tunebench.core.config_schema import DataConfig, LoraConfig, ModelConfig, RunConfig, TrainConfig
from tunebench.core.io import atomic_write_json, read_json
from tunebench.train.backends import import_unsloth
from tunebench.train.trainer import train

log = logging.getLogger("tunebench.speed")

# Batch layouts: name -> (train.padding_free, train.packing)
LAYOUTS: dict[str, tuple[bool, bool]] = {"padded": (False, False), "padfree": (True, False), "packed": (False, True)}


class Variant(NamedTuple):
    """A benchmarked training setup: the train.* settings it runs with and what it measures."""

    backend: str
    padding_free: bool | str
    packing: bool
    what: str
    compile_blocks: bool | str = "auto"


BACKENDS: dict[str, Variant] = {
    "unsloth": Variant(
        "unsloth",
        "auto",
        False,
        "Unsloth FastLanguageModel + its SFTTrainer patches, as the suite runs it by default: "
        "train.padding_free=auto (padded batches) and train.compile_blocks=auto (compiled decoder "
        "blocks from 300 optimizer steps on, so eager blocks at a benchmark's few dozen)",
    ),
    "unsloth-padded": Variant(
        "unsloth",
        False,
        False,
        "unsloth backend with train.padding_free=false and train.compile_blocks=true: padded "
        "batches, each decoder block compiled (Unsloth's per-block torch.compile, its default "
        "for padded batches on CUDA)",
        compile_blocks=True,
    ),
    "unsloth-padded-eager": Variant(
        "unsloth",
        False,
        False,
        "unsloth backend with train.padding_free=false and train.compile_blocks=false: "
        "padded batches on Unsloth's eager decoder blocks",
        compile_blocks=False,
    ),
    "unsloth-padfree": Variant(
        "unsloth",
        True,
        False,
        "unsloth backend with train.padding_free=true: Unsloth's varlen padding-free batches "
        "(no padding, no block compile; Unsloth's own default)",
    ),
    "unsloth-packed": Variant(
        "unsloth",
        False,
        True,
        "unsloth backend with train.packing=true: TRL best-fit-decreasing packing into "
        "max_length rows, Unsloth's packed varlen attention (no cross-conversation attention), "
        "labels from the shared assistant mask",
    ),
    "hf": Variant("hf", False, False, "transformers + peft + bitsandbytes, SDPA attention, right-padded batches"),
    "hf-padfree": Variant(
        "hf",
        True,
        False,
        "hf backend with train.padding_free=true: one flattened row per micro-batch; transformers 5 "
        "builds a block-causal SDPA mask from position_ids (masking_utils."
        "find_packed_sequence_indices)",
    ),
    "hf-packed": Variant(
        "hf",
        False,
        True,
        "hf backend with train.packing=true (TRL best-fit packing into max_length rows, position_ids, "
        "the same block-causal SDPA mask)",
    ),
}


def backend_name(backend: str, layout: str) -> str:
    """The BACKENDS entry of a backend family in a layout: ("unsloth", "packed") -> "unsloth-packed",
    ("unsloth", "padded") -> "unsloth-padded" (plain "unsloth" is its default layout), ("hf", "padded") -> "hf"."""
    name = f"{backend}-{layout}"
    return name if name in BACKENDS else backend


def run_train_point(spec: TrainSpec | dict[str, Any]) -> dict[str, Any]:
    """Worker: one backend at one (batch, accumulation) point through the suite's ``train.trainer.train``."""

    import torch  # heavy: torch, imported when needed

    spec = spec if isinstance(spec, TrainSpec) else TrainSpec.from_dict(spec)
    variant = BACKENDS[spec.backend]
    cuda = torch.cuda.is_available()
    cfg = RunConfig(
        name=f"speed-{spec.shape}-{spec.backend}-{spec.batch_size}x{spec.grad_accum}",
        model=ModelConfig(
            ref=spec.model_dir,
            chat_template=spec.chat_template,
            load_in_4bit="on" if cuda and spec.load_in_4bit else "off",
        ),
        data=DataConfig(source=spec.data_source, max_length=spec.max_length, max_validation=0, max_test=0),
        lora=LoraConfig(r=spec.r, alpha=spec.alpha, target_modules=list(spec.targets)),
        train=TrainConfig(
            backend=variant.backend,
            batch_size=spec.batch_size,
            grad_accum=spec.grad_accum,
            max_steps=spec.warmup + spec.steps + spec.profile_steps,
            save_every=0,
            eval_every=0,
            padding_free=variant.padding_free,
            packing=variant.packing,
            compile_blocks=variant.compile_blocks,
            seed=3407,
            gradient_checkpointing=spec.gradient_checkpointing,
        ),
    )
    cfg, _ = resolve(cfg)  # dtype and optimizer for this machine, as load_config resolves a preset
    prepared = load_prepared(spec.prepared)
    timer = make_step_timer(spec.warmup, spec.warmup + spec.steps, spec.profile_steps)
    t0 = time.perf_counter()
    result = train(cfg, spec.run_dir, overwrite=True, prepared=prepared, extra_callbacks=[timer])
    wall = time.perf_counter() - t0
    man = result.manifest or {}
    marks = timer.marks
    if dist.world_size() > 1:
        marks = combine_rank_marks(dist.gather(timer.marks))
    row = summarize_steps(marks, spec.warmup)
    row["world_size"] = dist.world_size()
    row.update(timer.memory_summary())
    row.update(timer.host_summary())
    if timer.window.summary:
        row["trace"] = timer.window.summary
    per_gpu = row["real_tokens_per_s"] / dist.world_size()  # MFU is per card: N cards have N times the peak
    row["mfu"] = mfu(spec.params, per_gpu, spec.peak_tflops)
    row["mfu_datasheet"] = mfu(spec.params, per_gpu, spec.datasheet_tflops)
    row.update(
        {
            "backend_used": (man.get("backend") or {}).get("name"),
            "mask_agreement": (man.get("backend") or {}).get("mask_agreement_with_shared"),
            "compiled_blocks": (man.get("backend") or {}).get("compiled_blocks"),
            "trainable_params": man.get("trainable_params"),
            "steps_run": man.get("steps"),
            "first_loss": (man.get("loss_history") or [{}])[0].get("loss"),
            "final_loss": man.get("final_train_loss"),
            "train_wall_s": round(wall, 1),
            "load_in_4bit": cfg.model.load_in_4bit == "on",
            "gradient_checkpointing": cfg.train.gradient_checkpointing,
            "optimizer": "adamw_8bit" if cuda else "adamw_torch",
        }
    )
    shutil.rmtree(spec.run_dir, ignore_errors=True)  # the adapter of a random model is worth nothing
    return row


def run_sweep(spec: SweepSpec | dict[str, Any]) -> dict[str, Any]:
    """Worker for ``--find-best``: many (layout, micro-batch) candidates of one backend in this one process.

    One process pays the backend's import (Unsloth's is slow) once. The card is capped at the memory limit
    (``torch.cuda.set_per_process_memory_fraction``), so a candidate over it fails with an out-of-memory
    error instead of borrowing memory the user does not have; then the larger micro-batches of the same
    layout are skipped. Candidates that would start after ``spec.deadline`` (wall clock) are skipped.
    """

    import torch  # heavy: torch, imported when needed

    spec = spec if isinstance(spec, SweepSpec) else SweepSpec.from_dict(spec)

    limit = spec.memory_limit_gib
    if limit and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
    rows: list[dict[str, Any]] = []
    stopped: set[tuple[str, bool]] = set()
    for cand in spec.candidates:
        group = (cand["layout"], cand.get("gradient_checkpointing", True))
        row = {k: cand[k] for k in ("layout", "batch_size", "grad_accum")}
        row.update(backend=backend_name(spec.family, cand["layout"]), gradient_checkpointing=group[1])
        if group in stopped:
            rows.append(dict(row, status="skipped", error="a smaller micro-batch of this layout was over the limit"))
            continue
        if time.time() > spec.deadline - spec.min_seconds:
            rows.append(dict(row, status="skipped", error="the --budget-s ran out"))
            continue
        point = dataclasses.replace(
            spec,
            backend=row["backend"],
            batch_size=cand["batch_size"],
            grad_accum=cand["grad_accum"],
            gradient_checkpointing=group[1],
            run_dir=f"{spec.run_dir}-{cand['layout']}-{cand['batch_size']}-gc{int(group[1])}",
        )
        log.info(
            "find-best: %s %dx%d, gradient checkpointing %s",
            row["backend"],
            cand["batch_size"],
            cand["grad_accum"],
            group[1],
        )
        try:
            row.update(run_train_point(point), status="ok")
        except torch.OutOfMemoryError as e:
            stopped.add(group)
            row.update(status="over_limit", error=f"out of memory under the {limit} GiB limit: {str(e)[:200]}")
        except Exception as e:  # recorded; the sweep goes on with the next layout
            tb = traceback.format_exc().splitlines()
            row.update(status="error", error=f"{type(e).__name__}: {str(e)[:1000]}", traceback=tb[-15:])
            stopped.add(group)
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        log.info(
            "find-best: %s %dx%d -> %s %s",
            row["backend"],
            cand["batch_size"],
            cand["grad_accum"],
            row["status"],
            row.get("real_tokens_per_s", row.get("error", "")),
        )
        rows.append(row)
        if spec.result:  # what is measured so far survives a timeout that ends this process
            atomic_write_json(spec.result, {"status": "ok", "rows": rows, "partial": True})
    return {"rows": rows}


WORKERS: dict[str, tuple[Any, Any]] = {
    "setup": (SetupSpec, run_setup),
    "train": (TrainSpec, run_train_point),
    "sweep": (SweepSpec, run_sweep),
    "eval": (EvalSpec, run_eval_shape),
}
"""Worker kind -> (its spec class, the function that runs it)."""


def _import_unsloth_first(spec: Any) -> None:
    """Import Unsloth before transformers/trl/peft when the job trains with it: Unsloth patches them on import."""
    if isinstance(spec, SweepSpec):
        unsloth = spec.family == "unsloth"
    else:
        unsloth = isinstance(spec, TrainSpec) and BACKENDS[spec.backend].backend == "unsloth"
    if unsloth:
        err = import_unsloth()
        if err:
            log.error("unsloth does not import: %s", err)


def worker_main(spec_arg: str) -> int:
    """``python -m tunebench.bench.speed worker SPEC``: run one job, write its result JSON (errors included)."""
    data = json.loads(spec_arg) if spec_arg.lstrip().startswith("{") else read_json(spec_arg)
    t0 = time.perf_counter()
    try:
        if data["kind"] not in WORKERS:
            raise ValueError(f"unknown worker kind {data['kind']!r}")
        spec_class, run = WORKERS[data["kind"]]
        spec = spec_class.from_dict(data)
        _import_unsloth_first(spec)
        result = run(spec)
        result["status"] = "ok"
    except BaseException as e:  # recorded in the results; the parent carries on with the next job
        tb = traceback.format_exc().splitlines()
        result = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:2000]}", "traceback": tb[-25:]}
        log.error("worker %s failed: %s", data.get("label"), result["error"])
    result["process_wall_s"] = round(time.perf_counter() - t0, 1)
    if int(os.environ.get("RANK", "0")) != 0:  # a data-parallel worker: rank 0 writes the job's row
        return 0 if result["status"] == "ok" else 1
    atomic_write_json(data["result"], result)
    return 0 if result["status"] == "ok" else 1
