"""Conversations: standardize ShareGPT turns, drop what cannot be trained (counted by reason), split by
content hash, render with the chat template, and compute the assistant-token mask.

The mask is computed here and only here; training (where the backend does not mask itself) and the
perplexity evaluation both use it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import re
import statistics
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from tqdm.auto import tqdm

from tunebench.core.config import DataConfig
from tunebench.core.errors import MissingRunFile, TemplateError
from tunebench.core.io import atomic_write_json, atomic_write_text, check_json, fingerprint, read_json
from tunebench.core.markdown import table
from tunebench.core.threads import tokenizer_threads
from tunebench.data.sources import DataError, RawData, read_source
from tunebench.data.splits import check_splits

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- standardize + validate


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
    for idx, record in enumerate(tqdm(raw.records, desc="standardize", unit="conv", leave=False)):
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


# ----------------------------------------------------------------------------- render + mask


@dataclass
class TemplateInfo:
    """Facts derived from a chat template by rendering sentinel conversations."""

    name: str
    end_of_turn: str
    """Text that closes an assistant turn (a special token such as <|im_end|> or <|eot_id|>)."""
    instruction_part: str
    """Text that opens a user turn (Unsloth's train_on_responses_only instruction_part)."""
    response_part: str
    """Text that opens an assistant turn (Unsloth's response_part)."""
    sha: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def template_info(tok: Any, name: str) -> TemplateInfo:
    """Derive end-of-turn and the user/assistant markers from the template itself, not per model family."""
    u1, a1, u2, a2 = "\u2063U1\u2063", "\u2063A1\u2063", "\u2063U2\u2063", "\u2063A2\u2063"
    msgs = [
        {"role": "user", "content": u1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": u2},
        {"role": "assistant", "content": a2},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    if any(s not in text for s in (u1, a1, u2, a2)):
        raise TemplateError(f"chat template {name!r} does not reproduce message contents verbatim")
    after_user = text[text.index(u1) + len(u1) : text.index(a1)]
    after_assistant = text[text.index(a1) + len(a1) : text.index(u2)]
    ids = tok(after_assistant, add_special_tokens=False)["input_ids"]
    eot = tok.decode(ids[:1]) if ids else ""
    if not eot.strip() or not after_assistant.startswith(eot):
        raise TemplateError(f"chat template {name!r}: cannot find the token that ends an assistant turn")
    response_part = after_user[len(eot) :].lstrip() if after_user.startswith(eot) else after_user.lstrip()
    instruction_part = after_assistant[len(eot) :].lstrip()
    return TemplateInfo(name, eot, instruction_part, response_part, fingerprint(tok.chat_template or ""))


@dataclass
class Encoded:
    """One conversation as model input."""

    id: str
    input_ids: list[int]
    labels: list[int]
    """input_ids on assistant tokens (content + end-of-turn), -100 elsewhere."""
    truncated: bool
    n_tokens: int
    """Tokens before truncation."""

    @property
    def n_assistant(self) -> int:
        return sum(1 for x in self.labels if x != -100)


def content_spans(
    tok: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and return the character span of every message's content.

    Each content is replaced by a unique sentinel and rendered once, so the spans come from the template
    itself (no search for the content text, which could also occur inside the template's own markers).

    Raises:
        TemplateError: the template rewrites message text (strips or changes it), so contents cannot be located.
    """
    sentinels = [f"\u2063S{i}\u2063" for i in range(len(messages))]
    marked = tok.apply_chat_template(
        [dict(m, content=s) for m, s in zip(messages, sentinels, strict=True)],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    spans, shift, pos = [], 0, 0
    for m, s in zip(messages, sentinels, strict=True):
        at = marked.find(s, pos)
        if at < 0:
            raise TemplateError(
                "the chat template changes message text (strips or rewrites it), so message tokens cannot "
                "be located; use model.chat_template=chatml or llama-3.1"
            )
        pos = at + len(s)
        start = at + shift
        spans.append((start, start + len(m["content"])))
        shift += len(m["content"]) - len(s)
    if (
        any(full[a:b] != m["content"] for (a, b), m in zip(spans, messages, strict=True))
        or len(full) != len(marked) + shift
    ):
        raise TemplateError(
            "the chat template changes message text (strips or rewrites it), so message tokens cannot "
            "be located; use model.chat_template=chatml or llama-3.1"
        )
    return full, spans


def _special_tokens(tok: Any) -> dict[str, int]:
    """The tokenizer's special tokens (text -> id): what whole-text tokenization turns into control tokens."""
    found = {str(a.content): i for i, a in getattr(tok, "added_tokens_decoder", {}).items() if a.special}
    for text in getattr(tok, "all_special_tokens", []):
        found.setdefault(text, tok.convert_tokens_to_ids(text))
    return found


def _control_pattern(tok: Any) -> tuple[dict[str, int], re.Pattern[str] | None]:
    """(special token text -> id, a regex matching any of them, longest first)."""
    specials = _special_tokens(tok)
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))) if specials else None
    return specials, pattern


def tokenize_rendered(tok: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize rendered text so that only the template's own markers become control tokens.

    The text is cut at the special tokens that lie in the template's own text (outside every message
    content), exactly where whole-text tokenization would cut; each piece between them is tokenized with
    special tokens split (``split_special_tokens``). So ``<|eot_id|>`` or ``<|im_start|>`` written inside a
    message stays text and cannot forge a turn, while a conversation without such text gets the same ids
    as ``tok(text)``.

    Returns:
        token ids and each token's (start, end) character offsets in ``text``.
    """
    return tokenize_rendered_many(tok, [(text, spans)])[0]


def tokenize_rendered_many(
    tok: Any, items: list[tuple[str, list[tuple[int, int]]]]
) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """``tokenize_rendered`` for many (text, spans) at once: the pieces of every text go to the fast tokenizer as
    one batch, which encodes them in parallel (each piece exactly as alone: no padding, no special tokens added).
    Tokenizing piece by piece cost about 15 tokenizer calls per ShareGPT conversation, most of the data step."""
    specials, pattern = _control_pattern(tok)
    plans: list[list[tuple[int, int, int, int]]] = []  # per text: (piece start, piece end, control id or -1, its end)
    pieces: list[str] = []
    for text, spans in items:
        cuts: list[tuple[int, int, int]] = []  # (start, end, id) of template control tokens
        edges = [0] + [x for span in spans for x in span] + [len(text)]
        for k in range(0, len(edges) - 1, 2):  # even gaps are template text
            a, b = edges[k], edges[k + 1]
            if pattern is not None:
                cuts += [(m.start(), m.end(), specials[m.group()]) for m in pattern.finditer(text, a, b)]
        plan, pos = [], 0
        for a, b, tid in [*cuts, (len(text), len(text), -1)]:
            plan.append((pos, a, tid, b))
            if a > pos:
                pieces.append(text[pos:a])
            pos = b
        plans.append(plan)
    encoded = iter(_encode_pieces(tok, pieces))
    out = []
    for plan in plans:
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for pos, a, tid, b in plan:
            if a > pos:
                piece_ids, piece_offsets = next(encoded)
                ids += piece_ids
                offsets += [(pos + s, pos + e) for s, e in piece_offsets] if pos else piece_offsets
            if tid >= 0:
                ids.append(tid)
                offsets.append((a, b))
        out.append((ids, offsets))
    return out


def _encode_pieces(tok: Any, pieces: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, offsets) of each piece, special-token text split (``split_special_tokens``), in batches on every core.

    A fast tokenizer's backend encodes the batch directly (what ``tok(pieces, split_special_tokens=True)`` runs,
    without building its per-piece Python dicts); any other tokenizer, or a backend left with truncation or
    padding switched on, goes through ``tok(...)``.
    """
    backend = getattr(tok, "backend_tokenizer", None)
    direct = backend is not None and backend.truncation is None and backend.padding is None
    out: list[tuple[list[int], list[tuple[int, int]]]] = []
    with tokenizer_threads():
        for start in range(0, len(pieces), 4096):
            chunk = pieces[start : start + 4096]
            if direct:
                before = backend.encode_special_tokens
                backend.encode_special_tokens = True
                try:
                    out += [(e.ids, e.offsets) for e in backend.encode_batch(chunk, add_special_tokens=False)]
                finally:
                    backend.encode_special_tokens = before
            else:
                enc = tok(chunk, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
                out += zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    return out


def encode_messages(tok: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of a rendered conversation or prompt, with message contents kept as text (no control tokens)."""
    text, spans = content_spans(tok, messages, add_generation_prompt)
    return tokenize_rendered(tok, text, spans)[0]


def encode(tok: Any, conv: Conversation, eot: str, max_length: int | None = None) -> Encoded:
    """Tokenize a rendered conversation and label exactly its assistant tokens (content + end-of-turn).

    A token is an assistant token when its first character lies inside an assistant content or in the
    end-of-turn marker right after it. Message contents never produce control tokens (see
    ``tokenize_rendered``). Templates carry their own BOS, so the tokenizer adds no special tokens.
    """
    return encode_many(tok, [conv], eot, max_length)[0]


def encode_many(tok: Any, convs: list[Conversation], eot: str, max_length: int | None = None) -> list[Encoded]:
    """``encode`` for many conversations, their pieces tokenized as one batch (``tokenize_rendered_many``)."""
    rendered = [content_spans(tok, conv.messages) for conv in convs]
    tokenized = tokenize_rendered_many(tok, rendered)
    out = []
    for conv, (text, spans), (ids, offsets) in zip(convs, rendered, tokenized, strict=True):
        label_spans = []
        for (s, e), m in zip(spans, conv.messages, strict=True):
            if m["role"] == "assistant":
                label_spans.append((s, e + len(eot) if text.startswith(eot, e) else e))
        labels = _assistant_labels(ids, offsets, label_spans)
        n = len(ids)
        truncated = max_length is not None and n > max_length
        if truncated:
            ids, labels = ids[:max_length], labels[:max_length]
        out.append(Encoded(conv.id, ids, labels, truncated, n))
    return out


def _assistant_labels(ids: list[int], offsets: list[tuple[int, int]], label_spans: list[tuple[int, int]]) -> list[int]:
    """``ids`` where a non-empty token starts inside a label span, -100 elsewhere (offsets ascend, so each span's
    tokens are one run found by binary search)."""
    labels = [-100] * len(ids)
    starts = [s for s, _ in offsets]
    for a, b in label_spans:
        for t in range(bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)):
            if offsets[t][1] > offsets[t][0]:
                labels[t] = ids[t]
    return labels


ENCODE_CHUNK = 256
"""Conversations per batched tokenizer call in ``encode_split`` (progress advances per chunk)."""


def encode_split(
    tok: Any, convs: list[Conversation], eot: str, max_length: int, truncation: str, desc: str = "encode"
) -> tuple[list[Encoded], Counter]:
    """Encode a split, applying the truncation policy; return (kept, dropped-by-reason)."""
    kept: list[Encoded] = []
    dropped: Counter = Counter()
    bar = tqdm(total=len(convs), desc=desc, unit="conv", leave=False)
    for start in range(0, len(convs), ENCODE_CHUNK):
        chunk = encode_many(tok, convs[start : start + ENCODE_CHUNK], eot, max_length)
        bar.update(len(chunk))
        for e in chunk:
            if e.truncated and truncation == "drop":
                dropped["over_max_length"] += 1
                continue
            if e.n_assistant == 0:
                dropped["no_assistant_token_within_max_length"] += 1
                continue
            kept.append(e)
    bar.close()
    return kept, dropped


def tokens_fingerprint(encoded: list[Encoded]) -> str:
    """Identity of the exact token sequences and labels (base and tuned must see the same)."""
    h = hashlib.sha256()
    for e in encoded:
        h.update(e.id.encode())
        h.update(bytes(str(e.input_ids), "ascii"))
        h.update(bytes(str(e.labels), "ascii"))
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the data step


def _length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    q = lambda p: v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]  # noqa: E731
    return {
        "n": len(v),
        "mean": round(statistics.fmean(v), 1),
        "min": v[0],
        "p50": q(0.5),
        "p90": q(0.9),
        "p99": q(0.99),
        "max": v[-1],
        "total": sum(v),
    }


@dataclass
class PreparedData:
    """The data step's product: encoded splits plus the report that describes them."""

    encoded: dict[str, list[Encoded]]
    conversations: dict[str, list[Conversation]]
    template: TemplateInfo
    report: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.report["fingerprint"]


def prepared_to_dict(prepared: PreparedData) -> dict[str, Any]:
    """``prepared`` as plain JSON-ready data (``prepared_from_dict`` reads it back exactly)."""
    return {
        "schema": "tunebench.prepared/1",
        "encoded": {s: [e.__dict__ for e in rows] for s, rows in prepared.encoded.items()},
        "conversations": {s: [c.to_dict() for c in rows] for s, rows in prepared.conversations.items()},
        "template": prepared.template.to_dict(),
        "report": prepared.report,
    }


def prepared_from_dict(data: dict[str, Any]) -> PreparedData:
    """The PreparedData ``prepared_to_dict`` wrote.

    Raises:
        DataError: not such a record (another schema, a damaged file)."""
    if not isinstance(data, dict) or data.get("schema") != "tunebench.prepared/1":
        raise DataError("not a tunebench prepared-data file (schema tunebench.prepared/1); delete it and prepare again")
    return PreparedData(
        encoded={s: [Encoded(**e) for e in rows] for s, rows in data["encoded"].items()},
        conversations={s: [Conversation(**c) for c in rows] for s, rows in data["conversations"].items()},
        template=TemplateInfo(**data["template"]),
        report=data["report"],
    )


def prepare(
    tok: Any,
    template_name: str,
    cfg: DataConfig,
    out_dir: str | Path | None = None,
    *,
    eval_every: int = 0,
    strict: bool = False,
    check_sizes: bool = True,
) -> PreparedData:
    """Read, standardize, split, encode; write the split files and the data report into ``out_dir``.

    Args:
        eval_every: ``train.eval_every``: above 0 an empty validation split is a problem (``data.splits``).
        strict: split problems are errors, not warnings.
        check_sizes: check the split sizes (off where the data step already did).

    Raises:
        DataError: unreadable source, nothing trainable, or (``strict``) a split too small to decide anything.
    """
    raw = read_source(cfg.source, cfg.hub_split)
    for w in raw.warnings:
        log.warning(w)
    std = standardize_and_split(raw, cfg)
    if check_sizes:  # before encoding: a split too small is known from the hashes alone
        std.warnings += check_splits({s: len(v) for s, v in std.splits.items()}, cfg, eval_every, strict)
    info = template_info(tok, template_name)
    encoded: dict[str, list[Encoded]] = {}
    length_dropped: dict[str, Counter] = {}
    for s in SPLITS:
        encoded[s], length_dropped[s] = encode_split(
            tok, std.splits[s], info.end_of_turn, cfg.max_length, cfg.truncation, desc=f"encode {s}"
        )
    if not encoded["train"]:
        raise DataError(
            f"{cfg.source}: every training conversation lost its assistant tokens at max_length={cfg.max_length}; "
            "raise data.max_length or use data.truncation=truncate"
        )
    kept_ids = {s: {e.id for e in encoded[s]} for s in SPLITS}
    convs = {s: [c for c in std.splits[s] if c.id in kept_ids[s]] for s in SPLITS}
    split_fp = {s: tokens_fingerprint(encoded[s]) for s in SPLITS}
    report = {
        "schema": "tunebench.data_report/1",
        "source": std.source,
        "source_identity": std.identity,
        "config": cfg.__dict__,
        "template": info.to_dict(),
        "records": std.n_records,
        "dropped": dict(std.dropped.most_common()),
        "dropped_by_length": {s: dict(c) for s, c in length_dropped.items()},
        "drop_reasons": DROP_REASONS,
        "drop_examples": std.drop_examples,
        "malformed_lines": std.malformed_lines[:MALFORMED_SHOWN],
        "malformed_lines_total": len(std.malformed_lines),
        "malformed_reasons": std.malformed_reasons,
        "clean": sum(std.uncapped.values()),
        "exact_duplicates": std.duplicates,
        "split_sizes_before_caps": std.uncapped,
        "splits": {
            s: {
                "conversations": len(encoded[s]),
                "truncated": sum(e.truncated for e in encoded[s]),
                "tokens": _length_stats([len(e.input_ids) for e in encoded[s]]),
                "assistant_tokens": _length_stats([e.n_assistant for e in encoded[s]]),
                "fingerprint": split_fp[s],
            }
            for s in SPLITS
        },
        "warnings": std.warnings,
    }
    report["fingerprint"] = fingerprint([std.identity, split_fp, info.sha])
    prepared = PreparedData(encoded, convs, info, report)
    if out_dir is not None:
        write(prepared, Path(out_dir))
    return prepared


def write(prepared: PreparedData, out_dir: Path) -> None:
    """Write split files (JSONL), the data report (JSON + Markdown), atomically."""

    out_dir.mkdir(parents=True, exist_ok=True)
    for s, convs in prepared.conversations.items():
        atomic_write_text(
            out_dir / f"{s}.jsonl", "".join(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in convs)
        )
    atomic_write_json(out_dir / "data_report.json", prepared.report)
    atomic_write_text(out_dir / "data_report.md", render_report(prepared.report))


def load_split(out_dir: str | Path, split: str) -> list[Conversation]:
    """Read back a split written by ``write``."""

    path = Path(out_dir) / f"{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path}: missing; run `tunebench data` first")
    return [Conversation(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


class _SplitFacts(TypedDict):
    fingerprint: str


class _ReportFacts(TypedDict):
    """What the evaluation reads from a data report: the template it was rendered with, the test tokens' hash."""

    fingerprint: str
    template: TemplateInfo
    splits: dict[str, _SplitFacts]


def read_report(out_dir: str | Path) -> dict[str, Any]:
    """The data report of a run folder, checked for what evaluation reads (template, split fingerprints).

    Raises:
        MissingRunFile: no data report (run the data step).
        RunFileError: damaged, or a field of the wrong type; names the field.
    """
    path = Path(out_dir) / "data_report.json"
    fix = f"re-run `tunebench data {path.parent.parent / 'config.yaml'} --out {path.parent.parent}`"
    if not path.exists():
        raise MissingRunFile(f"{path}: missing; {fix}")
    report = read_json(path, fix)
    check_json(report, _ReportFacts, str(path), fix)
    return report


def _malformed_line(report: dict[str, Any]) -> str:
    """``malformed: 3 (lines 7, 12, 40: line 7: not UTF-8 ...)``: where the unreadable lines are, and why."""
    shown, total = report["malformed_lines"], report.get("malformed_lines_total", len(report["malformed_lines"]))
    more = f", ... ({total} lines in all)" if total > len(shown) else ""
    why = "; ".join(report.get("malformed_reasons", [])[:3])
    return f"malformed: {report['dropped'].get('malformed', len(shown))} (lines {', '.join(map(str, shown))}{more})" + (
        f"; first: {why}" if why else ""
    )


def render_report(report: dict[str, Any]) -> str:
    """Markdown view of the data report (the JSON is the source of truth)."""
    lines = [
        "# Data report",
        "",
        f"- source: `{report['source']}` ({report['source_identity']})",
        f"- records read: {report['records']}; clean: {report['clean']}; "
        f"exact duplicates: {report['exact_duplicates']}",
        f"- template: `{report['template']['name']}` (end of turn `{report['template']['end_of_turn']}`)",
        f"- fingerprint: `{report['fingerprint']}`",
        "",
        "## Dropped",
        "",
    ]
    reasons = report["drop_reasons"]
    dropped = [(k, v, reasons.get(k, "")) for k, v in report["dropped"].items()]
    dropped += [
        (f"{k} ({s})", v, reasons.get(k, "")) for s, c in report["dropped_by_length"].items() for k, v in c.items()
    ]
    lines += [table(dropped, ["reason", "conversations", "meaning"]), ""]
    if report.get("malformed_lines"):
        lines += [_malformed_line(report), ""]
    lines += ["## Splits", ""]
    splits = [
        (
            s,
            d["conversations"],
            d["truncated"],
            d["tokens"].get("p50"),
            d["tokens"].get("p90"),
            d["tokens"].get("max"),
            d["assistant_tokens"].get("total", 0),
            f"`{d['fingerprint']}`",
        )
        for s, d in report["splits"].items()
    ]
    lines.append(
        table(
            splits,
            [
                "split",
                "conversations",
                "truncated",
                "tokens p50",
                "tokens p90",
                "tokens max",
                "assistant tokens",
                "fingerprint",
            ],
        )
    )
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
