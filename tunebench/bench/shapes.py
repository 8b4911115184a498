"""What the speed benchmarks run on: model shapes with random weights and Meta's Llama 3 tokenizer, built by the
setup worker (the card's measured bf16 peak: ``bench.card``; conversations encoded once: ``bench.prepared``).

No Llama 3.2 checkpoint is reachable offline, and speed does not depend on the values of the weights, so a
shape is the published config with random bf16 weights, saved once as safetensors so that every benchmark
process loads the identical model with ``from_pretrained``. The tokenizer is the real Llama 3 one
(``tunebench.models.llama3_tokenizer``: llama-models' tiktoken file, converted), so token counts are the ones
the real Llama 3.2 models see. Without llama-models, ``--tokenizer`` takes a folder written by
``export-tokenizer``; a folder of another vocabulary becomes the older stand-in (that vocabulary plus the
Llama 3 special tokens and split), whose token counts differ from Llama 3's.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from tunebench.bench.card import cuda_facts, measure_matmul_peak
from tunebench.bench.specs import SetupSpec
from tunebench.core.config_schema import PACKAGED_MODEL
from tunebench.core.errors import BenchmarkError as ShapeError
from tunebench.core.errors import did_you_mean
from tunebench.core.io import atomic_write_json, cache_root, environment, fingerprint, read_json
from tunebench.models.llama3_tokenizer import is_llama3_tokenizer, llama3_tokenizer
from tunebench.models.loading import resolve_model, template_text

log = logging.getLogger(__name__)

# Llama 3.2 ships llama3-style RoPE scaling; it changes no FLOP count but keeps the config faithful.
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}
_LLAMA32_COMMON = {
    "vocab_size": 128256,
    "intermediate_size": 8192,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "rope_parameters": _LLAMA3_ROPE,
}

SHAPES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.2-1B(-Instruct) config.json: 1,235,814,400 parameters with tied embeddings
    "llama-3.2-1b": {
        **_LLAMA32_COMMON,
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "head_dim": 64,
    },
    # meta-llama/Llama-3.2-3B(-Instruct) config.json: 3,212,749,824 parameters with tied embeddings
    "llama-3.2-3b": {
        **_LLAMA32_COMMON,
        "hidden_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "head_dim": 128,
    },
    # Not a published model: two small layers on the Llama 3 vocabulary, for smoke tests of the harness.
    "tiny": {
        **_LLAMA32_COMMON,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
}

PUBLISHED_PARAMS = {"llama-3.2-1b": 1_235_814_400, "llama-3.2-3b": 3_212_749_824}

# Llama 3 special tokens (ids 128000+ in the real vocabulary); added to the stand-in tokenizer so the
# llama-3.1 template's markers are single special tokens, as they are for the real model.
LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
]
# Llama 3's pre-tokenizer split (its tokenizer.json): unlike SmolLM2's GPT-2 split it keeps a run of newlines
# together, so "<|end_header_id|>\n\n" + text tokenizes as the marker alone does, as it does for Llama 3.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
SHAPE_MARKER = "tunebench_shape.json"


def is_named_shape(name: str) -> bool:
    """True for a shape this module builds (as opposed to a model reference used as is)."""
    return name in SHAPES


def shape_config(name: str, tokenizer: Any = None) -> Any:
    """The LlamaConfig of a named shape; bos/eos/pad ids follow ``tokenizer`` when one is given.

    Raises:
        ShapeError: unknown name (with the known ones and a did-you-mean).
    """
    from transformers import LlamaConfig  # heavy: transformers, imported when needed

    if name not in SHAPES:
        dym = did_you_mean(name, SHAPES, "; did you mean ")
        raise ShapeError(f"unknown shape {name!r} (known: {', '.join(SHAPES)}, or a model reference){dym}")
    ids: dict[str, Any] = {"bos_token_id": 128000, "eos_token_id": 128009, "pad_token_id": None}
    if tokenizer is not None:
        ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    return LlamaConfig(**SHAPES[name], **ids)


def count_params(config: Any) -> int:
    """Parameters of a causal LM built from ``config`` (tied embeddings counted once), without allocating."""
    import torch  # heavy: torch, imported when needed
    from transformers import AutoModelForCausalLM  # heavy: transformers, imported when needed

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


# ----------------------------------------------------------------------------- the stand-in tokenizer


def default_tokenizer_source() -> str:
    """The packaged SmolLM2 model folder (dequantized once into the cache), whose tokenizer is the base."""

    return resolve_model(PACKAGED_MODEL).path


def standin_tokenizer(source: str | Path | None = None) -> Any:
    """A tokenizer that renders the llama-3.1 template with real special tokens.

    Args:
        source: a tokenizer folder (SmolLM2's, or one written by ``export_tokenizer``); default: the packaged
            SmolLM2 tokenizer.

    Returns:
        The tokenizer, with bos ``<|begin_of_text|>``, eos ``<|eot_id|>``, pad ``<|finetune_right_pad_id|>``,
        Llama 3's pre-tokenizer split and the llama-3.1 chat template. Converting an already converted one
        changes nothing.

    Raises:
        ShapeError: the folder cannot be loaded, or its vocabulary would not fit the 128,256-row embedding.
    """
    from tokenizers import Regex, pre_tokenizers  # heavy: tokenizers, imported when needed
    from transformers import AutoTokenizer  # heavy: transformers, imported when needed

    src = str(source) if source is not None else default_tokenizer_source()
    try:
        tok = AutoTokenizer.from_pretrained(src, clean_up_tokenization_spaces=False)
    except (OSError, ValueError) as e:
        raise ShapeError(f"--tokenizer {src}: cannot load a tokenizer there ({e}); give a tokenizer folder") from None
    tok.add_special_tokens({"extra_special_tokens": LLAMA3_SPECIAL}, replace_extra_special_tokens=False)
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
    tok.chat_template = template_text("llama-3.1")
    # Without this, "\n\n" before text becomes two tokens but one in the bare marker, and Unsloth's
    # train_on_responses_only labels differ from the shared mask on every conversation.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    if len(tok) > SHAPES["llama-3.2-1b"]["vocab_size"]:
        raise ShapeError(f"--tokenizer {src}: {len(tok)} tokens do not fit Llama 3's 128,256-row embedding")
    return tok


def export_tokenizer(out: str | Path, source: str | Path | None = None) -> Path:
    """Write the stand-in tokenizer to ``out`` (small; it travels to a machine without the packaged model)."""
    out = Path(out)
    tok = standin_tokenizer(source)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- building a shape


def shape_tokenizer(source: str | Path | None = None) -> tuple[Any, str]:
    """The tokenizer a named shape is built with, and what it is (for the results).

    Args:
        source: None for Meta's Llama 3 tokenizer (needs llama-models); a folder holding a Llama 3 tokenizer
            (e.g. from ``export-tokenizer``) is used as it is; any other folder becomes the stand-in.
    """
    from transformers import AutoTokenizer  # heavy: transformers, imported when needed

    if source is None:
        return llama3_tokenizer(), "Llama 3 (llama-models 0.3.0 tokenizer.model, converted)"
    try:
        tok = AutoTokenizer.from_pretrained(str(source), clean_up_tokenization_spaces=False)
    except (OSError, ValueError) as e:
        raise ShapeError(
            f"--tokenizer {source}: cannot load a tokenizer there ({e}); give a tokenizer folder"
        ) from None
    if is_llama3_tokenizer(tok):
        if not tok.chat_template:
            tok.chat_template = template_text("llama-3.1")
        return tok, f"Llama 3 (from {source})"
    return standin_tokenizer(source), f"stand-in: {source} + Llama 3 special tokens"


def shape_dir(name: str, tokenizer_source: str | None, root: str | Path | None = None) -> Path:
    """Where a built shape lives: keyed by its config and tokenizer source, so a change rebuilds it."""
    root = Path(root) if root is not None else cache_root() / "shapes"
    key = fingerprint([SHAPES[name], str(tokenizer_source or "llama3"), 0])
    return root / f"{name}-{key[:10]}"


def build_shape(
    name: str, tokenizer_source: str | None = None, root: str | Path | None = None, device: str | None = None
) -> Path:
    """Build a named shape once (random bf16 weights + its tokenizer, see ``shape_tokenizer``) and return its folder.

    The weights are initialised on ``device`` (default CUDA when present: seconds instead of minutes for
    billions of parameters) with the model's own initialiser under a fixed seed, then saved as safetensors.
    Concurrent builders each write a temp folder and only one rename wins.
    """
    import torch  # heavy: torch, imported when needed
    from transformers import (  # heavy: transformers, imported when needed
        AutoModelForCausalLM,
        GenerationConfig,
    )

    final = shape_dir(name, tokenizer_source, root)
    if (final / SHAPE_MARKER).exists():
        return final
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok, tok_note = shape_tokenizer(tokenizer_source)
    config = shape_config(name, tok)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    log.info("building shape %s (random bf16 weights) on %s into %s", name, device, final)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
        n = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp, safe_serialization=True)
        del model
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / SHAPE_MARKER,
            {
                "shape": name,
                "params": n,
                "weights": "random init (transformers initializer, seed 0), bfloat16",
                "tokenizer": tok_note,
                "config": SHAPES[name],
            },
        )
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: its folder is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def describe(name_or_ref: str, folder: str | Path) -> dict[str, Any]:
    """What a results file says about a shape: parameters, key dimensions, and where the weights come from."""
    from transformers import AutoConfig  # heavy: transformers, imported when needed

    config = AutoConfig.from_pretrained(str(folder))
    marker = Path(folder) / SHAPE_MARKER
    info = {
        "name": name_or_ref,
        "path": str(folder),
        "params": count_params(config),
        "hidden_size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "kv_heads": getattr(config, "num_key_value_heads", None),
        "vocab_size": config.vocab_size,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }
    if marker.exists():
        meta = read_json(marker, f"delete {folder} (a benchmark cache folder): it is made again")
        info["weights"], info["tokenizer"] = meta["weights"], meta["tokenizer"]
    else:
        info["weights"], info["tokenizer"] = "as given (the model's own)", "the model's own"
    return info


def run_setup(spec: SetupSpec | dict[str, Any]) -> dict[str, Any]:
    """Worker: build the named shapes (weights initialised on the GPU) and measure the matmul peak."""
    import torch  # heavy: torch, imported when needed

    spec = spec if isinstance(spec, SetupSpec) else SetupSpec.from_dict(spec)
    out: dict[str, Any] = {"environment": environment(), "card": cuda_facts(), "shapes": {}}
    for name in spec.build:
        t0 = time.perf_counter()
        out["shapes"][name] = {
            "path": str(build_shape(name, spec.tokenizer, spec.root)),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    if spec.calibrate and torch.cuda.is_available():
        out["calibration"] = measure_matmul_peak()
        log.info("bf16 matmul peak: %.1f TFLOP/s", out["calibration"]["peak_tflops"])
    return out


def resolve_shapes(names: list[str], tokenizer: str | None) -> dict[str, dict[str, Any]]:
    """Named shapes to build, and model references to use as they are (resolved now: errors come early)."""

    out = {}
    for name in names:
        if is_named_shape(name):
            out[name] = {"build": True, "chat_template": "llama-3.1"}
        else:
            out[name] = {"build": False, "path": resolve_model(name).path, "chat_template": "auto"}
    return out
