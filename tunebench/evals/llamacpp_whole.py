"""llama-cpp-python's ``Llama``, evaluating every prompt whole: the same prompt gets the same logits, whatever was
asked before.

llama.cpp's logits depend on the batch a token is evaluated in (its CPU kernels reduce in another order for another
batch shape; llama.cpp's own server documents this under ``cache_prompt``). ``Llama.generate`` keeps the previous
request's tokens and evaluates only the part of a new prompt past their common prefix, so a repeated prompt had its
last token evaluated alone and a prompt after another one its tail: at temperature 0 a fresh server answered one
question "In", then "This", then "In" again. Evaluating each prompt from the start costs its prompt evaluation on
every request and makes greedy answers a function of the request alone, in process and over HTTP.

Imported only where llama.cpp runs (llama-cpp-python is the serve extra): ``evals.llamacpp.open_gguf`` and the server
``tunebench serve`` starts (``app.serve_app``).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import llama_cpp  # heavy: llama.cpp's shared library (this module is imported only where it runs)


class WholePromptLlama(llama_cpp.Llama):
    """A ``llama_cpp.Llama`` whose every generation starts from an empty context (no prefix reuse)."""

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Generator[int, Any, None]:
        """``Llama.generate`` after ``reset()``: the prompt is evaluated whole, in the batches a fresh context
        evaluates it in."""
        self.reset()
        return super().generate(tokens, *args, **kwargs)


def whole_prompts(llm: llama_cpp.Llama) -> WholePromptLlama:
    """``llm``, made by code that constructs ``llama_cpp.Llama`` itself (llama-cpp-python's server), as a
    ``WholePromptLlama``: the subclass only overrides ``generate`` and adds no state, so the object is adopted as is.
    """
    llm.__class__ = WholePromptLlama
    return llm  # type: ignore[return-value]
