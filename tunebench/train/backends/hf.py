"""transformers + peft backend (bitsandbytes 4-bit on CUDA): the fallback and the speed baseline.

Loss on assistant tokens only comes from the shared mask (train/data.py) as a prebuilt ``labels`` column:
TRL's ``assistant_only_loss`` needs {% generation %} markers that stock templates lack, and
``completion_only_loss`` trains only one turn per conversation.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from tunebench.core import dist
from tunebench.models.loading import load_causal_lm, load_tokenizer
from tunebench.train.backends.base import compute_dtype, labels_dataset, use_4bit

log = logging.getLogger(__name__)


class HFBackend:
    name = "hf"

    def load(
        self, source: Any, model_cfg: Any, lora_cfg: Any, train_cfg: Any, max_length: int, template_name: str
    ) -> tuple[Any, Any]:
        """Base model (4-bit nf4 on CUDA when enabled) with a fresh LoRA adapter attached."""
        import torch  # heavy: torch, imported when needed
        from peft import (  # heavy: peft, imported when needed
            LoraConfig,
            get_peft_model,
            prepare_model_for_kbit_training,
        )

        dtype = compute_dtype(model_cfg)
        four_bit = use_4bit(model_cfg)
        device = f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu"
        model = load_causal_lm(source, dtype, four_bit, device, model_cfg.trust_remote_code)
        if four_bit:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=train_cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif train_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.config.use_cache = False
        torch.manual_seed(train_cfg.seed)  # LoRA A init
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora_cfg.r,
                lora_alpha=lora_cfg.alpha,
                lora_dropout=lora_cfg.dropout,
                target_modules=list(lora_cfg.target_modules),
                use_rslora=lora_cfg.use_rslora,
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )
        tok, _ = load_tokenizer(source, model_cfg.chat_template, model_cfg.trust_remote_code)
        return model, tok

    def datasets(self, prepared: Any, tokenizer: Any) -> tuple[Any, Any]:
        """input_ids + labels from the shared assistant mask."""
        train = labels_dataset(prepared.encoded["train"])
        val = labels_dataset(prepared.encoded["validation"]) if prepared.encoded["validation"] else None
        return train, val

    def finish_trainer(self, trainer: Any, prepared: Any) -> tuple[Any, dict[str, Any]]:
        return trainer, {"mask_agreement_with_shared": 1.0}  # the shared mask is the labels

    def training(self, train_cfg: Any) -> AbstractContextManager[None]:
        return nullcontext()
