"""Standardize ShareGPT turns into {role, content} conversations, drop what cannot be trained (counted by reason),
and split by content hash (equal content, equal split), with the caps applied."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunebench.core import output
from tunebench.core.config import DataConfig
from tunebench.data.sources import DataError, RawData

# Unsloth's standardize_sharegpt aliases (unsloth_zoo.dataset_utils.standardize_data_formats), compared
# case-insensitively. Other roles seen in real ShareGPT dumps (chatgpt, bing, bard) say which product
# produced a turn, not which side of the dialogue it is; Unsloth refuses them, and so do we (per conversation).
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "input": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "output": "assistant",
}

DROP_REASONS = {
    "malformed": "line not UTF-8, not JSON, nested too deeply or holding a lone surrogate; or record not a mapping "
    "with a list of turns",
    "empty": "no turns",
    "unknown_role": "a turn's role is not one of " + ", ".join(sorted(ROLE_ALIASES)),
    "empty_content": "a turn's content is empty or not a string",
    "system_only": "only system turns",
    "no_assistant_turn": "no assistant turn",
    "starts_with_assistant": "first non-system turn is the assistant's",
    "not_alternating": "user and assistant turns do not alternate (or a system turn mid-conversation)",
    "ends_with_user": "last turn is the user's (nothing to learn from it)",
    "over_max_length": "longer than data.max_length (truncation=drop)",
    "no_assistant_token_within_max_length": "no assistant token left inside data.max_length (truncation=truncate)",
}

SPLITS = ("train", "validation", "test")


@dataclass
class Conversation:
    """A trainable conversation in {role, content} form."""

    id: str
    messages: list[dict[str, str]]
    key: str = ""
    """Content hash (after normalization): decides the split; equal content, equal split."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "key": self.key, "messages": self.messages}


def _turns_of(record: Any, conversations_field: str) -> list[Any] | None:
    if not isinstance(record, dict):
        return None
    for name in (conversations_field, "conversations", "messages"):
        turns = record.get(name)
        if isinstance(turns, list):
            return turns
    return None


def standardize(
    record: Any, conversations_field: str = "conversations"
) -> tuple[list[dict[str, str]] | None, str | None]:
    """Map one record to {role, content} messages, or return the reason it cannot be trained.

    Returns:
        (messages, None) or (None, drop_reason) with drop_reason a key of DROP_REASONS.
    """
    turns = _turns_of(record, conversations_field)
    if turns is None:
        return None, "malformed"
    if not turns:
        return None, "empty"
    messages: list[dict[str, str]] = []
    bad_content = False
    for t in turns:
        if not isinstance(t, dict):
            return None, "malformed"
        role = t.get("from", t.get("role"))
        content = t.get("value", t.get("content"))
        mapped = ROLE_ALIASES.get(role.strip().lower()) if isinstance(role, str) else None
        if mapped is None:
            return None, "unknown_role"
        if not isinstance(content, str) or not content.strip():
            bad_content = True
        messages.append({"role": mapped, "content": content if isinstance(content, str) else ""})
    if bad_content:
        return None, "empty_content"
    roles = [m["role"] for m in messages]
    if all(r == "system" for r in roles):
        return None, "system_only"
    if "assistant" not in roles:
        return None, "no_assistant_turn"
    body = roles[1:] if roles[0] == "system" else roles
    if body[0] == "assistant":
        return None, "starts_with_assistant"
    for i, r in enumerate(body):
        if r != ("user" if i % 2 == 0 else "assistant"):
            return None, "not_alternating"
    if body[-1] == "user":
        return None, "ends_with_user"
    return messages, None


def normalize_for_hash(messages: list[dict[str, str]]) -> str:
    """Content normalized so that trivially different copies (case, spacing, unicode form) hash alike."""
    parts = []
    for m in messages:
        text = unicodedata.normalize("NFKC", m["content"]).lower()
        parts.append(m["role"] + "\x1f" + re.sub(r"\s+", " ", text).strip())
    return "\x1e".join(parts)


def content_key(messages: list[dict[str, str]], salt: str) -> str:
    """Split key: SHA-256 of the salt and the normalized content."""
    return hashlib.sha256((salt + "\x1d" + normalize_for_hash(messages)).encode("utf-8")).hexdigest()


def split_of(key: str, validation_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the key's leading 60 bits, read as a uniform number in [0, 1)."""
    u = int(key[:15], 16) / float(16**15)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


@dataclass
class Standardized:
    """The outcome of standardizing and splitting a source."""

    splits: dict[str, list[Conversation]]
    dropped: Counter
    warnings: list[str]
    n_records: int
    duplicates: int
    uncapped: dict[str, int]
    source: str
    identity: str
    drop_examples: dict[str, list[str]] = field(default_factory=dict)
    malformed_lines: list[int] = field(default_factory=list)
    """Line numbers of the source lines that could not be read (JSON Lines), all of them."""
    malformed_reasons: list[str] = field(default_factory=list)
    """Why, for the first few of them ('line 7: not UTF-8 (byte 0xff at column 3)')."""


MALFORMED_SHOWN = 20
"""Line numbers of unreadable lines listed in the data report; the count covers them all."""


def standardize_and_split(raw: RawData, cfg: DataConfig) -> Standardized:
    """Standardize every record, drop with reasons, split by content hash, apply the caps.

    Raises:
        DataError: nothing trainable remains.
    """
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    dropped["malformed"] += len(raw.malformed)
    buckets: dict[str, list[Conversation]] = {s: [] for s in SPLITS}
    seen: Counter = Counter()
    for idx, record in enumerate(output.bar(raw.records, desc="standardize", unit="conv", leave=False)):
        rid = str(record.get("id", idx)) if isinstance(record, dict) else str(idx)
        messages, reason = standardize(record, cfg.conversations_field)
        key = _split_key(rid, messages, cfg.split_salt) if reason is None else None
        if reason is None and key is None:
            reason = "malformed"  # a lone surrogate (\ud800) from a .json, parquet or hub source
        if reason is not None:
            dropped[reason] += 1
            examples.setdefault(reason, [])
            if len(examples[reason]) < 5:  # written to the report: a lone surrogate in the id shown escaped
                examples[reason].append(rid.encode("utf-8", "backslashreplace").decode("utf-8"))
            continue
        seen[key] += 1
        split = split_of(key, cfg.validation_fraction, cfg.test_fraction)
        buckets[split].append(Conversation(id=rid, messages=messages, key=key))
    duplicates = sum(c - 1 for c in seen.values() if c > 1)
    uncapped = {s: len(v) for s, v in buckets.items()}
    caps = {"train": cfg.max_train, "validation": cfg.max_validation, "test": cfg.max_test}
    for s in SPLITS:
        buckets[s].sort(key=lambda c: (c.key, c.id))  # lowest hashes first: a deterministic random sample
        if caps[s] is not None:
            buckets[s] = buckets[s][: caps[s]]
    if not buckets["train"]:
        total = sum(dropped.values())
        raise DataError(
            f"{raw.source}: no trainable conversation remains ({len(raw.records)} records, {total} dropped: "
            + ", ".join(f"{k}={v}" for k, v in dropped.most_common())
            + "). Check data.conversations_field and the role names (see DROP_REASONS in train/data.py)."
        )
    return Standardized(
        splits=buckets,
        dropped=dropped,
        warnings=list(raw.warnings),
        n_records=len(raw.records) + len(raw.malformed),
        duplicates=duplicates,
        uncapped=uncapped,
        source=raw.source,
        identity=raw.identity,
        drop_examples=examples,
        malformed_lines=list(raw.malformed_lines),
        malformed_reasons=raw.malformed[:5],
    )


def _split_key(rid: str, messages: list[dict[str, str]], salt: str) -> str | None:
    """The content key, or None when the id or a turn holds a lone surrogate: such text can be neither hashed,
    tokenized nor written as UTF-8, so the conversation is dropped as malformed rather than crash a later step."""
    try:
        rid.encode("utf-8")
        return content_key(messages, salt)
    except UnicodeEncodeError:
        return None
