"""Runtime names and the labels derived from them (core.runtimes), and the rule for loading in 4 bit
(evals.settings.in_4bit): each written once, so these pin what every user of them writes to disk."""

from __future__ import annotations

import typing

import pytest

from tunebench.app.eval_settings import eval_settings
from tunebench.core.config import load_config
from tunebench.core.config_schema import ExportConfig
from tunebench.core.runtimes import (
    BOTH,
    ENDPOINT,
    EVAL_RUNTIMES,
    LLAMA_CPP,
    SERVE_ENGINES,
    TRANSFORMERS,
    VLLM,
    ExportEvaluate,
    artifact_label,
    artifact_name,
    artifact_names,
    artifact_quant,
    artifact_runtime,
    artifact_runtimes,
    file_label,
    gguf_file_name,
    is_artifact_label,
    is_served_label,
    label_artifact,
)
from tunebench.evals.settings import EvalSettings, in_4bit

QUANTS = ["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]


def test_the_names_as_written_to_results_and_accepted_on_the_command_line():
    assert (TRANSFORMERS, LLAMA_CPP, ENDPOINT, VLLM, BOTH) == ("transformers", "llama.cpp", "endpoint", "vllm", "both")
    assert EVAL_RUNTIMES == ("transformers", "llama.cpp")
    assert SERVE_ENGINES == ("llama.cpp", "vllm")
    assert typing.get_args(ExportEvaluate) == (*EVAL_RUNTIMES, BOTH)
    assert typing.get_type_hints(ExportConfig)["evaluate"] == ExportEvaluate | bool


def test_artifact_runtimes():
    assert artifact_runtimes(True) == ["transformers"] and artifact_runtimes(False) == []
    assert artifact_runtimes("transformers") == ["transformers"]
    assert artifact_runtimes("both") == ["transformers", "llama.cpp"]
    assert artifact_runtimes("llama.cpp") == ["llama.cpp"]


@pytest.mark.parametrize("quant", QUANTS)
def test_labels_of_each_type_in_each_runtime(quant):
    assert gguf_file_name(quant) == f"model-{quant}.gguf"
    assert artifact_name(quant) == artifact_name(quant, TRANSFORMERS) == quant
    assert artifact_name(quant, LLAMA_CPP) == f"{quant}-llamacpp"
    assert artifact_label(quant) == f"gguf-{quant}"
    assert artifact_label(quant, LLAMA_CPP) == f"gguf-{quant}-llamacpp"
    path = f"runs/smoke/export/{gguf_file_name(quant)}"
    assert file_label(path) == f"gguf-{quant}" and file_label(path, LLAMA_CPP) == f"gguf-{quant}-llamacpp"
    for runtime in EVAL_RUNTIMES:
        label = artifact_label(quant, runtime)
        assert is_artifact_label(label) and not is_served_label(label)
        assert label_artifact(label) == artifact_name(quant, runtime)
        assert artifact_quant(label_artifact(label)) == quant
        assert artifact_runtime(label_artifact(label)) == runtime


def test_a_file_of_another_name_keeps_its_stem():
    assert file_label("/tmp/my-model.Q4_0.gguf") == "gguf-my-model.Q4_0"
    assert file_label("/tmp/my-model.gguf", LLAMA_CPP) == "gguf-my-model-llamacpp"


def test_artifact_names_per_evaluate_setting():
    assert artifact_names(["f16", "q8_0"], True) == {"f16": "transformers", "q8_0": "transformers"}
    assert artifact_names(["q8_0"], "llama.cpp") == {"q8_0-llamacpp": "llama.cpp"}
    assert artifact_names(["q8_0"], "both") == {"q8_0": "transformers", "q8_0-llamacpp": "llama.cpp"}
    assert artifact_names(["q8_0"], False) == {} and artifact_names([], "both") == {}


def test_served_labels_are_kept_whole():
    for label in ("served", "served-vllm", "served2"):
        assert is_served_label(label) and not is_artifact_label(label) and label_artifact(label) == label
    for label in ("base", "tuned", "my-served"):
        assert not is_served_label(label) and not is_artifact_label(label)


def _settings(load_in_4bit: str, merge_adapter: bool) -> EvalSettings:
    """Evaluation settings with a 4-bit choice as resolved (``on`` needs CUDA to load, so not a loaded config)."""
    return eval_settings(
        load_config(
            "smoke",
            [f"model.load_in_4bit={load_in_4bit}", f"eval.merge_adapter={str(merge_adapter).lower()}"],
            resolved=False,
        )
    )


@pytest.mark.parametrize(
    ("load_in_4bit", "merge_adapter", "artifact", "want"),
    [
        ("on", False, False, True),  # a QLoRA adapter, unmerged: on the 4-bit base it was trained against
        ("on", True, False, False),  # merged: into the original 16-bit weights, the base in 16 bit too
        ("on", False, True, False),  # an exported GGUF: scored as written
        ("on", True, True, False),
        ("off", False, False, False),
        ("off", True, False, False),
        ("off", False, True, False),
        ("auto", False, False, False),  # unresolved: never 4-bit by accident
    ],
)
def test_the_4bit_rule(load_in_4bit, merge_adapter, artifact, want):
    assert in_4bit(load_in_4bit, merge_adapter, artifact) is want
    settings = _settings(load_in_4bit, merge_adapter)
    assert (settings.for_artifact("model-q8_0.gguf") if artifact else settings).load_in_4bit is want


def test_the_command_that_scores_an_artifact_names_its_file_and_runtime():
    from tunebench.core.runtimes import artifact_eval_command
    from tunebench.evals.results import rerun_hint

    assert (
        artifact_eval_command("q8_0", "runs/a")
        == "tunebench eval --model runs/a/export/model-q8_0.gguf --data-from runs/a"
    )
    assert artifact_eval_command("q8_0-llamacpp", "RUN") == (
        "tunebench eval --model RUN/export/model-q8_0.gguf --runtime llama.cpp --data-from RUN"
    )
    hint = rerun_hint("runs/a/eval/gguf-q4_k_m-llamacpp/results.json")
    assert (
        hint == "re-run `tunebench eval --model runs/a/export/model-q4_k_m.gguf --runtime llama.cpp --data-from runs/a`"
    )
    assert rerun_hint("runs/a/eval/gguf-f16/results.json").endswith("model-f16.gguf --data-from runs/a`")


def test_another_runtime_gets_its_artifact_names_by_the_same_rule(monkeypatch):
    """A runtime added to EVAL_RUNTIMES (docs/architecture.md, "How to add a runtime") names its artifacts, labels and
    eval command by the rule llama.cpp's follow, with no other edit."""
    from tunebench.core import runtimes

    monkeypatch.setattr(runtimes, "EVAL_RUNTIMES", (*EVAL_RUNTIMES, "vllm-offline"))
    assert runtimes.runtime_suffix("llama.cpp") == "-llamacpp" and runtimes.runtime_suffix(TRANSFORMERS) == ""
    name = runtimes.artifact_name("q8_0", "vllm-offline")
    assert name == "q8_0-vllmoffline" and runtimes.artifact_label("q8_0", "vllm-offline") == "gguf-q8_0-vllmoffline"
    assert runtimes.artifact_runtime(name) == "vllm-offline" and runtimes.artifact_quant(name) == "q8_0"
    assert runtimes.artifact_runtime("q8_0-llamacpp") == LLAMA_CPP and runtimes.artifact_quant("q8_0") == "q8_0"
    assert runtimes.artifact_runtimes("vllm-offline") == ["vllm-offline"]
    assert runtimes.artifact_eval_command(name, "runs/smoke") == (
        "tunebench eval --model runs/smoke/export/model-q8_0.gguf --runtime vllm-offline --data-from runs/smoke"
    )
