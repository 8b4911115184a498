"""TRL's ``SFTConfig`` from the typed config, kept on one GPU per process when no launcher started it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunebench.core import dist, tracking
from tunebench.core.config_schema import RunConfig

log = logging.getLogger("tunebench.train.trainer")  # the messages read as the trainer's, as before


def sft_config(cfg: RunConfig, ckpt_dir: Path, backend: str, has_val: bool, dtype: Any) -> Any:
    """TRL SFTConfig from the typed config."""
    import torch  # heavy: torch, imported when needed
    from trl import SFTConfig  # heavy: trl, imported when needed

    t = cfg.train
    cuda = torch.cuda.is_available()
    optim = t.optimizer  # resolved by core.config_resolve.resolve
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        # transformers reads a warmup_steps below 1 as a share of the updates (its former warmup_ratio)
        warmup_steps=t.warmup_ratio if t.warmup_ratio is not None else t.warmup_steps,
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
            "with torchrun or accelerate launch (docs/scale-out.md)",
            torch.cuda.device_count(),
        )
    return args
