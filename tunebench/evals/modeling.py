"""Loading a base model, optionally with a LoRA adapter, for evaluation (plain transformers + peft).

Evaluation never runs in a process where Unsloth has patched transformers: base and tuned go through the
same code path, so a difference between them is the adapter's doing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.core import dist
from tunebench.core.config_resolve import auto_dtype
from tunebench.core.errors import AdapterError
from tunebench.models.adapters import adapter_manifest, check_adapter
from tunebench.models.loading import ModelSource, load_causal_lm, load_tokenizer, resolve_model

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A model ready for evaluation, with what identifies it."""

    model: Any
    tokenizer: Any
    template: str
    source: ModelSource
    adapter: str | None
    adapter_sha: str | None
    device: str
    dtype: str
    merged: bool = False
    """The adapter is folded into the base weights (a plain transformers model, no peft wrapper)."""
    load_in_4bit: bool = False
    """Base weights are bitsandbytes nf4."""

    def identity(self) -> dict[str, Any]:
        ident = {
            "base": self.source.to_dict(),
            "adapter": self.adapter,
            "adapter_sha256": self.adapter_sha,
            "template": self.template,
            "dtype": self.dtype,
            "device": self.device,
        }
        if self.adapter is not None:
            ident["adapter_merged"] = self.merged
            ident["adapter_base"] = merge_base(self.merged, self.load_in_4bit)
        if self.load_in_4bit:
            ident["weights"] = "nf4 4-bit (bitsandbytes)"
        return ident


def merge_base(merged: bool, load_in_4bit: bool) -> str:
    """Which base weights an adapter is applied to, in words (recorded with every result)."""
    if merged:
        return "merged into the original 16-bit base weights (what `tunebench export --merged` ships)"
    return "unmerged (peft) on the " + ("nf4 4-bit base it was trained against" if load_in_4bit else "16-bit base")


def pick_device(device: str = "auto") -> str:
    import torch  # heavy: torch, imported when needed

    if device != "auto":
        return device
    if torch.cuda.is_available():  # under torchrun/accelerate each process takes the GPU of its local rank
        return f"cuda:{dist.local_rank()}"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> Any:
    """bf16 on CUDA (fp16 before Ampere), fp32 on CPU unless asked."""
    import torch  # heavy: torch, imported when needed

    if dtype == "auto":
        cuda = device.startswith("cuda")
        dtype = auto_dtype(cuda, cuda and torch.cuda.is_bf16_supported())
    return getattr(torch, dtype)


def _check_shapes(model: Any, adapter: Path) -> None:
    """Compare every LoRA tensor with the base layer it attaches to (catches a different base size)."""
    from safetensors import safe_open  # heavy: safetensors, imported when needed

    modules = dict(model.named_modules())
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            base_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            mod = modules.get(base_name)
            if mod is None or not hasattr(mod, "in_features"):
                raise AdapterError(f"adapter tensor {key!r} targets {base_name!r}, which this base model lacks")
            shape = f.get_slice(key).get_shape()
            want = mod.in_features if ".lora_A." in key else mod.out_features
            got = shape[1] if ".lora_A." in key else shape[0]
            if want != got:
                raise AdapterError(
                    f"adapter tensor {key!r} has {got} features where the base layer has {want}: "
                    "the adapter was trained on another base model"
                )


def load_for_eval(
    model_ref: str | ModelSource,
    adapter: str | Path | None = None,
    template: str = "auto",
    dtype: str = "auto",
    device: str = "auto",
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
    merge_adapter: bool = True,
) -> Loaded:
    """Load base (+ adapter) with transformers/peft in eval mode.

    Args:
        merge_adapter: fold the adapter into the base weights (``merge_and_unload``): evaluation then costs
            what the base costs, and it is the model users ship. For an adapter trained on a 4-bit base, the
            merge uses the original 16-bit weights (``load_in_4bit`` is ignored), as ``export --merged`` does;
            merging into 4-bit weights would requantize them. False keeps peft's unmerged adapter on the base
            loaded as asked (4-bit: what a QLoRA adapter was trained against).

    Raises:
        ModelError / AdapterError: with a message that says what to do.
    """
    source = model_ref if isinstance(model_ref, ModelSource) else resolve_model(model_ref)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    weights_sha = check_adapter(adapter, source) if adapter is not None else None
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").exists():
        # the adapter folder carries the tokenizer + template it was trained with: use exactly that
        from transformers import AutoTokenizer  # heavy: transformers, imported when needed

        tok = AutoTokenizer.from_pretrained(str(adapter))
        template_name = adapter_manifest(adapter).get("template", {}).get("name", template)
    else:
        tok, template_name = load_tokenizer(source, template, trust_remote_code)
    merged = adapter is not None and merge_adapter
    four_bit = load_in_4bit and not merged
    model = load_causal_lm(source, torch_dtype, four_bit, dev, trust_remote_code)
    if adapter is not None:
        from peft import PeftModel  # heavy: peft, imported when needed

        _check_shapes(model, Path(adapter))
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        if merged:
            model = model.merge_and_unload()
    model.eval()
    if getattr(model, "generation_config", None) is not None and tok.pad_token_id is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return Loaded(
        model,
        tok,
        template_name,
        source,
        str(adapter) if adapter else None,
        weights_sha,
        dev,
        str(torch_dtype).replace("torch.", ""),
        merged=merged,
        load_in_4bit=four_bit,
    )
