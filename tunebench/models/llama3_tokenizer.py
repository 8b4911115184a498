"""Meta's Llama 3 tokenizer, offline: the tiktoken BPE file that ``llama-models`` ships, converted into a
transformers tokenizer with the Llama 3.1 special-token names, BOS and the shipped llama-3.1 chat template.

The Llama 3.2 checkpoints on the hub are gated, but their tokenizer is the Llama 3 one: 128,000 BPE ranks
plus 256 special tokens (ids 128000-128255), which ``pip install llama-models==0.3.0`` ships as
``llama_models/llama3/tokenizer.model``. Converting it takes ~20 s (every merge is rebuilt from the ranks),
so the result is cached under the tunebench cache, keyed by the file's SHA-256.

    from tunebench.models.llama3_tokenizer import llama3_tokenizer
    tok = llama3_tokenizer()                   # a PreTrainedTokenizerFast, 128,256 tokens
    export_llama3_tokenizer("llama3-tok")      # a folder any machine can load with AutoTokenizer
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from tunebench.core.errors import ModelError
from tunebench.core.io import cache_root, sha256_file
from tunebench.models.loading import template_text

log = logging.getLogger(__name__)

BASE_TOKENS = 128_000
VOCAB_SIZE = 128_256
# Llama 3's pre-tokenizer split (llama_models/llama3/tokenizer.py ``pat_str``).
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
# ids 128000-128011 as the Llama 3.1/3.2 tokenizer.json on the hub names them; every other id up to 128255 is
# <|reserved_special_token_N|>, numbered on from 4. (llama-models 0.3.0 names 128005 <|step_id|> and 128011
# <|image|>: the hub's 3.1/3.2 text tokenizers call them reserved 2 and 3, and so do we.)
NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|reserved_special_token_3|>",
]
INSTALL_HINT = "pip install llama-models==0.3.0 --no-deps tiktoken (or pass a tokenizer folder written by export)"


def special_tokens() -> list[str]:
    """The 256 special-token names in id order (id = 128000 + index)."""
    return NAMED + [f"<|reserved_special_token_{i}|>" for i in range(4, 4 + VOCAB_SIZE - BASE_TOKENS - len(NAMED))]


def tokenizer_model_file() -> Path:
    """``llama_models/llama3/tokenizer.model`` of the installed llama-models package.

    Raises:
        ModelError: llama-models is not installed.
    """
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the Llama 3 tokenizer needs the llama-models package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"
    if not path.exists():
        raise ModelError(f"{path} is missing from the installed llama-models; reinstall it: {INSTALL_HINT}")
    return path


def convert(model_file: str | Path | None = None) -> Any:
    """Convert a Llama 3 tiktoken BPE file into a ``PreTrainedTokenizerFast`` (no cache).

    Returns:
        The tokenizer: 128,256 tokens, BOS ``<|begin_of_text|>`` prepended by ``add_special_tokens=True``,
        EOS ``<|eot_id|>`` (an Instruct model ends its turns there), pad ``<|finetune_right_pad_id|>``, and
        the shipped llama-3.1 chat template.

    Raises:
        ModelError: the file is missing, unreadable, or does not hold 128,000 ranks.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(model_file) if model_file is not None else tokenizer_model_file()
    try:
        backend = TikTokenConverter(
            vocab_file=str(path), pattern=PATTERN, extra_special_tokens=special_tokens()
        ).converted()
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read it as a tiktoken BPE file ({e}); {INSTALL_HINT}") from None
    if backend.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise ModelError(
            f"{path}: {backend.get_vocab_size(with_added_tokens=True)} tokens after conversion, "
            f"expected {VOCAB_SIZE:,} (128,000 ranks + 256 special); is it the Llama 3 file?"
        )
    bos = "<|begin_of_text|>"
    # as the hub's Llama 3 tokenizer.json: byte-level offsets, then BOS before every sequence
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BASE_TOKENS)]
            ),
        ]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.chat_template = template_text("llama-3.1")
    return tok


def export_llama3_tokenizer(out: str | Path, model_file: str | Path | None = None) -> Path:
    """Write the converted tokenizer folder to ``out`` (~9 MB; AutoTokenizer loads it on any machine)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    convert(model_file).save_pretrained(out)
    return out


def llama3_tokenizer_dir(model_file: str | Path | None = None, root: str | Path | None = None) -> Path:
    """The cached folder of the converted Llama 3 tokenizer (converted and saved there on first use).

    Args:
        model_file: a tiktoken BPE file; default: the one llama-models ships.
        root: cache folder; default: ``<tunebench cache>/tokenizers``.
    """
    path = Path(model_file) if model_file is not None else tokenizer_model_file()
    root = Path(root) if root is not None else cache_root() / "tokenizers"
    final = root / f"llama3-{sha256_file(path)[:12]}"
    if not (final / "tokenizer.json").exists():
        tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        log.info("converting the Llama 3 tokenizer %s into %s (once)", path, final)
        try:
            export_llama3_tokenizer(tmp, path)
            tmp.rename(final)
        except OSError:  # another process finished first: its folder is identical
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def llama3_tokenizer(model_file: str | Path | None = None, root: str | Path | None = None) -> Any:
    """The converted Llama 3 tokenizer (see ``convert``), loaded from the cache folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(llama3_tokenizer_dir(model_file, root)), clean_up_tokenization_spaces=False
    )


def is_llama3_tokenizer(tok: Any) -> bool:
    """True for a tokenizer with Llama 3's 128,256 tokens and its turn markers at their ids."""
    vocab = tok.get_vocab()
    return len(tok) == VOCAB_SIZE and vocab.get("<|eot_id|>") == 128009 and vocab.get("<|begin_of_text|>") == 128000
