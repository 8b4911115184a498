"""`tunebench train`: TRL's SFTTrainer around a backend, with atomic checkpoints, Ctrl-C that saves a
resumable checkpoint, a NaN guard, a progress bar with tokens/s, and an adapter that carries its manifest.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core import dist, tracking
from tunebench.core.config import RunConfig, to_dict, with_backend
from tunebench.core.errors import RunExistsError, TrainingError
from tunebench.core.io import atomic_dir, atomic_write_json, disk_full, is_disk_full, read_json
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

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path | None
    manifest: dict[str, Any] | None
    interrupted: bool = False
    checkpoint: Path | None = None


# ----------------------------------------------------------------------------- callbacks


class TokenCounter:
    """Real tokens of the training forward passes (see ``_count_tokens_hook``)."""

    def __init__(self) -> None:
        self._tokens = 0
        self._on_device: Any = None  # counts not yet read back: adding them on the GPU keeps the host running ahead

    def add_tokens(self, n: Any) -> None:
        """Add a count: an int, or a 0-d tensor on the device (read back when ``tokens`` is next read)."""
        if isinstance(n, int):
            self._tokens += n
        else:
            self._on_device = n if self._on_device is None else self._on_device + n

    @property
    def tokens(self) -> int:
        """Real tokens counted so far (reading it waits for the device once)."""
        if self._on_device is not None:
            self._tokens += int(self._on_device)
            self._on_device = None
        return self._tokens


class _State(TokenCounter):
    """Counters shared between the trainer subclass and the callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_tokens = 0
        self.prior_seconds = 0.0
        self.started = time.perf_counter()
        self.signal: str | None = None
        self.bad_loss: tuple[int, float] | None = None

    @property
    def seconds(self) -> float:
        return self.prior_seconds + time.perf_counter() - self.started


def make_callbacks(state: _State, total_steps: int, log_path: Path | None = None) -> list[Any]:
    """Signal handling, NaN guard, progress bar and the log file, as transformers TrainerCallbacks
    (``train.callbacks``, imported here because it imports transformers).

    The bar (loss, validation loss, tokens/s as its postfix) is the only training output on the terminal; the
    trainer's log dicts go to ``log_path`` (RUN/train.log, one JSON object per line) instead of transformers'
    PrinterCallback, which ``train`` removes."""
    from tunebench.train.callbacks import LogFile, NaNGuard, Progress, SignalCallback  # heavy: transformers

    return [SignalCallback(state), NaNGuard(state), Progress(state, total_steps), LogFile(log_path)]


def _trainer_class(state: _State, backend: str):
    """SFTTrainer (Unsloth's patched one when Unsloth was imported first) with atomic checkpoints."""
    from transformers import Trainer  # heavy: transformers, imported when needed
    from trl import SFTTrainer  # heavy: trl, imported when needed

    class TunebenchTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if backend == "hf" and self.args.device.type == "cpu":
                # TRL 1.15 computes the SFT loss through a fused LM head whose Triton kernel has no CPU driver;
                # transformers' own loss is the same token-mean NLL over the labels (and honours
                # num_items_in_batch under gradient accumulation).
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is not None and self.args.world_size > 1 and self.args.device.type == "cpu":
                # transformers maps the optimizer state to args.device ("cpu:N" under multi-CPU DDP), which
                # torch.load cannot restore to; on CPU the plain "cpu" location is the same memory
                import torch  # heavy: torch, imported when needed

                self.optimizer.load_state_dict(
                    torch.load(os.path.join(checkpoint, "optimizer.pt"), map_location="cpu", weights_only=True)
                )
                self.lr_scheduler.load_state_dict(
                    torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True)
                )
                return
            super()._load_optimizer_and_scheduler(checkpoint)

        def _save_checkpoint(self, model, trial):
            # Build the checkpoint in a staging folder, then rename: a crash mid-save leaves no
            # checkpoint-N that looks complete.
            real = self.args.output_dir
            staging = os.path.join(real, ".staging")
            if dist.is_main():
                shutil.rmtree(staging, ignore_errors=True)
                os.makedirs(staging)
            dist.barrier()  # every rank writes its RNG state into the same staging folder
            self.args.output_dir = staging
            try:
                super()._save_checkpoint(model, trial)
            except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
                needed = _tree_size(latest_checkpoint(Path(real)))  # about what this one needs
                if not is_disk_full(e, staging, needed):
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # the space it took; checkpoints before it are whole
                raise disk_full(e, os.path.join(real, f"checkpoint-{self.state.global_step}"), needed) from e
            finally:
                self.args.output_dir = real
            tokens = sum(dist.gather(state.tokens)) + state.prior_tokens
            dist.barrier()
            if dist.is_main():
                name = f"checkpoint-{self.state.global_step}"
                atomic_write_json(
                    os.path.join(staging, name, "tunebench_state.json"),
                    {"tokens_seen": tokens, "seconds": state.seconds, "world_size": dist.world_size()},
                )
                final = os.path.join(real, name)
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.replace(os.path.join(staging, name), final)
                shutil.rmtree(staging, ignore_errors=True)
                for old in sorted(Path(real).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))[:-2]:
                    shutil.rmtree(old, ignore_errors=True)
            dist.barrier()

    return TunebenchTrainer


def _tree_size(path: Path | None) -> int | None:
    """Bytes under ``path`` (the size the next checkpoint will about need), or None without one."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path is not None else None


def _count_tokens_hook(model: Any, state: TokenCounter):
    """Count real (non-padding) input tokens of every training forward pass."""

    def hook(module, args, kwargs):
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if mask is not None and mask.dim() == 2:
            state.add_tokens(mask.sum())  # no int(): a read-back per micro-batch would stall the host on the GPU
        elif ids is not None:  # padding-free batches carry no padding
            state.add_tokens(int(ids.numel()))

    return model.register_forward_pre_hook(hook, with_kwargs=True)


# ----------------------------------------------------------------------------- the stage


def sft_config(cfg: RunConfig, ckpt_dir: Path, backend: str, has_val: bool, dtype: Any) -> Any:
    """TRL SFTConfig from the typed config."""
    import torch  # heavy: torch, imported when needed
    from trl import SFTConfig  # heavy: trl, imported when needed

    t = cfg.train
    cuda = torch.cuda.is_available()
    optim = t.optimizer  # resolved by core.config.resolve
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps,
        optim=optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # the default hides a NaN loss from the logs; the NaN guard must see it
        eval_strategy="steps" if (has_val and t.eval_every) else "no",
        eval_steps=t.eval_every or None,
        eval_on_start=has_val,  # step 0 = the base (LoRA B starts at zero): the loss curve's reference point
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        report_to=tracking.active(t.report_to) or "none",
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        # the data step already cut every conversation to data.max_length; TRL refuses padding_free with a
        # max_length it cannot enforce without packing, so only pass it where it acts
        max_length=None if (t.padding_free and not t.packing) else cfg.data.max_length,
        packing=t.packing,
        padding_free=t.padding_free,
        gradient_checkpointing=backend == "hf" and t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    return one_gpu_per_process(args)


def one_gpu_per_process(args: Any) -> Any:
    """Keep a process that no launcher started on one GPU when the host has several.

    Left alone, ``Trainer`` wraps the model in ``nn.DataParallel`` over every visible GPU, which TRL's
    trainers refuse ("does not support nn.DataParallel") and which would not be the data-parallel training
    tunebench does under torchrun anyway. The model was loaded on ``cuda:LOCAL_RANK`` (0 here); train there,
    as ``Trainer`` itself does for a model split with ``device_map``.
    """
    import torch  # heavy: torch, imported when needed

    if dist.world_size() == 1 and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        _ = args.device  # sets n_gpu from the visible devices; then pin it
        args._n_gpu = 1
        log.info(
            "%d GPUs visible to one process: training on cuda:0 only; for data-parallel training launch "
            "with torchrun or accelerate launch (README: Several GPUs)",
            torch.cuda.device_count(),
        )
    return args


def resolve_backend(train_cfg: Any, resolution: dict[str, str]) -> tuple[str, str]:
    """The resolved backend and why; import Unsloth now (before transformers) when it is the choice.

    The config resolved ``auto`` already (core.config.resolve); only a failed Unsloth import, a runtime fact,
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
    saved = int(read_json(state_file).get("world_size", 1)) if state_file.exists() else 1
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

    Raises:
        RunExistsError: the folder has training output and neither resume nor overwrite was asked.
        DataError: (``strict``) a split too small to decide anything (data.splits).
        TrainingError: a non-finite loss (the last good checkpoint is kept).
        BackendError, ModelError, DataError: with what to do.
    """
    run_dir = Path(run_dir)
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
        return TrainResult(run_dir, adapter_dir, read_json(adapter_dir / "manifest.json"))
    if resume:
        require_resumable(ckpt_dir)
        check_resume_world_size(latest_checkpoint(ckpt_dir))

    backend_name, reason = resolve_backend(cfg.train, cfg.resolution)  # before transformers is imported
    cfg = with_backend(cfg, backend_name, reason)  # Unsloth did not import under auto: the config of hf
    import torch  # heavy: torch, imported when needed
    from transformers import PrinterCallback  # heavy: transformers, after Unsloth (resolve_backend)

    source = resolve_model(cfg.model.ref, cfg.model.revision)
    if prepared is None:
        tok, tname = load_tokenizer(source, cfg.model.chat_template, cfg.model.trust_remote_code)
        report_path = run_dir / "data" / "data_report.json"
        write = dist.is_main() and not report_path.exists()
        # split sizes were checked when the data step wrote the folder; a fresh one is checked here
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
        if report_path.exists() and read_json(report_path)["fingerprint"] != prepared.fingerprint:
            raise TrainingError(
                f"{run_dir}/data was prepared from other data or another template than this config gives; "
                "re-run `tunebench data` (or --overwrite)"
            )
    backend = get_backend(backend_name)
    torch.manual_seed(cfg.train.seed)
    model, tok = backend.load(source, cfg.model, cfg.lora, cfg.train, cfg.data.max_length, prepared.template.name)
    train_ds, val_ds = backend.datasets(prepared, tok)
    dtype = compute_dtype(cfg.model)
    args = sft_config(cfg, ckpt_dir, backend_name, val_ds is not None, dtype)
    steps_per_epoch = math.ceil(len(train_ds) / (cfg.train.batch_size * cfg.train.grad_accum))
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else math.ceil(steps_per_epoch * cfg.train.epochs)
    state = _State()
    with tracking.tracker_environment(cfg.train.report_to, run_dir):  # trackers read it when the trainer is built
        trainer = _trainer_class(state, backend_name)(
            model=model,
            processing_class=tok,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            args=args,
            callbacks=make_callbacks(state, total_steps, run_dir / "train.log") + list(extra_callbacks or []),
        )
    trainer.remove_callback(PrinterCallback)  # its {'loss': ...} lines go to train.log (LogFile), not the terminal
    trainer, found = backend.finish_trainer(trainer, prepared)
    trainable, total = manifest_mod.count_parameters(trainer.model)
    log.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    resume_from = latest_checkpoint(ckpt_dir) if resume else None
    if resume_from is not None:
        prior = (
            read_json(resume_from / "tunebench_state.json") if (resume_from / "tunebench_state.json").exists() else {}
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
        with backend.training(cfg.train), tracking.tracker_environment(cfg.train.report_to, run_dir):
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        handle.remove()
    seconds = state.seconds

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

    evaluated = any(h.get("step") == trainer.state.global_step and "eval_loss" in h for h in trainer.state.log_history)
    if val_ds is not None and not evaluated:
        trainer.evaluate()  # final response-only validation loss, in the log history
    tokens_seen = sum(dist.gather(state.tokens)) + state.prior_tokens  # the whole job's real tokens
    if not dist.is_main():
        dist.barrier()  # the main process writes the adapter, manifest and plot
        return TrainResult(run_dir, adapter_dir, None)
    man = manifest_mod.build(
        cfg=to_dict(cfg),
        model=manifest_of(source),
        template=prepared.template.to_dict(),
        backend={
            "name": backend_name,
            "reason": reason,
            **found,
            # what the batches were, whatever was asked (Unsloth's CPU fallback pads regardless)
            "padding_free_batches": bool(getattr(trainer.data_collator, "padding_free", False)),
            "compiled_blocks": compiled_blocks(trainer.model),
        },
        data={
            "fingerprint": prepared.fingerprint,
            "splits": {s: len(v) for s, v in prepared.encoded.items()},
            "split_fingerprints": {s: d["fingerprint"] for s, d in prepared.report["splits"].items()},
        },
        trainable=trainable,
        total=total,
        steps=trainer.state.global_step,
        tokens_seen=tokens_seen,
        wall_time_s=seconds,
        log_history=trainer.state.log_history,
        extra={
            "base_eval_loss": next(
                (
                    h["eval_loss"]
                    for h in trainer.state.log_history  # eval_on_start's
                    if h.get("step") == 0 and "eval_loss" in h
                ),
                None,
            ),
            "world_size": dist.world_size(),
            "effective_batch_size": cfg.train.batch_size * cfg.train.grad_accum * dist.world_size(),
            # what the trainer trained through: DistributedDataParallel when the ranks kept one model
            "model_wrapper": type(getattr(trainer, "model_wrapped", trainer.model)).__name__,
        },
    )
    with atomic_dir(adapter_dir) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "manifest.json", man)
        write_adapter_metadata(tmp, man)  # the base by its hub id / packaged name, and the model card
    manifest_mod.plot_loss_curve(man, run_dir / "loss_curve.png")
    log.info("adapter written to %s (%.0f real tokens/s)", adapter_dir, man["tokens_per_s"] or 0)
    dist.barrier()
    return TrainResult(run_dir, adapter_dir, man)
