"""Shared fixtures: the real packaged SmolLM2-135M-Instruct and ShareGPT data, loaded once per session."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest

# shared test data builders (tests/fixtures/synthetic.py) import as `synthetic`
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (pyproject's `-n 2`) the workers share the cores: each worker, and every process it starts,
# takes its share of threads, before torch is imported (OpenMP spinning on more threads than cores slows a step by
# an order of magnitude, not by the share).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
if _WORKERS > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


SLOW_FIXTURES = frozenset({"smoke_run", "examples", "scored", "smol_adapter_run"})
"""Fixtures that train a model or run the pipeline (tests/integration/conftest.py and below): a test that uses one is
in the slow tier, whatever its own marks say. `pytest -m "not slow"` is the fast tier (README, Tests)."""


SESSION_RUNS = {"smoke": ("smoke_run", "examples", "scored"), "smol-adapter": ("smol_adapter_run",)}
"""The session fixtures that run the pipeline or train, by the run they build (``examples`` and ``scored`` build on
``smoke_run``)."""


def _run_groups() -> dict[str, str]:
    """Test file -> the session run it needs (its name in SESSION_RUNS), read from the files' text: under pytest-xdist
    (pyproject's `-n 2`) the files that need one run on one worker, so each run is built once."""
    root = Path(__file__).parent
    out = {}
    for path in sorted(root.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        args = {a.arg for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) for a in f.args.args}
        group = next((g for g, names in SESSION_RUNS.items() if args.intersection(names)), None)
        if group:
            out[path.relative_to(root.parent).as_posix()] = group
    return out


LONGEST_FIRST = (
    "tests/integration/test_crash.py",
    "smoke",
    "smol-adapter",
    "tests/integration/test_distributed.py",
    "tests/integration/test_sweep_workers.py",
    "tests/integration/test_add_evaluation.py",
    "tests/integration/test_readme_own_data.py",
    "tests/integration/test_sweep.py",
)
"""The work units that took longest on 2 cores (pytest --durations, 2026-12-06), handed out first so that no long
one starts last; the other integration files follow, then the unit files, each in collection order."""


def _scope(nodeid: str, groups: dict[str, str]) -> str:
    path = nodeid.split("::")[0]
    return groups.get(path, path)


def _longest_first(scope: str) -> tuple[int, int]:
    rank = LONGEST_FIRST.index(scope) if scope in LONGEST_FIRST else len(LONGEST_FIRST)
    return rank, 0 if scope.startswith("tests/integration/") else 1


def pytest_xdist_make_scheduler(config, log):
    """Whole files to a worker (module fixtures built once), the files of one session run together, the longest
    units first (``LONGEST_FIRST``; xdist's own order, most tests first, started the longest test last)."""
    from xdist.scheduler import LoadScopeScheduling

    groups = _run_groups()
    config.option.loadscopereorder = False  # the collection's order, which pytest_collection_modifyitems sets

    class ByRun(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid, groups)

    return ByRun(config, log)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the order the scheduler hands the work units out in
        groups = _run_groups()
        items.sort(key=lambda item: _longest_first(_scope(item.nodeid, groups)))  # stable: file order kept within
    slow = pytest.mark.slow
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(slow)
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smol_source():
    """The packaged model, dequantized into the cache (first use ~30 s)."""
    from tunebench.core.config_schema import PACKAGED_MODEL
    from tunebench.models.loading import resolve_model

    return resolve_model(PACKAGED_MODEL)


@pytest.fixture(scope="session")
def smol_tokenizer(smol_source):
    """(tokenizer, template_name) with the chat template used for training and evaluation."""
    from tunebench.models.loading import load_tokenizer

    return load_tokenizer(smol_source, "auto")


@pytest.fixture(scope="session")
def smol_base(smol_source):
    """The packaged model loaded for evaluation on CPU (fp32), no adapter."""
    from tunebench.evals.modeling import load_for_eval

    return load_for_eval(smol_source, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def llama31_tokenizer(smol_source):
    """SmolLM2's tokenizer with the Llama-3 special tokens added and the shipped llama-3.1 template (a copy per test
    module)."""
    from transformers import AutoTokenizer

    from tunebench.models.loading import template_text

    tok = AutoTokenizer.from_pretrained(smol_source.path)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tok.bos_token = "<|begin_of_text|>"
    tok.chat_template = template_text("llama-3.1")
    return tok


@pytest.fixture(scope="session")
def packaged_raw():
    """The packaged ShareGPT records (17,671 recovered from the truncated file)."""
    from tunebench.data.sources import read_source

    return read_source("packaged:sharegpt-v3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_source):
    """A 2-layer random-weight Llama with SmolLM2's tokenizer: real architecture, seconds to train."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smol_source.path)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_adapter_run(tmp_path_factory):
    """A run folder whose adapter was trained (hf backend, 3 steps) on the packaged model and data."""
    from tunebench.core.config import load_config
    from tunebench.core.config_build import dump_yaml
    from tunebench.train.trainer import train

    out = tmp_path_factory.mktemp("smol-run")
    cfg = load_config(
        "smoke",
        [
            "train.backend=hf",
            "train.max_steps=3",
            "train.save_every=0",
            "train.eval_every=0",
            "train.gradient_checkpointing=false",
            "data.max_train=24",
            "data.max_validation=4",
            "data.max_test=12",
            "data.max_length=160",
            "train.batch_size=4",
            "train.grad_accum=1",
            "train.lr=2e-3",
            "train.warmup_steps=0",
        ],
    )
    (out / "config.yaml").write_text(dump_yaml(cfg))
    train(cfg, out)
    return out


@pytest.fixture(scope="session")
def llama3_tokenizer_dir():
    """Meta's Llama 3 tokenizer (llama-models' tiktoken file) converted once into the tunebench cache."""
    from tunebench.models.llama3_tokenizer import llama3_tokenizer_dir

    return llama3_tokenizer_dir()
