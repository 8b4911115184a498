"""A transformers streamer that hands each piece of decoded text to a callback (``Generator.generate``'s
``on_token``). It imports transformers at the top, so callers import this module when they stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TextStreamer


class CallbackStreamer(TextStreamer):
    """TextStreamer's word-safe pieces (the prompt skipped, special tokens dropped), given to ``on_token`` instead
    of printed."""

    def __init__(self, tokenizer: Any, on_token: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_token = on_token

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_token(text)
