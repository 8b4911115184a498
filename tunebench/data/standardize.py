"""Standardize records into {role, content} conversations, drop what cannot be trained (counted by reason),
and split by content hash (equal content, equal split), with the caps applied.

Three record formats are read, each record by its own (``data.format: auto``) or all by one named format:
- ``sharegpt``: ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}``;
- ``openai``: ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}``;
- ``alpaca``: ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` and ``system`` optional).
A list of turns is ShareGPT when its turns carry ``from``/``value`` and OpenAI messages when they carry
``role``/``content``, whichever field holds it (``data.conversations_field``, ``conversations`` or ``messages``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tunebench.core import output
from tunebench.core.config_schema import DataConfig
from tunebench.core.errors import DataError
from tunebench.data.sources import RawData

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

# A tool's answer to an assistant's call: OpenAI's `tool` (and legacy `function`), Llama 3's `ipython`,
# LLaMA-Factory's ShareGPT `observation`. Kept as role `tool` where the chat template writes it verbatim.
TOOL_ROLES = {"tool": "tool", "ipython": "tool", "function": "tool", "observation": "tool"}

FORMATS = ("sharegpt", "openai", "alpaca")
"""The record formats ``data.format`` names (``auto`` reads each record in its own)."""

DROP_REASONS = {
    "malformed": "line not UTF-8, not JSON, nested too deeply or holding a lone surrogate; or record neither a "
    "mapping with a list of turns nor an Alpaca record (instruction, output)",
    "wrong_format": "record not in the format data.format names (data.format=auto reads sharegpt, openai and "
    "alpaca records alike)",
    "empty": "no turns",
    "unknown_role": "a turn's role is not one of " + ", ".join(sorted({**ROLE_ALIASES, **TOOL_ROLES})),
    "tool_calls": "an assistant turn calls tools through a structured tool_calls/function_call field, which is not "
    "trained text; write the call into the turn's content",
    "tool_turn_not_rendered": "a tool turn, which the chat template does not write verbatim (llama-3.1 writes it as "
    "JSON); model.chat_template=chatml keeps it",
    "empty_content": "a turn's content is empty or not a string",
    "system_only": "only system turns",
    "no_assistant_turn": "no assistant turn",
    "starts_with_assistant": "first non-system turn is the assistant's",
    "not_alternating": "user and assistant turns do not alternate (or a system turn mid-conversation, or a tool "
    "turn not right after an assistant or tool turn)",
    "ends_with_user": "last turn is the user's (nothing to learn from it)",
    "ends_with_tool": "last turn is a tool's (no answer to learn from it)",
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


def _turns_of(record: dict[str, Any], conversations_field: str) -> tuple[str, list[Any]] | None:
    """(field name, list of turns) of a conversation record, or None."""
    for name in (conversations_field, "conversations", "messages"):
        turns = record.get(name)
        if isinstance(turns, list):
            return name, turns
    return None


def record_format(record: Any, conversations_field: str = "conversations") -> str | None:
    """The format of one record: ``sharegpt``, ``openai``, ``alpaca``, or None (none of them).

    A list of turns is told by its first turn's keys (``from``/``value``: ShareGPT; ``role``/``content``: OpenAI
    messages), or, with no turn to tell by, by its field (``messages``: OpenAI; any other: ShareGPT).
    """
    if not isinstance(record, dict):
        return None
    found = _turns_of(record, conversations_field)
    if found is not None:
        name, turns = found
        first = next((t for t in turns if isinstance(t, dict)), None)
        if first is None:
            return "openai" if name == "messages" else "sharegpt"
        return "sharegpt" if "from" in first or "value" in first else "openai"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _alpaca_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """An Alpaca record as turns: instruction and input (after a blank line) are the user's, output the
    assistant's; a ``system`` field, if any, comes first."""
    instruction, extra, output = record.get("instruction"), record.get("input"), record.get("output")
    user = instruction
    if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
        user = f"{instruction}\n\n{extra}"
    elif extra is not None and not isinstance(extra, str):
        user = None  # an input that is not text leaves the turn unusable, as a content that is not text does
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    system = record.get("system")
    if system is not None and not (isinstance(system, str) and not system.strip()):
        turns.insert(0, {"role": "system", "content": system})
    return turns


def standardize(
    record: Any, conversations_field: str = "conversations", fmt: str = "auto"
) -> tuple[list[dict[str, str]] | None, str | None]:
    """Map one record to {role, content} messages, or return the reason it cannot be trained.

    Args:
        fmt: ``data.format``: ``auto`` reads a record in whichever format it is; a named format drops the others.

    Returns:
        (messages, None) or (None, drop_reason) with drop_reason a key of DROP_REASONS.
    """
    found = record_format(record, conversations_field)
    if found is None:
        return None, "malformed"
    if fmt not in ("auto", found):
        return None, "wrong_format"
    if found == "alpaca":
        turns = _alpaca_messages(record)
    else:
        _, turns = _turns_of(record, conversations_field) or ("", [])
    if not turns:
        return None, "empty"
    messages: list[dict[str, str]] = []
    bad_content = False
    for t in turns:
        if not isinstance(t, dict):
            return None, "malformed"
        role = t.get("from", t.get("role"))
        content = t.get("value", t.get("content"))
        key = role.strip().lower() if isinstance(role, str) else None
        mapped = ROLE_ALIASES.get(key, TOOL_ROLES.get(key)) if key is not None else None
        if mapped is None:
            return None, "unknown_role"
        if mapped == "assistant" and (t.get("tool_calls") or t.get("function_call")):
            return None, "tool_calls"
        if not isinstance(content, str) or not content.strip():
            bad_content = True
        messages.append({"role": mapped, "content": content if isinstance(content, str) else ""})
    if bad_content:
        return None, "empty_content"
    why = _order_problem([m["role"] for m in messages])
    return (None, why) if why else (messages, None)


def _order_problem(roles: list[str]) -> str | None:
    """Why turns in this order cannot be trained, or None: user and assistant alternate, tool turns answer an
    assistant turn (one or several in a row) and an assistant turn follows them, a system turn only comes first."""
    if all(r == "system" for r in roles):
        return "system_only"
    if "assistant" not in roles:
        return "no_assistant_turn"
    body = roles[1:] if roles[0] == "system" else roles
    if body[0] == "assistant":
        return "starts_with_assistant"
    follows = {"user": ("", "assistant"), "assistant": ("user", "tool"), "tool": ("assistant", "tool")}
    for prev, r in zip(["", *body], body, strict=False):
        if prev not in follows.get(r, ()):
            return "not_alternating"
    if body[-1] == "user":
        return "ends_with_user"
    if body[-1] == "tool":
        return "ends_with_tool"
    return None


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
    formats: Counter = field(default_factory=Counter)
    """Records read in each format (``record_format``); the ones in none are counted as malformed."""


MALFORMED_SHOWN = 20
"""Line numbers of unreadable lines listed in the data report; the count covers them all."""


def standardize_and_split(raw: RawData, cfg: DataConfig, keep_tools: bool = True) -> Standardized:
    """Standardize every record, drop with reasons, split by content hash, apply the caps.

    Args:
        keep_tools: the chat template writes tool turns verbatim (``renders_tool_turns``); if not, a conversation
            with a tool turn is dropped (``tool_turn_not_rendered``).

    Raises:
        DataError: nothing trainable remains.
    """
    dropped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    dropped["malformed"] += len(raw.malformed)
    buckets: dict[str, list[Conversation]] = {s: [] for s in SPLITS}
    seen: Counter = Counter()
    formats: Counter = Counter()
    for idx, record in enumerate(output.bar(raw.records, desc="standardize", unit="conv", leave=False)):
        rid = str(record.get("id", idx)) if isinstance(record, dict) else str(idx)
        found = record_format(record, cfg.conversations_field)
        if found is not None:
            formats[found] += 1
        messages, reason = standardize(record, cfg.conversations_field, cfg.format)
        if messages is not None and not keep_tools and any(m["role"] == "tool" for m in messages):
            messages, reason = None, "tool_turn_not_rendered"
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
        first = f"; first unreadable: {raw.malformed[0]}" if raw.malformed else ""
        n = len(raw.records) + len(raw.malformed)
        if n == 0:
            raise DataError(f"{raw.source}: holds no records at all (an empty file?); give a file of conversations")
        raise DataError(
            f"{raw.source}: no trainable conversation remains ({n} records, {total} dropped: "
            + ", ".join(f"{k}={v}" for k, v in dropped.most_common() if v)
            + f"{first}). README's 'Data' section says what each reason means (tunebench.data.standardize."
            "DROP_REASONS); check data.format, data.conversations_field and the role names, or fix the lines named."
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
        formats=formats,
    )


def _split_key(rid: str, messages: list[dict[str, str]], salt: str) -> str | None:
    """The content key, or None when the id or a turn holds a lone surrogate: such text can be neither hashed,
    tokenized nor written as UTF-8, so the conversation is dropped as malformed rather than crash a later step."""
    try:
        rid.encode("utf-8")
        return content_key(messages, salt)
    except UnicodeEncodeError:
        return None
