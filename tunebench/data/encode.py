"""Render conversations with the chat template and compute the assistant-token mask.

The mask is computed here and only here; training (where the backend does not mask itself) and the
perplexity evaluation both use it. ``template_info`` derives the template's end-of-turn and turn markers by
rendering sentinel conversations, so nothing here is per model family.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunebench.core import output
from tunebench.core.errors import TemplateError
from tunebench.core.io import fingerprint
from tunebench.core.threads import tokenizer_threads
from tunebench.data.standardize import Conversation


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
    """Derive end-of-turn and the user/assistant markers from the template itself, not per model family.

    The end-of-turn marker is what the template writes after an assistant's text before the next turn opens.
    Where it starts with a control token (``<|eot_id|>``, SmolLM2's ``<|im_end|>``), that one token is the marker.
    Where the tokenizer has no such token (ChatML's ``<|im_end|>`` with Meta's Llama 3 tokenizer), the marker is
    the whole text that closes the last assistant turn (``<|im_end|>\\n``, several ordinary tokens), which is
    what Unsloth's ``train_on_responses_only`` trains: everything from the response to the next user turn.

    Raises:
        TemplateError: the template rewrites message text, or its end-of-turn marker cannot be masked whole (none
            found, or a token straddles the marker and the next turn's opener).
    """
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
    if ids and ids[0] in _special_tokens(tok).values():
        eot = tok.decode(ids[:1])
    else:
        eot = _whole_end_marker(tok, name, msgs, text.index(a1) + len(a1))
    if not eot.strip() or not after_assistant.startswith(eot):
        raise TemplateError(f"chat template {name!r}: cannot find the token that ends an assistant turn")
    response_part = after_user[len(eot) :].lstrip() if after_user.startswith(eot) else after_user.lstrip()
    instruction_part = after_assistant[len(eot) :].lstrip()
    return TemplateInfo(name, eot, instruction_part, response_part, fingerprint(tok.chat_template or ""))


def _whole_end_marker(tok: Any, name: str, msgs: list[dict[str, str]], end_of_first: int) -> str:
    """The end-of-turn marker made of ordinary tokens: the text the template writes after the last assistant
    turn, checked to be how the first assistant turn (ending at ``end_of_first``) ends too, and to end on a token
    boundary there, before the next turn opens (else no mask can hold it whole).

    Raises:
        TemplateError: no such text, it is not how a turn ends mid-conversation, or it ends inside a token.
    """
    text, spans = content_spans(tok, msgs)
    tail, after_assistant = text[spans[-1][1] :], text[end_of_first : spans[2][0]]
    fix = (
        "use a tokenizer whose vocabulary holds the template's end-of-turn token, or the template made for the "
        "model (model.chat_template=model, llama-3.1 or chatml)"
    )
    if not tail.strip():
        raise TemplateError(
            f"chat template {name!r}: the tokenizer has no control token that ends an assistant turn, and the "
            f"template writes no text after the last one ({tail!r}), so nothing can be trained as the end of an "
            f"answer (the model would not learn to stop); {fix}"
        )
    if not after_assistant.startswith(tail):
        raise TemplateError(
            f"chat template {name!r}: the tokenizer has no control token that ends an assistant turn, and the text "
            f"the template writes after the last assistant turn ({tail!r}) is not how it ends the earlier ones "
            f"({after_assistant!r}), so no one end-of-turn marker can be trained whole; {fix}"
        )
    _, offsets = tokenize_rendered(tok, text, spans)
    if not any(start == end_of_first + len(tail) for start, _ in offsets):
        raise TemplateError(
            f"chat template {name!r}: its end-of-turn marker {tail!r} is several tokens and the last of them runs "
            f"into the next turn's opener ({after_assistant[len(tail) :]!r}), so the marker cannot be trained whole "
            f"without training part of the next turn; {fix}"
        )
    return tail


TOOL_PROBE = '{"city": "Zürich", "forecast": ["sun", "rain"]}\n\\ <ok> \'done\''
"""A tool answer as tools write them (JSON, a newline, a backslash, quotes, angle brackets): a template that writes
it verbatim keeps tool turns; one that quotes or escapes it (llama-3.1's ``tojson``) cannot have them located."""


def renders_tool_turns(tok: Any) -> bool:
    """Whether the chat template writes a tool turn's text verbatim, so its tokens can be located (and left out of
    the mask). ChatML does (``<|im_start|>tool``); tunebench's llama-3.1 writes it as JSON under ``ipython``."""
    probe = [
        {"role": "user", "content": "What is the weather?"},
        {"role": "assistant", "content": "Let me look it up."},
        {"role": "tool", "content": TOOL_PROBE},
        {"role": "assistant", "content": "Sunny, then rain."},
    ]
    try:
        content_spans(tok, probe)
    except Exception:  # TemplateError, or the template's own raise_exception on a role it does not take
        return False
    return True


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
    bar = output.bar(total=len(convs), desc=desc, unit="conv", leave=False)
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
