"""`tunebench train`: TRL's SFTTrainer around a backend, with atomic checkpoints, Ctrl-C that saves a
resumable checkpoint, a NaN guard, a progress bar with tokens/s, and an adapter that carries its manifest.

A recipe read top to bottom: ``train`` calls ``prepare_folder``, ``resolve_backend``, ``prepare_data``,
``build_trainer`` (the subclass in ``sft_trainer``, the callbacks in ``callbacks``: both imported when training
starts), ``run_training``, ``stopped_early``, then ``build_manifest`` and ``save_adapter``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core import dist, output, tracking
from tunebench.core.config_build import to_dict
from tunebench.core.config_resolve import with_backend
from tunebench.core.config_schema import RunConfig
from tunebench.core.errors import RunExistsError, TrainingError
from tunebench.core.io import atomic_dir, atomic_write_json, read_json_object
from tunebench.data import conversations as data_mod
from tunebench.models.loading import load_tokenizer, manifest_of, resolve_model
from tunebench.train import manifest as manifest_mod
from tunebench.train.backends import (
    BACKENDS,
    BackendError,
    compiled_blocks,
    compute_dtype,
    get_backend,
    import_unsloth,
)
from tunebench.train.checkpoints import checkpoints, latest_checkpoint, require_resumable
from tunebench.train.model_card import write_adapter_metadata
from tunebench.train.run_state import RunState, _count_tokens_hook
from tunebench.train.sft_args import sft_config

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path | None
    manifest: dict[str, Any] | None
    interrupted: bool = False
    checkpoint: Path | None = None


def make_callbacks(state: RunState, total_steps: int, log_path: Path | None = None) -> list[Any]:
    """Signal handling, NaN guard, progress bar and the log file, as transformers TrainerCallbacks
    (``train.callbacks``, imported here because it imports transformers).

    The bar (loss, validation loss, tokens/s as its postfix) is the only training output on the terminal; the
    trainer's log dicts go to ``log_path`` (RUN/train.log, one JSON object per line) instead of transformers'
    PrinterCallback, which ``train`` removes."""
    from tunebench.train.callbacks import LogFile, NaNGuard, Progress, SignalCallback  # heavy: transformers

    return [SignalCallback(state), NaNGuard(state), Progress(state, total_steps), LogFile(log_path)]


# ----------------------------------------------------------------------------- the stage


def resolve_backend(train_cfg: Any, resolution: dict[str, str]) -> tuple[str, str]:
    """The resolved backend and why; import Unsloth now (before transformers) when it is the choice.

    The config resolved ``auto`` already (core.config_resolve.resolve); only a failed Unsloth import, a runtime fact,
    changes the choice here: to ``hf`` when the user asked for ``auto``, to an error when they asked for Unsloth.
    """
    name = train_cfg.backend
    if name not in BACKENDS:
        raise BackendError(
            f"train.backend {name!r} is unknown or unresolved (known: {', '.join(BACKENDS)}); "
            "load the config with tunebench.core.config.load_config"
        )
    asked_auto = "train.backend" in resolution
    reason = resolution.get("train.backend", "requested in the config")
    if name == "unsloth":
        err = import_unsloth()
        if err is not None:
            if not asked_auto:
                raise BackendError(f"train.backend=unsloth but unsloth does not import here: {err}")
            name, reason = "hf", f"unsloth is installed but does not import here ({err})"
    log.info("backend: %s (%s)", name, reason)
    return name, reason


def check_resume_world_size(checkpoint: Path | None) -> None:
    """A checkpoint resumes only on the number of processes that wrote it (data order and batch depend on it).

    Raises:
        TrainingError: the checkpoint was written by a job of another size, with the command that fits it.
    """
    if checkpoint is None:
        return
    state_file = checkpoint / "tunebench_state.json"
    saved = int(read_json_object(state_file).get("world_size", 1)) if state_file.exists() else 1
    if saved != dist.world_size():
        launch = (
            f"torchrun --nproc_per_node {saved} -m tunebench train ... --resume"
            if saved > 1
            else "tunebench train ... --resume (one process, no launcher)"
        )
        raise TrainingError(
            f"{checkpoint} was written by a job of {saved} process(es) and this one has {dist.world_size()}: "
            f"the data order and effective batch would change mid-run. Resume with {launch}, or start over "
            "with --overwrite"
        )


def prepare_folder(run_dir: Path, resume: bool, overwrite: bool) -> TrainResult | None:
    """Apply the folder policy: refuse to replace output silently, clear it on ``overwrite``, check a resume.

    Returns:
        The finished result when ``resume`` finds the adapter already trained, else None (train).

    Raises:
        RunExistsError: the folder has training output and neither resume nor overwrite was asked.
        TrainingError: the checkpoint to resume was written by a job of another size.
    """
    adapter_dir, ckpt_dir = run_dir / "adapter", run_dir / "checkpoints"
    has_output = adapter_dir.exists() or bool(checkpoints(ckpt_dir))  # a broken one too: not silently replaced
    if has_output and not (resume or overwrite):
        raise RunExistsError(
            f"{run_dir} already holds training output; pass --resume to continue it or --overwrite to start over"
        )
    if overwrite:
        shutil.rmtree(adapter_dir, ignore_errors=True)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if resume and adapter_dir.exists():
        log.info("%s is already trained; nothing to resume", adapter_dir)
        return TrainResult(run_dir, adapter_dir, read_json_object(adapter_dir / "manifest.json"))
    if resume:
        require_resumable(ckpt_dir)
        check_resume_world_size(latest_checkpoint(ckpt_dir))
    return None


def prepare_data(cfg: RunConfig, source: Any, run_dir: Path, strict: bool) -> Any:
    """Encode the conversations with the model's tokenizer and check them against the folder's data report.

    Split sizes were checked when the data step wrote the folder; a fresh folder is checked here.

    Raises:
        TrainingError: ``run_dir/data`` was prepared from other data or another template.
        DataError: (``strict``) a split too small to decide anything (data.splits).
    """
    tok, tname = load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)
    report_path = run_dir / "data" / "data_report.json"
    write = dist.is_main() and not report_path.exists()
    prepared = data_mod.prepare(
        tok,
        tname,
        cfg.data,
        run_dir / "data" if write else None,
        eval_every=cfg.train.eval_every,
        strict=strict,
        check_sizes=not report_path.exists(),
    )
    dist.barrier()
    if report_path.exists() and read_json_object(report_path).get("fingerprint") != prepared.fingerprint:
        raise TrainingError(
            f"{run_dir}/data was prepared from other data or another template than this config gives; "
            "re-run `tunebench data` (or --overwrite)"
        )
    return prepared


@dataclass
class Assembled:
    """What ``build_trainer`` put together: the trainer and what the manifest records of it."""

    trainer: Any
    tokenizer: Any
    has_val: bool
    found: dict[str, Any]  # what the backend found finishing the trainer (e.g. mask_agreement_with_shared)
    trainable: int
    total: int


def build_trainer(
    cfg: RunConfig,
    backend_name: str,
    source: Any,
    prepared: Any,
    run_dir: Path,
    state: RunState,
    extra_callbacks: list[Any],
) -> Assembled:
    """Load the model through the backend and build the trainer around it, with tunebench's callbacks."""
    import torch  # heavy: torch, imported when needed
    from transformers import PrinterCallback  # heavy: transformers, after Unsloth (resolve_backend)

    from tunebench.train.sft_trainer import TunebenchTrainer  # heavy: transformers and trl

    backend = get_backend(backend_name)
    torch.manual_seed(cfg.train.seed)
    model, tok = backend.load(source, cfg.model, cfg.lora, cfg.train, cfg.data.max_length, prepared.template.name)
    train_ds, val_ds = backend.datasets(prepared, tok)
    args = sft_config(cfg, run_dir / "checkpoints", backend_name, val_ds is not None, compute_dtype(cfg.model))
    steps_per_epoch = math.ceil(len(train_ds) / (cfg.train.batch_size * cfg.train.grad_accum))
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(steps_per_epoch * cfg.train.epochs)
    with tracking.tracker_environment(cfg.train.report_to, run_dir):  # trackers read it when the trainer is built
        trainer = TunebenchTrainer(
            model=model,
            processing_class=tok,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            args=args,
            callbacks=make_callbacks(state, total_steps, run_dir / "train.log") + extra_callbacks,
            run_state=state,
            backend_name=backend_name,
        )
    trainer.remove_callback(PrinterCallback)  # its {'loss': ...} lines go to train.log (LogFile), not the terminal
    trainer, found = backend.finish_trainer(trainer, prepared)
    trainable, total = manifest_mod.count_parameters(trainer.model)
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return Assembled(trainer, tok, val_ds is not None, found, trainable, total)


def run_training(cfg: RunConfig, trainer: Any, backend_name: str, run_dir: Path, state: RunState, resume: bool) -> None:
    """Run ``trainer.train()`` from the latest checkpoint (``resume``) or from the start, counting real tokens."""
    import torch  # heavy: torch, imported when needed

    resume_from = latest_checkpoint(run_dir / "checkpoints") if resume else None
    if resume_from is not None:
        prior = (
            read_json_object(resume_from / "tunebench_state.json")
            if (resume_from / "tunebench_state.json").exists()
            else {}
        )
        state.prior_tokens, state.prior_seconds = prior.get("tokens_seen", 0), prior.get("seconds", 0.0)
        log.info("resuming from %s", resume_from)
    if resume_from is None and dist.is_main():  # a fresh start: the log of an earlier attempt is not this run's
        (run_dir / "train.log").unlink(missing_ok=True)
    handle = _count_tokens_hook(trainer.model, state)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    state.started = time.perf_counter()
    try:  # mlflow and wandb read theirs when training begins
        with get_backend(backend_name).training(cfg.train), tracking.tracker_environment(cfg.train.report_to, run_dir):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        handle.remove()


def stopped_early(trainer: Any, state: RunState, run_dir: Path) -> TrainResult | None:
    """The result of a run a signal stopped (with its checkpoint), or None when training ran to its end.

    Raises:
        TrainingError: the loss became non-finite (the last good checkpoint is kept).
    """
    ckpt_dir = run_dir / "checkpoints"
    if state.bad_loss is not None:
        step, loss = state.bad_loss
        last = latest_checkpoint(ckpt_dir)
        raise TrainingError(
            f"loss became {loss} at step {step}; training stopped and nothing was saved after it. "
            + (
                f"Last good checkpoint: {last} (lower train.lr and run with --resume)."
                if last
                else "No checkpoint was saved before it (set train.save_every); lower train.lr and start over."
            )
        )
    if state.signal is not None:
        ckpt = latest_checkpoint(ckpt_dir)
        log.warning(
            "interrupted by %s at step %d; checkpoint %s; continue with --resume",
            state.signal,
            trainer.state.global_step,
            ckpt,
        )
        return TrainResult(run_dir, None, None, interrupted=True, checkpoint=ckpt)
    return None


def build_manifest(
    cfg: RunConfig,
    built: Assembled,
    backend_name: str,
    reason: str,
    source: Any,
    prepared: Any,
    tokens_seen: int,
    seconds: float,
) -> dict[str, Any]:
    """The adapter's manifest: config, model, template, backend, data, counts and the log history."""
    trainer = built.trainer
    history = trainer.state.log_history
    return manifest_mod.build(
        cfg=to_dict(cfg),
        model=manifest_of(source),
        template=prepared.template.to_dict(),
        backend={
            "name": backend_name,
            "reason": reason,
            **built.found,
            # what the batches were, whatever was asked (Unsloth's CPU fallback pads regardless)
            "padding_free_batches": bool(getattr(trainer.data_collator, "padding_free", False)),
            "compiled_blocks": compiled_blocks(trainer.model),
        },
        data={
            "fingerprint": prepared.fingerprint,
            "splits": {s: len(v) for s, v in prepared.encoded.items()},
            "split_fingerprints": {s: d["fingerprint"] for s, d in prepared.report["splits"].items()},
        },
        trainable=built.trainable,
        total=built.total,
        steps=trainer.state.global_step,
        tokens_seen=tokens_seen,
        wall_time_s=seconds,
        log_history=history,
        extra={
            # eval_on_start's
            "base_eval_loss": next((h["eval_loss"] for h in history if h.get("step") == 0 and "eval_loss" in h), None),
            "world_size": dist.world_size(),
            "effective_batch_size": cfg.train.batch_size * cfg.train.grad_accum * dist.world_size(),
            # what the trainer trained through: DistributedDataParallel when the ranks kept one model
            "model_wrapper": type(getattr(trainer, "model_wrapped", trainer.model)).__name__,
        },
    )


def save_adapter(built: Assembled, man: dict[str, Any], run_dir: Path) -> Path:
    """Write the adapter, tokenizer, manifest and model card atomically into ``run_dir/adapter``, and the loss plot."""
    adapter_dir = run_dir / "adapter"
    with atomic_dir(adapter_dir) as tmp:
        built.trainer.model.save_pretrained(tmp, safe_serialization=True)
        built.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "manifest.json", man)
        write_adapter_metadata(tmp, man)  # the base by its hub id / packaged name, and the model card
    manifest_mod.plot_loss_curve(man, run_dir / "loss_curve.png")
    log.info("adapter written to %s (%.0f real tokens/s)", adapter_dir, man["tokens_per_s"] or 0)
    return adapter_dir


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    prepared: Any = None,
    extra_callbacks: list[Any] | None = None,
    strict: bool = False,
) -> TrainResult:
    """Train a LoRA adapter into ``run_dir/adapter`` (with manifest.json) from ``cfg``.

    The recipe: prepare the folder, resolve the backend, prepare and check the data, build the trainer, run,
    then save the adapter and its manifest.

    Raises:
        RunExistsError: the folder has training output and neither resume nor overwrite was asked.
        DataError: (``strict``) a split too small to decide anything (data.splits).
        TrainingError: a non-finite loss (the last good checkpoint is kept).
        BackendError, ModelError, DataError: with what to do.
    """
    run_dir = Path(run_dir)
    done = prepare_folder(run_dir, resume, overwrite)
    if done is not None:
        return done
    backend_name, reason = resolve_backend(cfg.train, cfg.resolution)  # before transformers is imported
    cfg = with_backend(cfg, backend_name, reason)  # Unsloth did not import under auto: the config of hf
    source = resolve_model(cfg.model.ref, cfg.model.revision)
    if prepared is None:
        prepared = prepare_data(cfg, source, run_dir, strict)
    state = RunState()
    with output.prints_to_log(backend_name):  # the backend's banners and notices (Unsloth prints them)
        built = build_trainer(cfg, backend_name, source, prepared, run_dir, state, list(extra_callbacks or []))
        run_training(cfg, built.trainer, backend_name, run_dir, state, resume)
    seconds = state.seconds
    stopped = stopped_early(built.trainer, state, run_dir)
    if stopped is not None:
        return stopped

    trainer = built.trainer
    evaluated = any(h.get("step") == trainer.state.global_step and "eval_loss" in h for h in trainer.state.log_history)
    if built.has_val and not evaluated:
        trainer.evaluate()  # final response-only validation loss, in the log history
    tokens_seen = sum(dist.gather(state.tokens)) + state.prior_tokens  # the whole job's real tokens
    if not dist.is_main():
        dist.barrier()  # the main process writes the adapter, manifest and plot
        return TrainResult(run_dir, run_dir / "adapter", None)
    man = build_manifest(cfg, built, backend_name, reason, source, prepared, tokens_seen, seconds)
    adapter_dir = save_adapter(built, man, run_dir)
    dist.barrier()
    return TrainResult(run_dir, adapter_dir, man)
