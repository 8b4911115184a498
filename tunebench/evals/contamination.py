"""Train/eval overlap: which evaluation items share a word n-gram (default 13 words) with the training texts.

Words are lowercased ``\\w+`` runs (punctuation dropped). Only the evaluation side is held in memory: its
n-grams are hashed into a small set, and the training texts are streamed past it in chunks, each chunk's
n-gram hashes computed at once with numpy (a polynomial hash over per-word hashes, wrapping at 2**64): time
linear in the training words and memory bounded by a chunk (``CHUNK_WORDS``) besides the eval side, instead of a
set of every training n-gram.

An item shorter than n words is checked as one shingle (the whole item) when it has at least
``MIN_SHINGLE_WORDS`` words; shorter ones are reported as too short to judge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunebench.core.errors import ConfigError

MIN_SHINGLE_WORDS = 8
"""Items with fewer words than this are not checked: a short phrase in common says nothing."""
CHUNK_WORDS = 1 << 18
"""Training words hashed per numpy pass; bounds the scan's memory (~20 MB) whatever the corpus size."""
_WORD = re.compile(r"\w+")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier: successive words mix into every bit
_SEPARATOR = 0x5EED5EED5EED5EED  # a pseudo-word between texts, so no n-gram spans two of them


def words(text: str) -> list[str]:
    """Lowercased word tokens with punctuation stripped."""
    return _WORD.findall(text.lower())


def conversation_text(messages: Iterable[Any]) -> str:
    """The text of a conversation: every turn's content, one turn per line.

    Args:
        messages: ``{"role", "content"}`` dicts (ShareGPT ``{"from", "value"}`` also accepted) or strings.

    Returns:
        The contents joined with newlines; turns without text are skipped.
    """
    parts = []
    for m in messages:
        text = m if isinstance(m, str) else (m.get("content") if "content" in m else m.get("value"))
        if isinstance(text, str) and text:
            parts.append(text)
    return "\n".join(parts)


def _word_hashes(tokens: list[str]) -> np.ndarray:
    return np.fromiter((hash(w) for w in tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)


def _gram_hashes(h: np.ndarray, lengths: Iterable[int]) -> dict[int, np.ndarray]:
    """For each length L, the hash of every window of L consecutive word hashes (numpy wraps mod 2**64)."""
    wanted = sorted(set(lengths))
    out: dict[int, np.ndarray] = {}
    if not wanted or len(h) < wanted[0]:
        return out
    acc = h.copy()
    with np.errstate(over="ignore"):
        for length in range(1, wanted[-1] + 1):
            if length > 1:
                acc = acc[:-1] * _BASE + h[length - 1 :]
            if length in wanted:
                out[length] = acc
            if len(acc) <= 1:
                break
    return out


@dataclass
class _Item:
    id: str
    grams: list[tuple[str, ...]] = field(default_factory=list)
    hashes: np.ndarray | None = None
    found: set[int] = field(default_factory=set)


def _prepare(items: list[tuple[str, str]], n: int) -> tuple[list[_Item], list[str]]:
    prepared, too_short = [], []
    for item_id, text in items:
        tokens = words(text)
        if len(tokens) < MIN_SHINGLE_WORDS:
            too_short.append(str(item_id))
            continue
        size = min(n, len(tokens))  # shorter than n: the whole item is its one shingle
        item = _Item(id=str(item_id))
        item.grams = [tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
        item.hashes = _gram_hashes(_word_hashes(tokens), [size])[size]
        prepared.append(item)
    return prepared, too_short


def contamination(
    train_texts: Iterable[str],
    eval_sets: dict[str, list[tuple[str, str]]],
    n: int = 13,
    worst: int = 5,
) -> dict[str, Any]:
    """Share of each evaluation set's items that share at least one word n-gram with the training texts.

    Args:
        train_texts: Training documents (e.g. ``conversation_text`` of each training conversation); any
            iterable, read once.
        eval_sets: ``{set name: [(item id, item text), ...]}``, e.g. from ``task_documents``.
        n: n-gram length in words (13, as in the GPT-3 paper's decontamination).
        worst: How many of the most overlapping items to list per set.

    Returns:
        ``{"n", "min_shingle_words", "train_texts", "train_words", "sets": {name: {"items", "checked",
        "contaminated", "share", "too_short", "too_short_ids", "worst": [{"id", "matched", "ngrams",
        "fraction", "example"}]}}}``. ``share`` is contaminated / checked (None when nothing could be
        checked); ``worst`` lists contaminated items, most overlapping first.

    Raises:
        ConfigError: ``n`` below ``MIN_SHINGLE_WORDS`` (a ValueError; app.preflight refuses it at config time).
        ValueError: ``worst`` negative.
    """
    if n < MIN_SHINGLE_WORDS:
        raise ConfigError(
            f"eval.contamination_ngram: {n} is below {MIN_SHINGLE_WORDS}, the shortest n-gram the "
            "overlap check accepts; use 13 (the default)",
            key="eval.contamination_ngram",
        )
    if worst < 0:
        raise ValueError(f"worst={worst}: must be 0 or more")
    sets = {name: _prepare(items, n) for name, items in eval_sets.items()}
    lookup = _lookup_tables([item for prepared, _ in sets.values() for item in prepared])
    hits, n_texts, n_words = _scan_training(train_texts, lookup)
    report: dict[str, Any] = {
        "n": n,
        "min_shingle_words": MIN_SHINGLE_WORDS,
        "train_texts": n_texts,
        "train_words": n_words,
        "sets": {name: _set_report(prepared, too_short, hits, worst) for name, (prepared, too_short) in sets.items()},
    }
    return report


def _lookup_tables(items: list[_Item]) -> dict[int, np.ndarray]:
    """Per shingle length, the sorted eval hashes to look training windows up in."""
    wanted: dict[int, list[np.ndarray]] = {}
    for item in items:
        wanted.setdefault(len(item.grams[0]), []).append(item.hashes)
    return {length: np.unique(np.concatenate(arrays)) for length, arrays in wanted.items()}


def _scan_training(train_texts: Iterable[str], lookup: dict[int, np.ndarray]) -> tuple[dict[int, set[int]], int, int]:
    """Stream the training texts past the eval hashes in chunks; returns the hashes found per shingle length and
    the number of training texts and words read."""
    hits: dict[int, set[int]] = {length: set() for length in lookup}
    n_texts = n_words = 0
    buffer: list[int] = []
    for text in train_texts:
        n_texts += 1
        tokens = words(text)
        n_words += len(tokens)
        buffer.extend(map(hash, tokens))
        buffer.append(_SEPARATOR)
        if len(buffer) >= CHUNK_WORDS:  # chunks end between texts: no n-gram is cut in two
            if lookup:
                _scan_chunk(buffer, lookup, hits)
            buffer = []
    if buffer and lookup:
        _scan_chunk(buffer, lookup, hits)
    return hits, n_texts, n_words


def _scan_chunk(buffer: list[int], lookup: dict[int, np.ndarray], hits: dict[int, set[int]]) -> None:
    """Add to ``hits`` the eval hashes that a chunk of training word hashes contains."""
    h = np.array(buffer, dtype=np.int64).view(np.uint64)
    for length, grams in _gram_hashes(h, lookup).items():
        table = lookup[length]
        pos = np.minimum(np.searchsorted(table, grams), len(table) - 1)
        hits[length].update(np.unique(grams[table[pos] == grams]).tolist())


def _set_report(prepared: list[_Item], too_short: list[str], hits: dict[int, set[int]], worst: int) -> dict[str, Any]:
    """One evaluation set's overlap: counts, share, and its ``worst`` most overlapping items."""
    rows = []
    for item in prepared:
        found = hits[len(item.grams[0])]
        matched = [i for i, x in enumerate(item.hashes.tolist()) if x in found]
        if matched:
            rows.append(
                {
                    "id": item.id,
                    "matched": len(matched),
                    "ngrams": len(item.grams),
                    "fraction": len(matched) / len(item.grams),
                    "example": " ".join(item.grams[matched[0]]),
                }
            )
    rows.sort(key=lambda r: (-r["fraction"], -r["matched"], r["id"]))
    checked = len(prepared)
    return {
        "items": checked + len(too_short),
        "checked": checked,
        "contaminated": len(rows),
        "share": len(rows) / checked if checked else None,
        "too_short": len(too_short),
        "too_short_ids": too_short[:20],
        "worst": rows[:worst],
    }
