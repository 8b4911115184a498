"""Markdown tables: the one renderer every report, data report and benchmark table goes through."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import tabulate

from tunebench.core.numbers import fmt


def cell(value: Any) -> str:
    """One table cell: pipes escaped, newlines flattened, nested data as compact JSON."""
    if value is None:
        return "–"
    if isinstance(value, float):
        text = fmt(value)
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        text = text if len(text) <= 160 else text[:157] + "..."
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\r", "").replace("\n", " ")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table; cells are passed through ``cell`` and never re-parsed as numbers."""
    return tabulate(
        [[cell(v) for v in r] for r in rows], headers=list(headers), tablefmt="github", disable_numparse=True
    )


def kv_table(pairs: Iterable[tuple[str, Any]], headers: Sequence[str] = ("", "")) -> str | None:
    """Two-column table of the pairs whose value is present."""
    rows = [(k, v) for k, v in pairs if v is not None and v != {} and v != []]
    return table(rows, headers) if rows else None


def compact_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a GitHub-flavoured Markdown table without column padding, for cells formatted by the caller.

    Args:
        headers: column names; a trailing ``:`` right-aligns that column (``"tokens/s:"``).
        rows: one sequence of cells per row, each written as ``str(cell)``; an empty cell is a single space.

    Returns:
        The header, the alignment row and one line per row (no trailing newline).
    """
    names = [h.rstrip(":") for h in headers]
    lines = [
        "| " + " | ".join(names) + " |",
        "|" + "|".join("---:" if h.endswith(":") else "---" for h in headers) + "|",
    ]
    for r in rows:
        lines.append("|" + "|".join(f" {v} " if str(v) else " " for v in r) + "|")
    return lines
