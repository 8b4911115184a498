"""The runtimes that score or serve a model, by name, and the labels derived from them: the one place they are spelled.

A runtime name is recorded in results (``model.runtime``), chosen on the command line (``eval --runtime``,
``serve --engine``) and in a config (``export.evaluate``). An exported GGUF of type ``q8_0`` is written to
``RUN/export/model-q8_0.gguf``; scored in transformers it is the artifact ``q8_0`` (what a gate rule's
``artifact:`` names) with label and results folder ``gguf-q8_0`` (``eval/gguf-q8_0/results.json``); scored in
llama.cpp itself it is ``q8_0-llamacpp`` (label ``gguf-q8_0-llamacpp``). A served endpoint's label starts with
``served`` (``eval/served*/results.json``) and is kept whole as its artifact name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

TRANSFORMERS = "transformers"
"""transformers (its GGUF loader for an exported file): what base and tuned are evaluated with."""
LLAMA_CPP = "llama.cpp"
"""llama.cpp itself, in process (llama-cpp-python), or the server `tunebench serve` starts by default."""
ENDPOINT = "endpoint"
"""An OpenAI-compatible server (`tunebench eval --endpoint`)."""
VLLM = "vllm"
"""vLLM, the other engine of `tunebench serve` (the base with the adapter as a runtime LoRA)."""
OLLAMA = "ollama"
"""Ollama, checked by the token contract through the exported Modelfile's template."""
BOTH = "both"
"""``export.evaluate: both``: each artifact scored in transformers and in llama.cpp."""

EVAL_RUNTIMES = (TRANSFORMERS, LLAMA_CPP)
"""The choices of `tunebench eval --runtime` (the first is the default)."""
SERVE_ENGINES = (LLAMA_CPP, VLLM)
"""The choices of `tunebench serve --engine` (the first is the default)."""
ExportEvaluate = Literal["transformers", "llama.cpp", "both"]
"""``export.evaluate``'s names (besides true and false): TRANSFORMERS, LLAMA_CPP, BOTH."""

RUNTIME_PACKAGES = {LLAMA_CPP: "llama_cpp_python"}
"""The package whose version decides a runtime's scores besides tunebench's own (part of a stage's fingerprint)."""

ARTIFACT_PREFIX = "gguf-"
"""eval/gguf-<type>/results.json holds an exported artifact's results (label gguf-<type>)."""
SERVED_PREFIX = "served"
"""eval/served*/results.json holds a served endpoint's results (`tunebench eval --endpoint`, label served*)."""
GGUF_STEM_PREFIX = "model-"
"""RUN/export/model-<type>.gguf: the exported file of a type."""


def gguf_file_name(quant: str) -> str:
    """``q8_0`` -> ``model-q8_0.gguf``: the exported file of a GGUF type, in RUN/export."""
    return f"{GGUF_STEM_PREFIX}{quant}.gguf"


def artifact_runtimes(evaluate: str | bool) -> list[str]:
    """Runtimes that score each exported artifact (``export.evaluate``): true = transformers, ``both`` = transformers
    and llama.cpp, a runtime's name = that runtime."""
    if evaluate is False:
        return []
    if evaluate == BOTH:
        return [TRANSFORMERS, LLAMA_CPP]
    return [str(evaluate)] if evaluate in EVAL_RUNTIMES else [TRANSFORMERS]


def runtime_suffix(runtime: str) -> str:
    """What an artifact's name gains when ``runtime`` scores it: none in transformers, else ``-`` and the runtime's
    name in lower-case letters and digits (``llama.cpp`` -> ``-llamacpp``)."""
    return "" if runtime == TRANSFORMERS else "-" + re.sub(r"[^a-z0-9]", "", runtime.lower())


def artifact_name(quant: str, runtime: str = TRANSFORMERS) -> str:
    """``q8_0`` scored in ``runtime`` -> ``q8_0``, or ``q8_0-llamacpp`` in llama.cpp (a gate rule's ``artifact:``)."""
    return quant + runtime_suffix(runtime)


def artifact_names(quants: list[str], evaluate: str | bool) -> dict[str, str]:
    """The artifact names a run's export stage evaluates (what a gate rule's ``artifact:`` names: ``q8_0``, or
    ``q8_0-llamacpp`` when scored in llama.cpp), each with its runtime: the one place they are derived."""
    return {artifact_name(q, runtime): runtime for q in quants for runtime in artifact_runtimes(evaluate)}


def artifact_label(quant: str, runtime: str = TRANSFORMERS) -> str:
    """``q8_0`` scored in ``runtime`` -> ``gguf-q8_0`` (``gguf-q8_0-llamacpp`` in llama.cpp): its label and
    results folder (``eval/<label>/results.json``)."""
    return ARTIFACT_PREFIX + artifact_name(quant, runtime)


def file_label(gguf: str | Path, runtime: str = TRANSFORMERS) -> str:
    """``RUN/export/model-q8_0.gguf`` -> ``gguf-q8_0`` (``gguf-q8_0-llamacpp`` in llama.cpp): the results folder and
    label of an exported file (another file's stem stands for the type)."""
    return artifact_label(Path(gguf).stem.removeprefix(GGUF_STEM_PREFIX), runtime)


def is_artifact_label(label: str) -> bool:
    """Whether a label (a results folder's name) is an exported artifact's: ``gguf-*``."""
    return label.startswith(ARTIFACT_PREFIX)


def is_served_label(label: str) -> bool:
    """Whether a label (a results folder's name) is a served endpoint's: ``served*``."""
    return label.startswith(SERVED_PREFIX)


def label_artifact(label: str) -> str:
    """A results folder's label -> its artifact name: ``gguf-q8_0-llamacpp`` -> ``q8_0-llamacpp``; a served label
    (or any other) is kept whole."""
    return label.removeprefix(ARTIFACT_PREFIX)


def artifact_quant(name: str) -> str:
    """An artifact name -> its GGUF type: ``q8_0-llamacpp`` -> ``q8_0``."""
    return name.removesuffix(runtime_suffix(artifact_runtime(name)))


def artifact_runtime(name: str) -> str:
    """An artifact name -> the runtime that scores it: ``q8_0-llamacpp`` -> llama.cpp, ``q8_0`` -> transformers."""
    return next((r for r in EVAL_RUNTIMES if r != TRANSFORMERS and name.endswith(runtime_suffix(r))), TRANSFORMERS)


def artifact_eval_command(name: str, run: str | Path) -> str:
    """The `tunebench eval` command line that scores artifact ``name`` of ``run`` (``q8_0``, or ``q8_0-llamacpp``
    in llama.cpp): the file is the GGUF type's, the runtime follows the name."""
    runtime = artifact_runtime(name)
    flag = f" --runtime {runtime}" if runtime != TRANSFORMERS else ""
    return f"tunebench eval --model {run}/export/{gguf_file_name(artifact_quant(name))}{flag} --data-from {run}"
