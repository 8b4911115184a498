"""The template and token contract of an exported GGUF: every runtime feeds the model the same tokens.

The probe prompts (or, without probes, the Modelfile's plain sentinel conversations) are rendered and tokenized
three ways:

- ``transformers``: the run's tokenizer and chat template (what was trained and evaluated);
- ``llama.cpp``: llama-cpp-python's chat handler on the GGUF's ``tokenizer.chat_template``
  (``Jinja2ChatFormatter`` + ``Llama.tokenize(special=True)``, no BOS added: the template carries it);
- ``ollama``: the Modelfile's ``TEMPLATE`` rendered by its Python twin (models/modelfile.py), tokenized as
  Ollama does (special tokens parsed, BOS added when the GGUF says ``add_bos_token``).

The token ids must be equal, and so must BOS/EOS, and the stop tokens of each runtime must cover the
model's end-of-turn. Any difference is a ``ContractError`` naming the first differing position in text
and ids.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tunebench.core.errors import ExportError
from tunebench.core.io import read_text
from tunebench.core.runtimes import LLAMA_CPP, OLLAMA, TRANSFORMERS
from tunebench.evals.prompting import render_prompt, stop_token_ids
from tunebench.models.modelfile import SENTINELS, match_template

Messages = list[dict[str, str]]
_TEMPLATE_RE = re.compile(r'^TEMPLATE """(.*?)"""', re.S | re.M)
_STOP_RE = re.compile(r'^PARAMETER stop "(.*)"$', re.M)


class ContractError(ExportError):
    """An exported GGUF would be fed other tokens than the run was evaluated on."""


@dataclass
class ContractReport:
    """What the check compared (written as RUN/export/contract-<type>.json)."""

    gguf: str
    prompts: int
    runtimes: list[str]
    bos: dict[str, Any] = field(default_factory=dict)
    eos: dict[str, Any] = field(default_factory=dict)
    stops: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """Runtimes not checked, and why."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (the shorter length when one is a prefix of the other), or None."""
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return k
    return None if len(a) == len(b) else min(len(a), len(b))


def _show(tok: Any, ids: list[int], k: int) -> str:
    part = ids[max(0, k - 3) : k + 3]
    return f"ids[{max(0, k - 3)}:{k + 3}]={part} text={tok.decode(part)!r}"


def modelfile_parts(path: Path) -> tuple[str | None, list[str]]:
    """(TEMPLATE text or None, stop strings) of an Ollama Modelfile."""
    text = read_text(path, "export the file again with `tunebench export RUN --gguf`")
    m = _TEMPLATE_RE.search(text)
    return (m.group(1) if m else None), _STOP_RE.findall(text)


def check_prompts(
    tok: Any, llm: Any, gguf: Path, prompts: list[Messages], modelfile: Path | None = None
) -> ContractReport:
    """Compare the three renderings of every prompt, then BOS/EOS and stop tokens.

    Args:
        tok: the run's transformers tokenizer (with its chat template).
        llm: a ``llama_cpp.Llama`` on ``gguf`` (None: the llama.cpp and Ollama renderings are skipped).
        prompts: conversations; each is rendered with the generation prompt opened.
        modelfile: the artifact's Modelfile (None: Ollama is skipped).

    Raises:
        ContractError: naming the prompt, the runtimes, the first differing position, in text and ids.
    """
    from tunebench.evals.llamacpp import chat_formatter, chat_prompt_ids

    report = ContractReport(gguf=gguf.name, prompts=len(prompts), runtimes=[TRANSFORMERS])
    if llm is None:
        report.skipped.append('llama.cpp, ollama: llama-cpp-python is not installed (pip install "tunebench[serve]")')
        return report
    formatter = chat_formatter(llm)
    report.runtimes.append(LLAMA_CPP)
    go, stops = None, []
    if modelfile is not None and modelfile.exists():
        go_text, stops = modelfile_parts(modelfile)
        go = match_template(tok)
        if go_text is None or go is None:
            report.skipped.append(f"ollama: {modelfile.name} has no TEMPLATE; Ollama uses the GGUF's template")
            go = None
        elif go.template != go_text:
            raise ContractError(
                f"{modelfile}: its TEMPLATE is not the {go.family} Go template tunebench writes and "
                "checks; re-export with `tunebench export RUN --gguf`"
            )
        else:
            report.runtimes.append(OLLAMA)
    add_bos = bool(llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true")
    for k, messages in enumerate(prompts):
        want = render_prompt(tok, messages)
        got = {LLAMA_CPP: chat_prompt_ids(llm, formatter, messages)}
        if go is not None:
            got[OLLAMA] = list(llm.tokenize(go.render(messages).encode("utf-8"), add_bos=add_bos, special=True))
        for runtime, ids in got.items():
            d = first_difference(want, ids)
            if d is not None:
                raise ContractError(
                    f"{gguf}: prompt {k + 1} ({messages[-1]['content'][:40]!r}) renders to other tokens in {runtime} "
                    f"than in transformers (what the run was evaluated on), first at position {d}: transformers "
                    f"{_show(tok, want, d)}; {runtime} {_show(tok, ids, d)} ({len(want)} vs {len(ids)} tokens). "
                    "Re-export with `tunebench export RUN --gguf`; if it persists, the template or tokenizer "
                    "metadata is not carried over faithfully"
                )
    _check_special(tok, llm, gguf, report, stops if go is not None else None)
    return report


def _check_special(tok: Any, llm: Any, gguf: Path, report: ContractReport, ollama_stops: list[str] | None) -> None:
    """BOS/EOS ids agree, and each runtime stops on the run's end-of-turn."""

    report.bos = {TRANSFORMERS: tok.bos_token_id, LLAMA_CPP: llm.token_bos()}
    report.eos = {TRANSFORMERS: tok.eos_token_id, LLAMA_CPP: llm.token_eos()}
    if tok.eos_token_id is not None and tok.eos_token_id != llm.token_eos():
        raise ContractError(
            f"{gguf}: llama.cpp's EOS is token {llm.token_eos()} "
            f"({llm.detokenize([llm.token_eos()], special=True)!r}) but the run's end-of-turn is "
            f"{tok.eos_token_id} ({tok.eos_token!r}): generation would not stop where it did in "
            "evaluation. Re-export with `tunebench export RUN --gguf`"
        )
    if tok.bos_token_id is not None and llm.token_bos() not in (-1, tok.bos_token_id):
        raise ContractError(f"{gguf}: llama.cpp's BOS is token {llm.token_bos()} but the run's is {tok.bos_token_id}")
    transformers_stops = stop_token_ids(SimpleNamespace(tokenizer=tok, model=None))  # it reads .tokenizer, .model
    report.stops = {TRANSFORMERS: transformers_stops, LLAMA_CPP: [llm.token_eos()]}
    if ollama_stops is not None:
        report.stops[OLLAMA] = ollama_stops
        if tok.eos_token and tok.eos_token not in ollama_stops:
            raise ContractError(
                f"{gguf}: the Modelfile's stop parameters {ollama_stops} miss the run's end-of-turn "
                f"{tok.eos_token!r}: Ollama would run past the answer. Re-export"
            )


def contract_prompts(probe_files: list[str]) -> list[Messages]:
    """The probe prompts of the run's probe sets, else the plain Modelfile sentinels (system, multi-turn).

    The Unicode sentinel is left out: on SmolLM2 llama.cpp's ``smollm`` pre-tokenizer splits "½ ≠" into other
    tokens than the transformers tokenizer (measured; reports/published llama.cpp note), a difference of the
    tokenizers, not of the template, that would fail every export of that model.
    """
    from tunebench.evals.probes.sets import load_probe_set

    out = [p.messages for name in probe_files for p in load_probe_set(name).prompts]
    return out or [m for m in SENTINELS[:3] if m[-1]["role"] == "user"]


def check_contract(
    gguf: str | Path, adapter_dir: str | Path, probe_files: list[str], llm: Any = None
) -> ContractReport:
    """The contract check of one exported GGUF against the run's tokenizer (opens the file when ``llm`` is None).

    Raises:
        ContractError: see ``check_prompts``.
    """
    from transformers import AutoTokenizer  # heavy: transformers

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    if llm is None:
        try:
            from tunebench.evals.llamacpp import open_gguf, require_llama_cpp

            require_llama_cpp()
            llm = open_gguf(gguf, n_ctx=512)
        except ImportError:
            llm = None
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001  the engine is optional here: say so, check the rest
            if "llama-cpp-python" not in str(e):
                raise
            llm = None
    return check_prompts(tok, llm, gguf, contract_prompts(probe_files), gguf.with_suffix(".Modelfile"))
