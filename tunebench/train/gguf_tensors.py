"""The tensors of a GGUF file from a merged llama: llama.cpp's names, attn_q / attn_k rows permuted into its rotary
layout, each quantized to the requested type (``QUANTS``; F16 where the rows do not divide into the type's blocks),
and Llama 3 rope scaling as a ``rope_freqs`` tensor. ``gguf_export`` writes them with the metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunebench.core.errors import ExportError

# name -> (GGMLQuantizationType name, LlamaFileType name). Pure files: every 2-D tensor takes the type.
QUANTS = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}


def _gguf():
    import gguf  # heavy: gguf-py pulls numpy and its quantizer tables

    return gguf


def permute(w: Any, n_head: int, n_head_kv: int | None) -> Any:
    """convert_hf_to_gguf's LlamaModel.permute: HF's rotate-half layout -> llama.cpp's interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_freqs(config: Any) -> Any | None:
    """Llama 3 rope scaling as llama.cpp's per-dimension factors (convert_hf_to_gguf generate_extra_tensors)."""
    import numpy as np  # heavy: numeric

    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if str(rope.get("rope_type", rope.get("type", ""))).lower() != "llama3":
        return None
    base = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0) or 10000.0))
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def rope_provenance(config: Any) -> dict[str, str]:
    """``{"rope_parameters": json}`` when rope is scaled.

    transformers' GGUF reader drops it, models.loading restores it."""
    import json

    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "default":
        return {}
    return {"rope_parameters": json.dumps(rope, sort_keys=True)}


def check_architecture(config: Any) -> None:
    """Refuse what this writer does not convert (it writes the llama architecture only).

    Raises:
        ExportError: another architecture, or llama with biases.
    """
    arch = getattr(config, "model_type", None)
    if arch != "llama":
        raise ExportError(
            f"architecture {arch!r} is not supported by the GGUF export (llama only: Llama 3.x, "
            "SmolLM2); use llama.cpp's convert_hf_to_gguf.py on `tunebench export RUN --merged`"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ExportError("llama with attention/MLP biases is not supported by the GGUF export")


@dataclass
class Tensor:
    name: str
    data: Any
    qtype: Any


def gguf_tensors(model: Any, quant: str) -> tuple[list[Tensor], list[str]]:
    """Named, permuted, quantized tensors of a merged llama; and the names that fell back to F16."""
    import numpy as np  # heavy: numeric
    import torch  # heavy: weights

    g = _gguf()
    cfg = model.config
    qtype = g.GGMLQuantizationType[QUANTS[quant][0]]
    block = g.GGML_QUANT_SIZES[qtype][0]
    tmap = g.get_tensor_name_map(g.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    out, fallback, unmapped = [], [], []
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            unmapped.append(hf_name)
            continue
        w = t.detach().to(torch.float32).cpu().numpy()
        if name.endswith("attn_q.weight"):
            w = permute(w, cfg.num_attention_heads, cfg.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            w = permute(w, cfg.num_attention_heads, cfg.num_key_value_heads)
        if w.ndim == 1 or qtype == g.GGMLQuantizationType.F32:
            out.append(Tensor(name, np.ascontiguousarray(w, dtype=np.float32), g.GGMLQuantizationType.F32))
            continue
        use = qtype
        if w.shape[-1] % block:
            use = g.GGMLQuantizationType.F16
            fallback.append(name)
        out.append(Tensor(name, g.quants.quantize(np.ascontiguousarray(w), use), use))
    if unmapped:
        raise ExportError(f"tensors with no GGUF name for llama: {', '.join(unmapped[:5])}; not a plain llama")
    freqs = _rope_freqs(cfg)
    if freqs is not None:
        out.append(Tensor(g.TENSOR_NAMES[g.MODEL_TENSOR.ROPE_FREQS] + ".weight", freqs, g.GGMLQuantizationType.F32))
    return out, fallback
