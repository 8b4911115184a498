"""`tunebench export RUN --gguf --quant f16,q8_0`: the merged model as GGUF files for llama.cpp and Ollama.

Written with gguf-py (the ``gguf`` package, llama.cpp's own Python writer), following what llama.cpp's
``convert_hf_to_gguf.py`` does for the llama architecture:

- tensor names from ``gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n_blocks)``; ``lm_head`` is left out when the
  embeddings are tied; attn_q / attn_k rows are permuted into llama.cpp's rotary layout (``gguf_tensors.permute``,
  undone by transformers' ``LlamaTensorProcessor``);
- 1-D tensors (norms) stay F32, 2-D tensors take the requested type, and a tensor whose rows do not divide
  into the type's blocks falls back to F16 (recorded);
- Llama 3 rope scaling becomes a ``rope_freqs`` tensor;
- the tokenizer as ``gpt2`` BPE: tokens, token types, merges, the pre-tokenizer name llama.cpp selects its
  split regex by, bos/eos/pad/unk ids, add_bos, and ``tokenizer.chat_template`` = the run's template.

Only types gguf-py can *quantize* are offered (it dequantizes many more); k-quant mixtures such as q4_k_m are
refused with the reason, never approximated. Every file is written under a temporary name and renamed when
complete, so a full disk leaves the previous file intact.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from tunebench.core.errors import ExportError, InvalidInput, did_you_mean
from tunebench.core.io import (
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    package_version,
    read_json,
    sha256_file,
)
from tunebench.core.runtimes import gguf_file_name
from tunebench.models.loading import ModelSource, is_llama3
from tunebench.models.modelfile import match_template, modelfile_text
from tunebench.train.export import merge_adapter
from tunebench.train.gguf_tensors import QUANTS, _gguf, check_architecture, gguf_tensors, rope_provenance

log = logging.getLogger(__name__)

# llama-quantize's recipes: several types per file, chosen per tensor by rules only llama.cpp implements
MIXTURES = {
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
    "iq4_xs",
    "iq4_nl",
    "iq3_xxs",
    "iq3_s",
    "iq3_m",
    "iq2_xxs",
    "iq2_xs",
    "iq2_s",
    "iq2_m",
    "iq1_s",
    "iq1_m",
    "tq1_0",
    "tq2_0",
    "mxfp4",
}
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# pre-tokenizer names llama.cpp keys its split regex on (convert_hf_to_gguf.get_vocab_base_pre)
PRE_BY_FAMILY = {"llama3": "llama-bpe", "smollm": "smollm"}


def supported_quants() -> list[str]:
    """The types this installation of gguf-py can actually quantize to (probed, not assumed)."""
    import numpy as np  # heavy: only for the probe

    g = _gguf()
    out = []
    for name, (qtype, _) in QUANTS.items():
        try:
            g.quants.quantize(np.zeros((1, 256), dtype=np.float32), g.GGMLQuantizationType[qtype])
            out.append(name)
        except (NotImplementedError, KeyError, AttributeError):
            continue
    return out


def parse_quants(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"f16,q8_0"`` -> ``["f16", "q8_0"]``, refusing what gguf-py cannot write.

    Raises:
        ExportError: an unknown type, a k-quant mixture, or a type this gguf-py has no quantizer for.
    """
    names = [q.strip().lower() for q in (text.split(",") if isinstance(text, str) else text) if q.strip()]
    if not names:
        raise ExportError("--quant is empty; give one or more of " + ", ".join(supported_quants()))
    ok = supported_quants()
    version = package_version("gguf")
    for q in names:
        if q in ok:
            continue
        why = (
            f"{q} is a llama.cpp mixture recipe (k-quant/i-quant types chosen per tensor by llama-quantize); "
            f"gguf-py {version} has no quantizer for those types, only dequantizers"
            if q in MIXTURES
            else f"gguf-py {version} cannot quantize to {q}"
            if q in QUANTS
            else f"unknown quantization type {q!r}{did_you_mean(q, [*QUANTS, *MIXTURES])}"
        )
        raise ExportError(
            f"{why}. Supported here: {', '.join(ok)}. For {q}, export f16 and run llama.cpp's "
            f"`llama-quantize model-f16.gguf model-{q}.gguf {q.upper()}`, then evaluate that file with "
            "`tunebench eval --model FILE --data-from RUN`."
        )
    return list(dict.fromkeys(names))


def _pre_tokenizer(tok: Any, config: Any, source: ModelSource) -> str:
    """The tokenizer.ggml.pre value: copied from a GGUF base, else from the model family."""
    if source.kind in ("packaged", "gguf"):
        from tunebench.models.loading import gguf_field, packaged_file

        path = packaged_file(source.ref) if source.kind == "packaged" else Path(source.ref).expanduser()
        pre = gguf_field(path, "tokenizer.ggml.pre")
        if pre:
            return str(pre)
    if is_llama3(config):
        return PRE_BY_FAMILY["llama3"]
    vocab = tok.get_vocab()
    if len(vocab) == 49152 and "<|im_start|>" in vocab:
        return PRE_BY_FAMILY["smollm"]
    raise ExportError(
        f"{source.ref}: cannot tell which pre-tokenizer llama.cpp should split text with (known families: "
        f"{', '.join(PRE_BY_FAMILY)}); a wrong one silently changes tokenization, so no GGUF is written"
    )


def tokenizer_metadata(tok: Any, config: Any, source: ModelSource) -> dict[str, Any]:
    """Everything the GGUF tokenizer section needs, from the run's (fast, BPE) tokenizer.

    Raises:
        ExportError: not a byte-level BPE tokenizer, or no chat template.
    """
    import json

    g = _gguf()
    backend = getattr(tok, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ExportError(
            f"{source.ref}: tokenizer model {model.get('type')!r} is not BPE; GGUF export writes "
            "gpt2-style BPE tokenizers (Llama 3, SmolLM2) only"
        )
    if not tok.chat_template:
        raise ExportError(f"{source.ref}: the run's tokenizer has no chat template to put in the GGUF")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(int(config.vocab_size)):
        if i not in reverse:  # embedding rows beyond the tokenizer (padding) are unused tokens
            tokens.append(f"[PAD{i}]")
            types.append(g.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            types.append(g.TokenType.CONTROL if added[i].special else g.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(g.TokenType.NORMAL)
    probe = tok("a", add_special_tokens=True)["input_ids"]
    return {
        "pre": _pre_tokenizer(tok, config, source),
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "pad": tok.pad_token_id,
        "unk": tok.unk_token_id,
        "add_bos": bool(probe) and probe[0] == tok.bos_token_id,
        "chat_template": tok.chat_template,
    }


def _temp_path(final: Path) -> Path:
    """Where a file is written before the rename that publishes it (same folder: the rename is atomic)."""
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"


def _add_metadata(w: Any, g: Any, cfg: Any, tok_meta: dict[str, Any], quant: str, meta: dict[str, Any]) -> None:
    """The GGUF key-values: the llama architecture's shapes, the file type, the tokenizer and tunebench's provenance."""
    w.add_type("model")
    w.add_name(meta["name"])
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", None) or 10000.0)))
    w.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(g.LlamaFileType[QUANTS[quant][1]])
    w.add_quantization_version(g.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok_meta["pre"])
    w.add_token_list(tok_meta["tokens"])
    w.add_token_types(tok_meta["types"])
    w.add_token_merges(tok_meta["merges"])
    for key, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("pad", w.add_pad_token_id),
        ("unk", w.add_unk_token_id),
    ):
        if tok_meta[key] is not None:
            add(int(tok_meta[key]))
    w.add_add_bos_token(tok_meta["add_bos"])
    w.add_add_eos_token(False)
    w.add_chat_template(tok_meta["chat_template"])
    for key, value in meta["tunebench"].items():  # provenance; readers ignore unknown keys
        w.add_string(f"tunebench.{key}", str(value))


def write_gguf(path: Path, model: Any, tok_meta: dict[str, Any], quant: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write one GGUF file atomically; return what the export manifest records about it.

    Raises:
        ExportError: the disk filled (or another write error) - the previous file at ``path`` is untouched.
    """
    g = _gguf()
    cfg = model.config
    tensors, fallback = gguf_tensors(model, quant)
    need = sum(int(t.data.nbytes) for t in tensors) + (8 << 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise ExportError(
            f"{path}: needs about {need / 1e6:.0f} MB but {path.parent} has {free / 1e6:.0f} MB free; "
            "free space or pass --out on another disk (nothing was written)"
        )
    tmp = _temp_path(path)
    w = g.GGUFWriter(tmp, g.MODEL_ARCH_NAMES[g.MODEL_ARCH.LLAMA])
    try:
        _add_metadata(w, g, cfg, tok_meta, quant, meta)
        for t in tensors:
            w.add_tensor(t.name, t.data, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.flush()
        os.fsync(w.fout[0].fileno())
        w.close()
        os.replace(tmp, path)
    except OSError as e:
        _discard(w, tmp)
        if e.errno in DISK_FULL:
            raise ExportError(
                f"{path}: the disk filled up while writing ({e.strerror}); the previous file, if any, "
                f"is untouched. Free about {need / 1e6:.0f} MB and export again"
            ) from None
        raise ExportError(f"{path}: could not write the GGUF ({e}); the previous file, if any, is untouched") from None
    except BaseException:
        _discard(w, tmp)
        raise
    return {
        "file": path.name,
        "quant": quant,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "f16_fallback_tensors": fallback,
        "tensors": len(tensors),
    }


def _discard(w: Any, tmp: Path) -> None:
    try:
        w.close()
    except OSError:  # closing flushes the buffer, which fails again on a full disk
        pass
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _kept_artifacts(out_dir: Path, adapter_sha256: str, names: list[str]) -> list[dict[str, Any]]:
    """Artifacts of an earlier export of the same adapter that this one did not rewrite (still listed)."""
    try:
        old = read_json(out_dir / "export.json")
    except (InvalidInput, FileNotFoundError):  # none, or damaged: the artifacts it listed are written again
        return []
    if not isinstance(old, dict) or old.get("adapter_sha256") != adapter_sha256:
        return []
    listed = old.get("artifacts") if isinstance(old.get("artifacts"), list) else []
    return [
        a
        for a in listed
        if isinstance(a, dict)
        and isinstance(a.get("file"), str)
        and a.get("quant") not in names
        and (out_dir / a["file"]).exists()
    ]


def export_gguf(
    run_or_adapter: str | Path, quants: str | list[str] = "f16,q8_0", out: str | Path | None = None
) -> Path:
    """Merge the run's adapter and write ``model-<quant>.gguf`` + ``model-<quant>.Modelfile`` per type.

    Args:
        run_or_adapter: a run folder (or its adapter folder).
        quants: comma-separated or listed types (see ``supported_quants``).
        out: output folder (default ``RUN/export``).

    Returns:
        The output folder; ``export.json`` there lists every artifact with its sha256.

    Raises:
        ExportError: no adapter, unsupported architecture/tokenizer/type, or a write that failed.
    """
    names = parse_quants(quants)  # before loading anything: a bad type costs nothing
    merged, tok, source, adapter = merge_adapter(run_or_adapter, "float32", check=check_architecture)
    out_dir = Path(out) if out else adapter.parent / "export"
    tok_meta = tokenizer_metadata(tok, merged.config, source)
    go = match_template(tok)
    from tunebench.models.adapters import adapter_manifest, adapter_sha

    manifest = adapter_manifest(adapter)
    template = manifest.get("template", {}) or {}
    provenance = {
        "base": source.identity,
        "adapter_sha256": adapter_sha(adapter),
        "template": template.get("name", "model"),
        "template_sha": fingerprint(tok.chat_template),
        **rope_provenance(merged.config),
    }
    run_name = adapter.parent.name
    artifacts = []
    for q in names:
        path = out_dir / gguf_file_name(q)
        log.info("writing %s (%s)", path, q)
        info = write_gguf(
            path, merged, tok_meta, q, {"name": f"{run_name} ({source.ref} + LoRA)", "tunebench": provenance}
        )
        mf = path.with_suffix(".Modelfile")
        atomic_write_text(mf, modelfile_text(path.name, tok, go, note=f"run {run_name}, {q}"))
        artifacts.append({**info, "modelfile": mf.name})
    atomic_write_text(out_dir / "Modelfile", modelfile_text(artifacts[0]["file"], tok, go, note=f"run {run_name}"))
    artifacts = _kept_artifacts(out_dir, provenance["adapter_sha256"], names) + artifacts
    atomic_write_json(
        out_dir / "export.json",
        {
            "schema": "tunebench.export/1",
            "adapter": str(adapter),
            "base": source.to_dict(),
            **provenance,
            "writer": f"gguf-py {package_version('gguf')}",
            "pre_tokenizer": tok_meta["pre"],
            "ollama_template": go.family if go else None,
            "artifacts": artifacts,
        },
    )
    log.info("GGUF export written to %s (gguf-py %s, types %s)", out_dir, package_version("gguf"), ", ".join(names))
    return out_dir
