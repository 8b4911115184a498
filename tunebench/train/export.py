"""`tunebench export RUN --merged`: fold the LoRA adapter into its base and save a plain 16-bit model."""

from __future__ import annotations

import logging
from pathlib import Path

from tunebench.core.io import atomic_dir, atomic_write_json
from tunebench.evals.modeling import adapter_manifest, check_adapter
from tunebench.models.loading import ModelError, resolve_model

log = logging.getLogger(__name__)


def _adapter_dir(run_or_adapter: str | Path) -> Path:
    p = Path(run_or_adapter)
    if (p / "adapter_config.json").exists():
        return p
    if (p / "adapter" / "adapter_config.json").exists():
        return p / "adapter"
    raise ModelError(f"{p}: neither a run folder with adapter/ nor an adapter folder")


def export_merged(run_or_adapter: str | Path, out: str | Path | None = None, dtype: str = "bfloat16") -> Path:
    """Merge the adapter into an unquantized copy of its base and write it (safetensors) atomically.

    The base is loaded unquantized even if training used 4-bit: merging into 4-bit weights would round the
    update away.

    Raises:
        ModelError / AdapterError: no adapter, or an adapter of another base.
    """
    import torch  # heavy: torch, imported when needed
    from peft import PeftModel  # heavy: peft, imported when needed
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers, imported when needed

    adapter = _adapter_dir(run_or_adapter)
    manifest = adapter_manifest(adapter)
    ref = (manifest.get("model") or {}).get("ref")
    if not ref:
        raise ModelError(f"{adapter}: no tunebench manifest names the base model; merge with peft directly")
    source = resolve_model(ref, (manifest.get("model") or {}).get("revision"))
    check_adapter(adapter, source)
    out = Path(out) if out else adapter.parent / "merged"
    base = AutoModelForCausalLM.from_pretrained(source.path, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(str(adapter))
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "tunebench_export.json", {"adapter": str(adapter), "base": source.to_dict(),
                                                          "dtype": dtype})
    log.info("merged model written to %s", out)
    return out
