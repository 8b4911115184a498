"""Adapter folders: the tunebench manifest beside them, their weights' hash, and whether they fit a base.

Both evaluation (evals.modeling) and export (train.export) check adapters, so these helpers live below both.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from tunebench.core.errors import AdapterError
from tunebench.core.io import check_json, read_json, sha256_file
from tunebench.models.loading import PACKAGED_MODELS, ModelSource

log = logging.getLogger(__name__)


def adapter_manifest(adapter: str | Path) -> dict[str, Any]:
    """The tunebench manifest beside an adapter, or {} for a foreign adapter.

    Raises:
        AdapterError: a manifest that does not read, or is not a JSON object.
    """
    for p in (Path(adapter) / "manifest.json", Path(adapter).parent / "manifest.json"):
        if p.exists():
            fix = "train the adapter again, or remove the manifest to use the adapter as a foreign one"
            return check_json(read_json(p, fix, error=AdapterError), dict[str, Any], str(p), fix)
    return {}


def adapter_sha(adapter: str | Path) -> str:
    """SHA-256 of an adapter's weights, after checking the folder holds a complete safetensors adapter.

    Raises:
        AdapterError: no such folder, or adapter_config.json / adapter_model.safetensors missing.
    """
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise AdapterError(f"adapter {str(adapter)!r}: no such folder; pass a run's adapter/ folder")
    weights = adapter / "adapter_model.safetensors"
    if not (adapter / "adapter_config.json").exists() or not weights.exists():
        raise AdapterError(
            f"adapter {str(adapter)!r}: needs adapter_config.json and adapter_model.safetensors "
            "(a half-written or pickled adapter is not loaded)"
        )
    return sha256_file(weights)


def check_adapter(adapter: str | Path, source: ModelSource) -> str:
    """Validate an adapter folder against the base it will be applied to, before the base loads.

    Returns:
        sha256 of adapter_model.safetensors

    Raises:
        AdapterError: missing folder/files, or a manifest or adapter_config.json that names another base.
    """
    sha = adapter_sha(adapter)
    model = adapter_manifest(adapter).get("model")
    trained_on = model.get("identity") if isinstance(model, dict) else None
    if trained_on and trained_on != source.identity:
        raise AdapterError(
            f"adapter {str(adapter)!r} was trained on {trained_on} but the base is {source.identity} "
            f"({source.ref}); evaluate it with the base it was trained on"
        )
    if not trained_on:  # a foreign adapter: its adapter_config.json is all that says what it was made for
        check_named_base(adapter, source)
    return sha


# suffixes that name a packaging of a model, not another model: unsloth/Llama-3.2-1B-Instruct-bnb-4bit is
# meta-llama/Llama-3.2-1B-Instruct; SmolLM2-135M-Instruct.Q4_1.gguf is HuggingFaceTB/SmolLM2-135M-Instruct
_PACKAGING = re.compile(r"([-_.](unsloth|bnb|4bit|8bit|gguf|awq|gptq|fp16|bf16|f16|f32|q\d(_[0-9a-z]+)*))+$")
_HF_CACHE = re.compile(r"models--([^/]+)--([^/]+)(/snapshots/[^/]+)?/?$")
_GGUF_CACHE = re.compile(r"gguf/([0-9a-f]{24})/?$")
_SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


def model_name(ref: str) -> str:
    """The model a reference names, without organisation or packaging: ``meta-llama/Llama-3.2-1B`` ->
    ``llama-3.2-1b``; a hub-cache snapshot path names its repository."""
    ref = ref.rstrip("/")
    if m := _HF_CACHE.search(ref):
        ref = m.group(2)
    name = ref.removeprefix("packaged:").rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    return _PACKAGING.sub("", name)


def _source_names(source: ModelSource) -> set[str]:
    names = {model_name(source.ref)}
    if source.kind == "packaged":  # the packaged file's own name: the model it was quantized from
        names.add(model_name(PACKAGED_MODELS[source.ref][1]))
    config = _local_config(source.path) or {}
    if config.get("_name_or_path"):
        names.add(model_name(str(config["_name_or_path"])))
    return names


def _local_config(path: str | Path) -> dict[str, Any] | None:
    p = Path(path) / "config.json"
    try:
        config = read_json(p, error=AdapterError) if p.is_file() else None
    except AdapterError:  # a config that does not read says nothing about the architecture
        return None
    return config if isinstance(config, dict) else None


def _hub_cached_config(hub_id: str) -> dict[str, Any] | None:
    """config.json of a hub model already in the local hub cache (never a download)."""
    try:
        from huggingface_hub import try_to_load_from_cache  # light: no network

        path = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # an id the hub library refuses is simply not cached
        return None
    return _local_config(Path(path).parent) if isinstance(path, str) else None


def check_named_base(adapter: str | Path, source: ModelSource) -> None:
    """Refuse an adapter whose adapter_config.json names another base than ``source``.

    The same model counts whatever way it was named: hub id, packaged reference, a hub-cache or tunebench-cache
    path of it, a quantized packaging (``-bnb-4bit``, ``.Q4_1.gguf``). Where the base's config.json is at hand
    (a local folder, the hub cache) the architectures decide; else the model names do, for sources whose name
    is reliable (hub ids, packaged models). A local folder or GGUF file of an unknown name is let through.

    Raises:
        AdapterError: naming both bases.
    """
    base = str(adapter_config(adapter).get("base_model_name_or_path") or "")
    if not base or base in (source.ref, source.path) or Path(base).resolve() == Path(source.path).resolve():
        return
    m = _GGUF_CACHE.search(base.rstrip("/"))
    if m and source.identity.startswith("gguf-sha256:"):  # tunebench's dequantized GGUF, cached on another host
        if source.identity.removeprefix("gguf-sha256:").startswith(m.group(1)):
            return
        _refuse(adapter, base, source, "another GGUF file")
    if model_name(base) in _source_names(source):
        return
    theirs = _local_config(base) or (_hub_cached_config(base) if "/" in base and not Path(base).exists() else None)
    ours = _local_config(source.path) or (_hub_cached_config(source.path) if source.kind == "hub" else None)
    if theirs is not None and ours is not None:
        diff = [k for k in _SHAPE_KEYS if k in theirs and k in ours and theirs[k] != ours[k]]
        if not diff:
            return
        _refuse(adapter, base, source, ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in diff))
    if source.kind in ("hub", "packaged") or m:
        _refuse(adapter, base, source, f"model {model_name(base)!r} vs {' / '.join(sorted(_source_names(source)))}")
    log.warning(
        "adapter %s names base %r; cannot tell whether %s is the same model (loading it)", adapter, base, source.ref
    )


def adapter_config(adapter: str | Path) -> dict[str, Any]:
    """An adapter folder's adapter_config.json (PEFT's), as a mapping.

    Raises:
        AdapterError: missing or unreadable; RunFileError: not a JSON object.
    """
    path = Path(adapter) / "adapter_config.json"
    fix = "give an adapter folder that PEFT's save_pretrained wrote"
    return check_json(read_json(path, fix, error=AdapterError), dict[str, Any], str(path), fix)


def _refuse(adapter: str | Path, base: str, source: ModelSource, why: str) -> None:
    raise AdapterError(
        f"adapter {str(adapter)!r} was made for another base model: its adapter_config.json names {base!r}, but "
        f"the base loaded is {source.ref!r} ({why}); apply it to the base it was trained on (--model "
        f"{base if '/' in base and not Path(base).exists() else 'REF'})"
    )
