"""Atomic writes, fingerprints and environment facts shared by every stage.

Everything a run writes goes through here: a temp file (or folder) in the same directory, then a
rename, so an interrupted process never leaves a half-written artifact that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import types
import typing
import uuid
from collections.abc import Iterator
from importlib import metadata, resources
from pathlib import Path
from typing import Any, TypeVar

from tunebench.core.errors import DiskFull, RunFileError, TunebenchError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and ``os.replace``; a full disk raises DiskFull and leaves
    the previous file as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise disk_full(e, path, len(data)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise disk_full(e, path, len(data)) from e
        raise
    return path


def free_bytes(path: str | Path) -> int | None:
    """Free space on the filesystem holding ``path`` (its nearest existing parent), or None when unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def is_disk_full(err: BaseException, path: str | Path | None = None, needed: int | None = None) -> bool:
    """Whether ``err`` is a write that ran out of space: ENOSPC/EDQUOT, or torch.save's stream-writer failure (a
    RuntimeError without an errno) where less is free than ``needed`` bytes (at least 16 MiB): a write that failed
    for want of room leaves up to one write's worth free."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    # torch.save's stream writer: "file write failed", "iostream error", "unexpected pos N vs M"
    torch_write = any(m in text for m in ("file write failed", "iostream error", "unexpected pos"))
    free = free_bytes(path) if path is not None and torch_write else None
    return free is not None and free < max(16 * 2**20, needed or 0)


def disk_full(err: BaseException, path: str | Path, needed: int | None = None) -> BaseException:
    """``err`` as DiskFull when it is a full disk (is_disk_full: naming the path, the space needed and what is
    free), else itself."""
    if isinstance(err, DiskFull) or not is_disk_full(err, path, needed):
        return err
    free = free_bytes(path)
    need = f"writing about {_size(needed)}" if needed else "writing it"
    left = f" than the {_size(free)} free there" if free is not None else ""
    e = DiskFull(
        f"{path}: the disk is full ({need} needs more space{left}). The file that was there before, if "
        "any, is unchanged. Free some space, or point --out at a larger disk, and run the same command again"
    )
    e.errno = getattr(err, "errno", None) or errno.ENOSPC  # not .filename: OSError's str() would then drop the message
    return e


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically, sorted keys off (schema order is meaningful), indented."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


REWRITE_HINT = "re-run the command that wrote it"
T = TypeVar("T")
_MISSING = object()


def read_json(path: str | Path, fix: str = REWRITE_HINT) -> Any:
    """Read a JSON file, with an error that names the file and says how to write it again.

    Args:
        path: The file.
        fix: What to do when it is damaged (e.g. "re-run `tunebench eval RUN`"), appended to the message.

    Raises:
        FileNotFoundError: no such file.
        RunFileError: unreadable, not UTF-8, empty, not valid JSON, or nested too deeply.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise RunFileError(f"{path}: cannot be read ({e.strerror or e}); {fix}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {e.start} is {data[e.start]:#04x}): damaged, or not a JSON file"
    except json.JSONDecodeError as e:
        problem = (
            "empty or blank: not valid JSON (written by an interrupted copy?)"
            if not data.strip()
            else f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
        )
    except RecursionError:
        problem = "not valid JSON for tunebench (nested too deeply to read)"
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        problem = f"not valid JSON for tunebench ({e})"
    raise RunFileError(f"{path}: {problem}; {fix}")


def check_json(data: Any, hint: Any, where: str, fix: str = REWRITE_HINT) -> Any:
    """Check JSON data against a type annotation and return it, dataclasses built: ``check_json(d, Results, ...)``,
    ``check_json(d, dict[str, str], ...)``. Nested dataclasses, TypedDicts, ``X | None``, ``Literal``,
    ``list[...]`` and ``dict[str, ...]`` are checked all the way down; keys a dataclass lacks are ignored, so a
    newer writer's additions still read.

    Raises:
        RunFileError: the first value of the wrong type, or a required field missing, named by its path
            (``metrics[0] (perplexity/test).value``), with ``fix``.
    """
    try:
        return _checker(hint)(data)
    except _Mismatch as m:
        field = m.path.lstrip(".") or "the top level"
        problem = (
            f"{field} is missing (it must be {_describe(m.hint)})"
            if m.got is _MISSING
            else f"{field} must be {_describe(m.hint)}, got {show_json(m.got)}"
        )
        raise RunFileError(f"{where}: {problem}; {fix}") from None


class _Mismatch(TunebenchError):
    """A value that is not of its annotation; internal to check_json, which re-raises it as RunFileError."""

    def __init__(self, hint: Any, got: Any = None, path: str = ""):
        super().__init__(f"must be {_describe(hint)}")
        self.hint, self.got, self.path = hint, got, path

    def within(self, prefix: str) -> _Mismatch:
        self.path = prefix + self.path
        return self


Check = typing.Callable[[Any], Any]
_SCALARS = {float: (float, int), int: (int,), bool: (bool,), str: (str,), dict: (dict,), list: (list,)}
"""Exact JSON types each annotation accepts: ``type(x) in ...``, so true is never a number."""


@functools.cache
def _checker(hint: Any) -> Check:
    """A function that checks (and for dataclasses builds) a JSON value of annotation ``hint``; compiled once per
    annotation, because a results file holds ~10^4 per-item records."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return lambda v: v
    if origin in (typing.Union, types.UnionType):
        return _union_checker(hint, args)
    if origin is typing.Literal:

        def literal(v: Any) -> Any:
            if isinstance(v, (dict, list)) or v not in args:
                raise _Mismatch(hint, v)
            return v

        return literal
    if dataclasses.is_dataclass(hint) or typing.is_typeddict(hint):
        return _record_checker(hint)
    allowed = _SCALARS.get(origin or hint)
    if allowed is None:
        raise TypeError(f"check_json cannot check annotation {hint!r}")
    inner = _checker(args[-1]) if args and args[-1] is not Any else None

    def check(v: Any) -> Any:
        if type(v) not in allowed:
            raise _Mismatch(hint, v)
        if inner is None:
            return v
        if type(v) is list:
            return [_within(inner, x, f"[{k}]{_label(x)}") for k, x in enumerate(v)]
        return {k: _within(inner, x, f".{k}") for k, x in v.items()}

    return check


def _within(check: Check, value: Any, where: str) -> Any:
    try:
        return check(value)
    except _Mismatch as m:
        raise m.within(where) from None


def _union_checker(hint: Any, args: tuple[Any, ...]) -> Check:
    nullable = type(None) in args
    options = [_checker(a) for a in args if a is not type(None)]

    def check(v: Any) -> Any:
        if v is None and nullable:
            return None
        deeper = None
        for option in options:
            try:
                return option(v)
            except _Mismatch as m:  # an option that took the value's kind but not its contents says more
                deeper = deeper or (m if m.path else None)
        raise deeper or _Mismatch(hint, v)

    return check


def _record_checker(cls: type) -> Check:
    hints = typing.get_type_hints(cls)
    if typing.is_typeddict(cls):
        specs = [(k, _checker(hints[k]), k in cls.__required_keys__) for k in hints]  # type: ignore[attr-defined]
    else:
        specs = [
            (
                f.name,
                _checker(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        ]
    typed_dict = typing.is_typeddict(cls)

    def check(v: Any) -> Any:
        if type(v) is not dict:
            raise _Mismatch(cls, v)
        kwargs = {}
        for name, field_check, required in specs:
            if name in v:
                kwargs[name] = _within(field_check, v[name], f".{name}")
            elif required:
                raise _Mismatch(hints[name], _MISSING, f".{name}")
        return v if typed_dict else cls(**kwargs)

    return check


def _label(value: Any) -> str:
    """`` (perplexity/test)`` for a list element that names itself, so the path says which metric."""
    name = value.get("name", value.get("metric")) if isinstance(value, dict) else None
    return f" ({name})" if isinstance(name, str) else ""


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {
        float: "a number",
        int: "an integer",
        bool: "true or false",
        str: "a string",
        type(None): "null",
        list: "a list",
        dict: "an object",
    }
    if dataclasses.is_dataclass(hint) or typing.is_typeddict(hint):
        return "an object"
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def show_json(value: Any) -> str:
    """A JSON value, short, for messages: null, an object, a list of 3, "high", 1.5."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final`` in one rename.

    If the body raises, the temp folder is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} exists")
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e, final):  # safetensors and torch say so in their own types
            raise disk_full(e, final) from e
        raise


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
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default).encode("utf-8")
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
    here = Path(__file__).resolve().parent.parent
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
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
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
