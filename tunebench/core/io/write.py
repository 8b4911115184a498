"""Atomic writes: a temp file (or folder) in the same directory, then a rename, so an interrupted process never
leaves a half-written artifact that looks complete, and a failed write leaves the previous file as it was.

Every file appears with the mode the umask gives (0644 under umask 022), as ``open`` would create it: a temp file
is made 0600, and a library's own writer (safetensors) may do the same, so teammates on a shared machine could not
read a report or an adapter. Text is written as UTF-8 whatever it holds: a lone surrogate (no UTF-8 text can hold
one) is written escaped rather than failing the write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunebench.core.errors import DiskFull


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open`` gives a new file under the current umask (0o644 under 022)."""
    return 0o666 & ~umask()


def _set_modes(folder: Path) -> None:
    """Every file under ``folder`` to the umask's file mode and every folder to its folder mode, whatever the
    writer that made them chose."""
    mask = umask()
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


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
            os.fchmod(f.fileno(), file_mode())  # mkstemp makes it 0600; the file gets what open would give it
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
    """Write text atomically as UTF-8; a lone surrogate is written as its escape (``\\ud800``) rather than fail."""
    return atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically, sorted keys off (schema order is meaningful), indented; a string holding a lone
    surrogate makes the file ASCII JSON (the surrogate as a JSON escape) rather than fail the write."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=json_default) + "\n"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = (json.dumps(obj, indent=2, ensure_ascii=True, default=json_default) + "\n").encode("ascii")
    return atomic_write_bytes(path, data)


def json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final`` in one rename.

    If the body raises, the temp folder is removed and ``final`` is untouched. What the body wrote gets the umask's
    modes, whatever the library that wrote it chose.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _set_modes(tmp)  # safetensors writes its files 0600
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
