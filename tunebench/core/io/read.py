"""The one reader of every file a user hands us or a run folder holds: YAML, JSON, JSON Lines and text.

Each refusal is one paragraph naming the file (the line and byte where there is one) and what to do:

- bytes that are not UTF-8 (a UTF-8 byte-order mark is read past; a UTF-16 or UTF-32 one is named as such);
- a file over its kind's size cap, a folder, a link that loops, a file that cannot be opened;
- nesting deeper than ``MAX_DEPTH`` (the composer, the checks and the writers behind them all recurse);
- a lone surrogate (``"\\ud800"``): not a character, and no UTF-8 writer can write it back;
- a YAML alias (``*name``): expanding a few lines of them is how a small file becomes gigabytes ("billion laughs").

Messages never print an unbounded value: ``short`` cuts a repr to a few hundred characters.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import os
import re
import reprlib
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from tunebench.core.errors import InvalidInput, MissingRunFile, RunFileError, TunebenchError
from tunebench.core.io.json_check import REWRITE_HINT, show_json

MAX_DEPTH = 100
"""Deepest nesting read: a config is 3 levels, a results file 6; the YAML composer recurses, and so do the checks and
writers behind every reader."""
YAML_MAX_BYTES = 2**20
"""Presets, rules, probe files, prompt sets, space files: PyYAML reads about a MB a second, and its scanner slows
with every open bracket."""
TEXT_MAX_BYTES = 16 * 2**20
"""Templates and model cards."""
JSON_MAX_BYTES = 2 * 2**30
"""Results files hold every item's record and every transcript."""
LINE_MAX_BYTES = 16 * 2**20
"""One JSON Lines record: a conversation far longer than any model's context."""
SHOWN = 200
"""Characters of a value a message shows at most."""

_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}
_BRACKETS = re.compile(r"[\[\]{}]")
_ESCAPES = re.compile(r"\\[uU]")
"""Only an escape can make a lone surrogate: strict UTF-8 bytes never decode to one."""


def short(value: Any, limit: int = SHOWN) -> str:
    """A repr of ``value`` for a message, at most ``limit`` characters, computed without walking all of it (a value
    may be megabytes long or millions of items deep)."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = r.maxlong = limit
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 6, 6, 6, 6
    try:
        text = r.repr(value)
    except ValueError:  # an integer too long to convert to text
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


@contextlib.contextmanager
def _opened(path: Path, fix: str, error: type[InvalidInput]) -> Iterator[BinaryIO]:
    """``path`` open for reading, every way it cannot be said in the reader's words (``read_bytes``)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below, after the errors of opening are translated)
    except FileNotFoundError:
        missing = MissingRunFile if error is RunFileError else error
        raise missing(f"{path}: no such file; {fix}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a file; {fix}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(
                f"{path}: a symbolic link that leads back to itself (a loop), not a file; point the link at a real "
                f"file or replace it with one; {fix}"
            ) from None
        raise error(f"{path}: cannot be opened ({e.strerror or e}); {fix}") from None
    with f:
        try:
            yield f
        except OSError as e:
            raise error(f"{path}: cannot be read ({e.strerror or e}); {fix}") from None


READ_BLOCK = 1 << 20
"""Bytes read at a time: memory follows the file's size, not the limit."""


def read_bytes(path: str | Path, *, fix: str = REWRITE_HINT, error: type[InvalidInput] = RunFileError,
               limit: int = JSON_MAX_BYTES) -> bytes:  # fmt: skip
    """The bytes of a file, refusing what cannot be a tunebench file before reading it whole.

    Args:
        path: The file.
        fix: What to do about it, appended to each message.
        error: The error class raised (each caller's own: ConfigError, GateError, ProbeError, ...).
        limit: Largest size read, in bytes.

    Raises:
        MissingRunFile: no such file (with ``error`` RunFileError); else ``error``: missing, a folder, a link
            loop, unreadable, or larger than ``limit``.
    """
    path = Path(path)
    with _opened(path, fix, error) as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise error(f"{path}: {_size(st.st_size)}, more than the {_size(limit)} this kind of file may be; {fix}")
        # in blocks: read(limit + 1) would reserve the whole limit up front; a FIFO or device has no size to check
        chunks, size = [], 0
        while size <= limit and (block := f.read(min(READ_BLOCK, limit + 1 - size))):
            chunks.append(block)
            size += len(block)
        data = b"".join(chunks)
    if len(data) > limit:
        raise error(f"{path}: more than the {_size(limit)} this kind of file may be; {fix}")
    return data


def decode(data: bytes, where: str, fix: str = REWRITE_HINT, error: type[InvalidInput] = RunFileError) -> str:
    """Strict UTF-8 text of ``data`` (a leading UTF-8 byte-order mark dropped).

    Raises:
        error: a UTF-16/32 byte-order mark, or the first byte that is not UTF-8, by line, column and byte offset.
    """
    for bom, name in _BOMS.items():
        if data.startswith(bom):
            raise error(f"{where}: {name} text (it starts with a {name} byte-order mark), not UTF-8; save it as UTF-8")
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start + skip
        line = data.count(b"\n", 0, at) + 1
        column = at - (data.rfind(b"\n", 0, at) + 1) + 1
        raise error(
            f"{where}: not UTF-8 text (byte {data[at]:#04x} at line {line}, column {column}, byte offset {at}): "
            f"damaged, or saved in another encoding; {fix}"
        ) from None


def tree_problem(value: Any, strings: bool = True) -> str | None:
    """Why ``value`` (parsed JSON or YAML) cannot be used: nesting deeper than MAX_DEPTH, or (``strings``) a string
    or key holding a lone surrogate; None when it can."""
    stack = [(value, 1) if not isinstance(value, str) else ([value], 0)]  # a lone string is looked at as a list's
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            items: Any = v.items()
        elif isinstance(v, (list, tuple)):
            items = ((None, x) for x in v)
        else:
            continue
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        for k, x in items:
            for s in (k, x):
                if strings and isinstance(s, str) and not s.isascii() and not _encodable(s):
                    bad = next(c for c in s if 0xD800 <= ord(c) <= 0xDFFF)
                    return (
                        f"holds a lone surrogate ({ascii(bad)[1:-1]} in {short(s, 60)}): not a character, and no "
                        "UTF-8 text can hold it; write the character itself"
                    )
            if isinstance(x, (dict, list, tuple)):
                stack.append((x, depth + 1))
    return None


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_tree(value: Any, where: str, fix: str, error: type[InvalidInput], text: str = "\\u") -> Any:
    """``value`` when ``tree_problem`` finds nothing in it, else ``error`` naming ``where``. Strings are looked at
    only when ``text`` (what was parsed) holds an escape, the one way a lone surrogate gets in."""
    problem = tree_problem(value, strings=bool(_ESCAPES.search(text)))
    if problem:
        raise error(f"{where}: {problem}; {fix}")
    return value


def folder_problem(path: str | Path, must_exist: bool = True) -> str | None:
    """Why ``path`` cannot be used as a folder, in words (a link that loops, a file, nothing there when
    ``must_exist``), or None when it can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return "a symbolic link to something that is not there; point it at a real folder or remove it"
        return "no such folder" if must_exist else None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link that leads back to itself (a loop); point it at a real folder or remove it"
        return f"cannot be reached ({e.strerror or e})"
    return None if stat.S_ISDIR(st.st_mode) else "a file, not a folder"


# ----------------------------------------------------------------------------- JSON


def parse_json(data: bytes | str, where: str, fix: str = REWRITE_HINT, error: type[InvalidInput] = RunFileError) -> Any:
    """JSON text (or its bytes), checked: UTF-8, valid, not nested too deeply, no lone surrogate.

    Raises:
        error: what is wrong and where, with ``fix``.
    """
    text = decode(data, where, fix, error) if isinstance(data, bytes) else data
    if not text.strip():
        raise error(f"{where}: empty or blank: not valid JSON (written by an interrupted copy?); {fix}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})"
    except RecursionError:
        problem = f"not valid JSON for tunebench (nested too deeply to read: more than {MAX_DEPTH} levels)"
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        problem = f"not valid JSON for tunebench ({short(str(e))})"
    else:
        return check_tree(value, where, fix, error, text)
    raise error(f"{where}: {problem}; {fix}")


def read_json(path: str | Path, fix: str = REWRITE_HINT, *, error: type[InvalidInput] = RunFileError,
              limit: int = JSON_MAX_BYTES) -> Any:  # fmt: skip
    """Read a JSON file, with an error that names the file and says how to write it again.

    Args:
        path: The file.
        fix: What to do when it is damaged (e.g. "re-run `tunebench eval RUN`"), appended to the message.
        error: The error class raised (RunFileError for a run folder's files).
        limit: Largest size read, in bytes.

    Raises:
        MissingRunFile: no such file (a FileNotFoundError too).
        RunFileError: unreadable, too large, not UTF-8, empty, not valid JSON, nested too deeply, or holding a
            lone surrogate.
    """
    return parse_json(read_bytes(path, fix=fix, error=error, limit=limit), str(path), fix, error)


def read_json_object(path: str | Path, fix: str = REWRITE_HINT, *, error: type[InvalidInput] = RunFileError) -> dict:
    """``read_json`` of a file whose top level must be an object (a manifest, a state file, a report).

    Raises:
        error: what ``read_json`` refuses, or a top level that is not an object.
    """
    data = read_json(path, fix, error=error)
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be an object, got {show_json(data)}; {fix}")
    return data


# ----------------------------------------------------------------------------- YAML


class _Refused(yaml.composer.ComposerError, TunebenchError):
    """What StrictLoader refuses (an alias, nesting), as opposed to YAML that is not valid; never leaves this module
    (the readers raise each caller's own error class)."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader (no Python objects built) that refuses aliases and nesting deeper than MAX_DEPTH as it composes,
    before anything is expanded or built."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _Refused(
                None,
                None,
                "an alias (*name) repeats an anchored value; tunebench does not expand aliases (a few lines of them "
                "can grow to gigabytes): write the value out where it is used",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def yaml_problem(e: yaml.YAMLError, text: str) -> tuple[int | None, int | None, str]:
    """(line, column, what) of a YAML error, 1-based, for a message."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "not valid YAML"
        return (mark.line + 1, mark.column + 1, what) if mark else (None, None, what)
    if isinstance(e, yaml.reader.ReaderError):  # a control character: its position is in characters
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        code = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "\0")
        return line, column, f"a control character (U+{code:04X}) that YAML does not allow"
    return None, None, short(str(e))


def _flow_depth(text: str) -> tuple[int, int]:
    """(deepest run of open flow brackets, the line it is reached on); brackets inside quotes count too, so it is an
    upper bound of the real nesting, read before PyYAML's scanner, which takes time in the depth for every token."""
    depth = deepest = at = 0
    for m in _BRACKETS.finditer(text):
        depth = depth + 1 if m.group() in "[{" else max(depth - 1, 0)
        if depth > deepest:
            deepest, at = depth, m.start()
    return deepest, text.count("\n", 0, at) + 1


def load_yaml(text: str, loader: type = StrictLoader) -> Any:
    """``yaml.load`` with the reader's refusals (``loader`` a StrictLoader subclass), each as a marked YAML error.

    Raises:
        yaml.YAMLError: not valid YAML, an alias, nesting deeper than MAX_DEPTH (a ``problem_mark`` says where).
    """
    deepest, line = _flow_depth(text)
    if deepest > MAX_DEPTH:
        mark = yaml.Mark("<text>", 0, line - 1, 0, None, None)
        raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise _Refused(None, None, "nested too deeply to read", None) from None
    except ValueError as e:  # an integer of more than 4300 digits, which Python refuses to convert
        raise _Refused(None, None, f"a value Python cannot read ({short(str(e), 100)})", None) from None


def parse_yaml(text: str, where: str, fix: str, error: type[InvalidInput], loader: type = StrictLoader) -> Any:
    """YAML text, checked: no alias, not nested too deeply, no lone surrogate (``loader`` a StrictLoader subclass).

    Raises:
        error: ``where line N: not valid YAML (what)``, or what else is wrong, with ``fix``.
    """
    try:
        value = load_yaml(text, loader)
    except yaml.YAMLError as e:
        line, _, what = yaml_problem(e, text)
        raise error(f"{where}{f' line {line}' if line else ''}: not valid YAML ({what}); {fix}") from None
    return check_tree(value, where, fix, error, text)


def parse_yaml_value(text: str, where: str, fix: str, error: type[InvalidInput]) -> Any:
    """A value typed on a command line (``train.lr=1e-4``, ``eval.probe_files=[a.yaml]``), read as YAML; text that
    is not YAML is itself, a string, as a shell user means it. What ``parse_yaml`` refuses is refused here too, and
    so is a byte that was not UTF-8 (Python hands it over as a lone surrogate).

    Raises:
        error: not UTF-8, an alias, nested too deeply, a lone surrogate escape.
    """
    if not _encodable(text):
        raise error(f"{where}: holds bytes that are not UTF-8 (shown as {short(text, 80)}); type it as UTF-8 text")
    try:
        load_yaml(text)
    except _Refused:
        pass  # parse_yaml says why
    except yaml.YAMLError:
        return text
    return parse_yaml(text, where, fix, error)


def read_yaml_text(path: str | Path, fix: str, error: type[InvalidInput], limit: int = YAML_MAX_BYTES) -> str:
    """The text of a YAML file (UTF-8, within ``limit``), for a caller that parses it with its own loader."""
    return decode(read_bytes(path, fix=fix, error=error, limit=limit), str(path), fix, error)


def read_yaml(path: str | Path, fix: str, error: type[InvalidInput], *, loader: type = StrictLoader,
              limit: int = YAML_MAX_BYTES) -> Any:  # fmt: skip
    """Read a YAML file a user wrote or a run folder holds (``parse_yaml`` says what is refused).

    Raises:
        error: missing, unreadable, too large, not UTF-8, not valid YAML, an alias, too deep, a lone surrogate.
    """
    return parse_yaml(read_yaml_text(path, fix, error, limit), str(path), fix, error, loader)


def read_text(path: str | Path, fix: str, error: type[InvalidInput] = RunFileError, limit: int = TEXT_MAX_BYTES) -> str:
    """A text file (a template, a model card) as strict UTF-8, within ``limit``."""
    return decode(read_bytes(path, fix=fix, error=error, limit=limit), str(path), fix, error)


# ----------------------------------------------------------------------------- JSON Lines


@dataclass
class JsonLines:
    """What a JSON Lines file holds: the records that read, and each line that did not with the reason."""

    records: list[tuple[int, Any]] = field(default_factory=list)
    """(line number, record)."""
    bad: list[tuple[int, str]] = field(default_factory=list)
    """(line number, why): not UTF-8, not JSON, too deep, a lone surrogate, too long."""
    cut_last: int | None = None
    """The last line's number when it did not read and has no line end (a file cut short)."""


def decode_line(raw: bytes) -> Any:
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
    problem = tree_problem(record, strings=bool(_ESCAPES.search(line)))
    if problem and "surrogate" in problem:
        raise ValueError("holds a lone surrogate escape such as \\ud800 (not a character; no UTF-8 text can hold it)")
    if problem:
        raise ValueError(f"nested too deeply to be a conversation (more than {MAX_DEPTH} levels)")
    return record


def _lines(path: Path, fix: str, error: type[InvalidInput], limit: int) -> Iterator[tuple[int, bytes | None, bool]]:
    """(line number, bytes or None when longer than ``limit``, ended by a line end) of each line; ``\\n``, ``\\r\\n``
    and ``\\r`` end a line, as text mode reads them."""
    lineno = 0
    with _opened(path, fix, error) as f:
        while True:
            chunk = f.readline(limit + 1)
            if not chunk:
                return
            if len(chunk) > limit and not chunk.endswith(b"\n"):
                while (more := f.readline(limit + 1)) and not more.endswith(b"\n"):
                    pass  # the rest of the overlong line, never held whole
                lineno += 1
                yield lineno, None, True
                continue
            for part in chunk.splitlines(keepends=True):  # a lone \r inside ends a line too
                lineno += 1
                yield lineno, part, part.endswith((b"\n", b"\r"))


def read_json_lines(path: str | Path, fix: str = REWRITE_HINT, error: type[InvalidInput] = RunFileError,
                    limit: int = LINE_MAX_BYTES) -> JsonLines:  # fmt: skip
    """Every record of a JSON Lines file, one line at a time: a line that does not read is listed with its reason
    (``decode_line``), never the end of the file; blank lines are skipped.

    Raises:
        error: the file itself cannot be read (missing, a folder, a link loop).
    """
    out = JsonLines()
    last = None
    for lineno, raw, ended in _lines(Path(path), fix, error, limit):
        last = None
        if raw is None:
            out.bad.append((lineno, f"longer than {_size(limit)}: not one record"))
            continue
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # a byte-order mark is not part of the first record
            raw = raw[len(codecs.BOM_UTF8) :]
        if not raw.strip():
            continue
        try:
            out.records.append((lineno, decode_line(raw)))
        except ValueError as e:
            out.bad.append((lineno, str(e)))
            last = lineno if not ended else None
    if last is not None:
        out.bad.pop()
        out.cut_last = last
    return out
