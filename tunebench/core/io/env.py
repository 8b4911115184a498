"""Fingerprints, package data and environment facts: what every stage records about its inputs and the code that
ran."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from tunebench.core.io.write import json_default

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The ``tunebench`` package folder."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | Path, pattern: str = "*") -> str:
    """Hex SHA-256 over a folder's matching file names and bytes (sorted)."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob(pattern)):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-able data."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=json_default).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def package_path(*parts: str) -> Path:
    """A folder or file shipped as tunebench package data (presets, gate rules, templates, tasks, probes).

    Read through importlib.resources, so it is found in a wheel install as in a checkout; tunebench is never
    imported from a zip, so the resource is a real path that lm-eval and Jinja loaders can open.
    """
    return Path(str(resources.files("tunebench").joinpath(*parts)))


def cache_root() -> Path:
    """Where derived artifacts (dequantized GGUF folders, generation caches) live."""
    root = os.environ.get("TUNEBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tunebench"
    )
    return Path(root)


def git_commit() -> str | None:
    """The suite's own git commit, if it runs from a checkout."""
    here = PACKAGE_ROOT
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


SOURCE_SUFFIXES = (".py", ".yaml", ".jinja", ".j2", ".json")


def source_fingerprint(root: str | Path | None = None) -> str:
    """sha256 (16 hex digits) of the package's own files (code, presets, templates, probe sets), by relative path.

    Unlike the git commit it names the code that ran wherever it runs: an installed wheel, or a copied tree whose
    ``.git`` belongs to another commit. Compare with ``python -c "from tunebench.core.io import
    source_fingerprint; print(source_fingerprint())"`` in a checkout.
    """
    root = Path(root) if root is not None else PACKAGE_ROOT
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def package_version(name: str) -> str | None:
    """Installed version of a distribution, without importing it."""

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions and hardware facts recorded in every manifest and results file."""
    import torch  # heavy: torch, imported when needed

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tunebench_commit": git_commit(),
        "tunebench_source": source_fingerprint(),
    }
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "unsloth",
        "unsloth-zoo",
        "bitsandbytes",
        "lm-eval",
    ):
        env[name] = package_version(name)
    env["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["device_count"] = torch.cuda.device_count()
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        env["device_count"] = 0
    return env
