"""Unsloth backend: FastLanguageModel (4-bit on CUDA), Unsloth gradient checkpointing, TRL SFTTrainer and
``train_on_responses_only`` with the markers of the template in use.

Unsloth must be imported before transformers in the training process (the trainer does that); nothing
else in tunebench imports it, so evaluation never runs on patched transformers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tunebench.core.errors import BackendError
from tunebench.models.loading import load_tokenizer
from tunebench.train.backends.base import compute_dtype, labels_dataset, use_4bit

log = logging.getLogger(__name__)


class UnslothBackend:
    name = "unsloth"
    packing = False

    def load(
        self, source: Any, model_cfg: Any, lora_cfg: Any, train_cfg: Any, max_length: int, template_name: str
    ) -> tuple[Any, Any]:
        """FastLanguageModel + get_peft_model; the tokenizer keeps the template tunebench renders with."""
        from unsloth import (  # heavy: unsloth patches transformers on import
            FastLanguageModel,  # heavy: unsloth patches transformers on import, imported when needed
        )

        self.packing = bool(train_cfg.packing)
        model, _unsloth_tok = FastLanguageModel.from_pretrained(
            model_name=source.path,
            max_seq_length=max_length,
            dtype=compute_dtype(model_cfg),
            load_in_4bit=use_4bit(model_cfg),
            trust_remote_code=model_cfg.trust_remote_code,
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=lora_cfg.r,
            target_modules=list(lora_cfg.target_modules),
            lora_alpha=lora_cfg.alpha,
            lora_dropout=lora_cfg.dropout,
            bias="none",
            use_gradient_checkpointing="unsloth" if train_cfg.gradient_checkpointing else False,
            random_state=train_cfg.seed,
            use_rslora=lora_cfg.use_rslora,
            max_seq_length=max_length,
        )
        tok, name = load_tokenizer(source, model_cfg.chat_template, model_cfg.trust_remote_code)
        if name == "llama-3.1":
            check_llama31_template(_unsloth_tok, tok)
        return model, tok

    def datasets(self, prepared: Any, tokenizer: Any) -> tuple[Any, Any]:
        """input_ids only: labels come from train_on_responses_only in finish_trainer. Packed: input_ids + the
        shared mask as labels, since a packed row holds several conversations and Unsloth's marker search would
        train on the next conversation's system header (it runs from one response marker to the next user one)."""
        packing = self.packing
        train = labels_dataset(prepared.encoded["train"], with_labels=packing)
        val = (
            labels_dataset(prepared.encoded["validation"], with_labels=packing)
            if prepared.encoded["validation"]
            else None
        )
        return train, val

    def finish_trainer(self, trainer: Any, prepared: Any) -> tuple[Any, dict[str, Any]]:
        """Mask everything but responses with Unsloth's own function, then check it against the shared mask.

        Raises:
            BackendError: the response marker matches nothing, so every label would be -100.
        """
        from unsloth.chat_templates import (  # heavy: unsloth patches transformers on import
            train_on_responses_only,  # heavy: unsloth patches transformers on import, imported when needed
        )

        if self.packing:
            return trainer, {"mask_agreement_with_shared": 1.0}  # the shared mask is the labels (see datasets)
        info = prepared.template
        try:
            trainer = train_on_responses_only(
                trainer, instruction_part=info.instruction_part, response_part=info.response_part
            )
        except Exception as e:  # unsloth raises ValueError/RuntimeError/ZeroDivisionError on no match
            raise BackendError(
                f"train_on_responses_only found no response marker {info.response_part!r} in the rendered "
                f"conversations ({type(e).__name__}: {e}); the template {info.name!r} and the tokenizer disagree"
            ) from None
        labels = trainer.train_dataset["labels"]
        if not any(x != -100 for row in labels for x in row):
            raise BackendError(
                f"every label is -100 after train_on_responses_only: the response marker {info.response_part!r} "
                f"does not occur as tokens in the rendered text (template {info.name!r})"
            )
        ours = [e.labels for e in prepared.encoded["train"]]
        same = sum(1 for a, b in zip(labels, ours, strict=False) if list(a) == list(b))
        if same < len(ours):
            log.warning(
                "Unsloth's response mask differs from the shared mask on %d of %d conversations",
                len(ours) - same,
                len(ours),
            )
        return trainer, {"mask_agreement_with_shared": same / max(1, len(ours))}

    def training(self, train_cfg: Any) -> Any:
        """Unsloth's per-block compile as ``train.compile_blocks`` says, while ``trainer.train()`` runs."""
        if not isinstance(train_cfg.compile_blocks, bool):
            raise BackendError(
                f"train.compile_blocks is {train_cfg.compile_blocks!r}, not true or false: load the "
                "config with tunebench.core.config.load_config, which resolves auto"
            )
        return block_compile(train_cfg.compile_blocks)


@contextmanager
def block_compile(enabled: bool) -> Iterator[None]:
    """Unsloth's per-block compile left to Unsloth (``enabled``) or off while training: Unsloth reads
    ``UNSLOTH_BLOCK_COMPILE`` at every decoder block call, and a block it patched at load runs its stock forward
    while the variable is 0. The variable is restored afterwards."""
    key = "UNSLOTH_BLOCK_COMPILE"
    if enabled:
        yield
        return
    before = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def check_llama31_template(unsloth_tok: Any, tok: Any) -> None:
    """Unsloth's get_chat_template('llama-3.1') must render exactly as tunebench's shipped template."""
    from unsloth.chat_templates import (  # heavy: unsloth patches transformers on import
        get_chat_template,  # heavy: unsloth patches transformers on import, imported when needed
    )

    theirs = get_chat_template(unsloth_tok, chat_template="llama-3.1")
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    a = theirs.apply_chat_template(msgs, tokenize=False)
    b = tok.apply_chat_template(msgs, tokenize=False)
    if a != b:
        raise BackendError(f"Unsloth's llama-3.1 template renders {a!r}, tunebench's renders {b!r}")
