"""`tunebench export RUN --merged`: fold the LoRA adapter into its base and save a plain 16-bit model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunebench.core.errors import ExportError
from tunebench.core.io import atomic_dir, atomic_write_json
from tunebench.models.adapters import adapter_manifest, check_adapter
from tunebench.models.loading import ModelSource, load_config_of, resolve_model

log = logging.getLogger(__name__)


def adapter_dir(run_or_adapter: str | Path) -> Path:
    """The adapter folder of a run folder (or the adapter folder itself).

    Raises:
        ExportError: neither holds adapter_config.json (e.g. a run whose training never finished).
    """
    p = Path(run_or_adapter)
    if (p / "adapter_config.json").exists():
        return p
    if (p / "adapter" / "adapter_config.json").exists():
        return p / "adapter"
    raise ExportError(
        f"{p}: no adapter to export (neither a run folder with adapter/adapter_config.json nor an "
        "adapter folder); train it first (`tunebench train` or `tunebench run`)"
    )


def merge_adapter(
    run_or_adapter: str | Path, dtype: str = "bfloat16", check: Callable[[Any], None] | None = None
) -> tuple[Any, Any, ModelSource, Path]:
    """Fold a run's adapter into an unquantized copy of its base.

    Args:
        run_or_adapter: a run folder or its adapter folder.
        dtype: torch dtype name the base is loaded (and merged) in.
        check: called with the base's config before any weights load (e.g. to refuse an architecture).

    Returns:
        (merged model, the run's tokenizer with its chat template, the base source, the adapter folder)

    Raises:
        ExportError / AdapterError: no adapter, no manifest naming the base, or an adapter of another base.
    """
    import torch  # heavy: merging needs the weights
    from peft import PeftModel  # heavy: peft
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers

    adapter = adapter_dir(run_or_adapter)
    manifest = adapter_manifest(adapter)
    ref = (manifest.get("model") or {}).get("ref")
    if not ref:
        raise ExportError(f"{adapter}: no tunebench manifest names the base model; merge with peft directly")
    source = resolve_model(ref, (manifest.get("model") or {}).get("revision"))
    check_adapter(adapter, source)
    if check is not None:
        check(load_config_of(source))
    base = AutoModelForCausalLM.from_pretrained(source.path, dtype=getattr(torch, dtype))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.eval()
    # the adapter folder carries the tokenizer and chat template the run trained and evaluated with
    tok = AutoTokenizer.from_pretrained(str(adapter))
    return merged, tok, source, adapter


def export_merged(run_or_adapter: str | Path, out: str | Path | None = None, dtype: str = "bfloat16") -> Path:
    """Merge the adapter into an unquantized copy of its base and write it (safetensors) atomically.

    The base is loaded unquantized even if training used 4-bit: merging into 4-bit weights would round the
    update away.

    Raises:
        ExportError / AdapterError: no adapter, or an adapter of another base.
    """
    merged, tok, source, adapter = merge_adapter(run_or_adapter, dtype)
    out = Path(out) if out else adapter.parent / "merged"
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / "tunebench_export.json", {"adapter": str(adapter), "base": source.to_dict(), "dtype": dtype}
        )
    log.info("merged model written to %s", out)
    return out
