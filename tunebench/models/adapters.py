"""Adapter folders: the tunebench manifest beside them, their weights' hash, and whether they fit a base.

Both evaluation (evals.modeling) and export (train.export) check adapters, so these helpers live below both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunebench.core.errors import AdapterError
from tunebench.core.io import sha256_file
from tunebench.models.loading import ModelSource


def adapter_manifest(adapter: str | Path) -> dict[str, Any]:
    """The tunebench manifest beside an adapter, or {} for a foreign adapter."""
    for p in (Path(adapter) / "manifest.json", Path(adapter).parent / "manifest.json"):
        if p.exists():
            return json.loads(p.read_text(encoding="utf-8"))
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
    """Validate an adapter folder against the base it will be applied to.

    Returns:
        sha256 of adapter_model.safetensors

    Raises:
        AdapterError: missing folder/files, or a manifest that names another base.
    """
    sha = adapter_sha(adapter)
    manifest = adapter_manifest(adapter)
    trained_on = (manifest.get("model") or {}).get("identity")
    if trained_on and trained_on != source.identity:
        raise AdapterError(
            f"adapter {str(adapter)!r} was trained on {trained_on} but the base is {source.identity} "
            f"({source.ref}); evaluate it with the base it was trained on"
        )
    return sha
