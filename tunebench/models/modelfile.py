"""Ollama ``Modelfile`` for an exported GGUF: the run's chat template in Go-template syntax, and its stop tokens.

Ollama renders prompts with Go templates, not Jinja. Each family below is a Go template plus a Python
function that renders the same text; at export the Python twin is checked against the run's own Jinja
template on sentinel conversations (system prompt, multi-turn, unicode), so a Modelfile only carries a
TEMPLATE that was shown to agree. A template of no known family gets no TEMPLATE line (Ollama then uses
the GGUF's ``tokenizer.chat_template``), and the export manifest says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, str]]

# Ollama passes system messages as .System and keeps them in .Messages too: the loops skip them.
CHATML_GO = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{- end }}<|im_start|>assistant
"""

LLAMA31_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: 26 July 2024\n\n"
# llama.cpp adds <|begin_of_text|> itself (tokenizer.ggml.add_bos_token), so the template leaves it out
LLAMA31_GO = """<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023
Today Date: 26 July 2024

{{ if .System }}{{ .System }}{{ end }}<|eot_id|>
{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

SENTINELS: list[Messages] = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another one?"},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Ünïcødé ✓ 日本語 — emoji 🙂?"},
        {"role": "assistant", "content": "Oui: ½ ≠ ⅓."},
        {"role": "user", "content": "Merci 🙏"},
    ],
]


@dataclass
class GoTemplate:
    """A chat template family as Ollama needs it."""

    family: str
    template: str
    system: str | None
    """Default system prompt (Modelfile SYSTEM) the Jinja template injects when none is given."""
    stops: list[str]
    render: Callable[[Messages], str]
    """What the Go template renders for a conversation, followed by the generation prompt."""


def _system_of(messages: Messages, default: str | None) -> tuple[str | None, Messages]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return default, messages


def chatml(default_system: str | None) -> GoTemplate:
    def render(messages: Messages) -> str:
        system, rest = _system_of(messages, default_system)
        out = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        out += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in rest)
        return out + "<|im_start|>assistant\n"

    return GoTemplate("chatml", CHATML_GO, default_system, ["<|im_end|>", "<|im_start|>"], render)


def llama31() -> GoTemplate:
    def render(messages: Messages) -> str:
        system, rest = _system_of(messages, "")
        out = f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA31_HEADER}{system}<|eot_id|>"
        out += "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in rest)
        return out + "<|start_header_id|>assistant<|end_header_id|>\n\n"

    return GoTemplate(
        "llama-3.1", LLAMA31_GO, None, ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>"], render
    )


def jinja_render(tok: Any, messages: Messages) -> str:
    """The run tokenizer's rendering with the generation prompt, less the BOS a template emits (llama.cpp adds it)."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = getattr(tok, "bos_token", None)
    emits_bos = "bos_token" in (tok.chat_template or "")
    return text[len(bos) :] if emits_bos and bos and text.startswith(bos) else text


def _default_chatml_system(tok: Any) -> str | None:
    text = jinja_render(tok, SENTINELS[0])
    head = "<|im_start|>system\n"
    if text.startswith(head) and "<|im_end|>" in text:
        return text[len(head) : text.index("<|im_end|>")]
    return None


def match_template(tok: Any) -> GoTemplate | None:
    """The Go template family whose rendering equals the tokenizer's Jinja template on every sentinel, or None."""
    candidates = [llama31()]
    if "<|im_start|>" in (tok.chat_template or ""):
        candidates.insert(0, chatml(_default_chatml_system(tok)))
    for cand in candidates:
        try:
            if all(cand.render(m) == jinja_render(tok, m) for m in SENTINELS):
                return cand
        except Exception:  # a template that raises on a sentinel (e.g. no system role) is not this family
            continue
    return None


def modelfile_text(gguf_name: str, tok: Any, go: GoTemplate | None, note: str = "") -> str:
    """The Modelfile beside ``gguf_name`` (a relative FROM, so the folder can move)."""
    lines = [
        "# Ollama Modelfile written by `tunebench export --gguf`" + (f" ({note})" if note else ""),
        f"# use: ollama create NAME -f {gguf_name.rsplit('.', 1)[0]}.Modelfile",
        f"FROM ./{gguf_name}",
    ]
    stops: list[str] = []
    if go is not None:
        lines.append(f'TEMPLATE """{go.template}"""')
        if go.system:
            lines.append(f'SYSTEM """{go.system}"""')
        stops = list(go.stops)
    else:
        lines.append(
            "# no TEMPLATE: the chat template is of no family tunebench translates to Go; "
            "Ollama falls back to the GGUF's tokenizer.chat_template"
        )
    eos = getattr(tok, "eos_token", None)
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
