"""One evaluation driver over runtimes that are registrations (evals.driver): a runtime defined here and registered
through the public API is opened by name and evaluated through the families, with no other edit; a family needing
a capability the runtime lacks is skipped; a toy family with a ``measure`` is run on it; the three built-in runtimes
implement the whole contract."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tunebench.app.eval_settings import eval_settings
from tunebench.core.config import load_config
from tunebench.core.runtimes import ENDPOINT, LLAMA_CPP, TRANSFORMERS
from tunebench.evals.driver import (
    CONTINUATION_LOGPROBS,
    GENERATE,
    SHARDS,
    TOKEN_LOGPROBS,
    Job,
    evaluate,
    measured,
    open_runtime,
    register_runtime,
    runtime_class,
    runtime_names,
    unregister_runtime,
)
from tunebench.evals.families import Family, MetricShape, register, unregister
from tunebench.evals.generation import Generation
from tunebench.evals.probes.sets import load_probe_set
from tunebench.evals.prompting import samples_per_prompt
from tunebench.evals.results import Metric

CONTRACT = ("open", "identity", "check", "generator", "score_perplexity", "score_lm_eval", "close", "save")


class ToyGenerator:
    """Answers every prompt with the Fibonacci probe's expected continuation."""

    def identity(self) -> dict[str, Any]:
        return {"runtime": "toy"}

    def generate(self, prompts, sampling, seed, on_token=None, stop=None) -> Generation:
        n = samples_per_prompt(sampling)
        return Generation(
            samples=[["13, 21, 34"] * n for _ in prompts],
            token_counts=[[5] * n for _ in prompts],
            decode_loop="toy",
        )


class ToyRuntime:
    """A runtime that only generates: no log-probs, so perplexity and lm-eval are not asked of it."""

    name = "toy"
    capabilities = frozenset({GENERATE})
    opened: list[Any] = []

    def __init__(self, target: Any) -> None:
        self.target, self.started, self.closed = target, time.perf_counter(), False

    @classmethod
    def open(cls, settings, run_dir, target=None, **options) -> ToyRuntime:
        cls.opened.append((target, options))
        return cls(target)

    def identity(self) -> dict[str, Any]:
        return {"runtime": self.name, "target": str(self.target)}

    def check(self, job: Job) -> None:
        job.results.artifacts["toy_check"] = "held"

    def generator(self, job: Job) -> ToyGenerator:
        return ToyGenerator()

    def score_perplexity(self, job: Job) -> None:
        raise AssertionError("perplexity needs token log-probs, which the toy runtime does not declare")

    def score_lm_eval(self, job: Job) -> None:
        raise AssertionError("lm-eval needs continuation log-probs, which the toy runtime does not declare")

    def close(self) -> None:
        self.closed = True

    def save(self, job: Job, out_path: Path) -> None:
        job.results.save(out_path)


@pytest.fixture
def toy_runtime():
    register_runtime("toy", ToyRuntime)
    yield "toy"
    unregister_runtime("toy")


def _settings(*overrides: str):
    return eval_settings(load_config("smoke", list(overrides), resolved=False))


def test_a_registered_runtime_is_opened_by_name_and_evaluated_through_the_families(toy_runtime, tmp_path):
    settings = _settings()  # perplexity, probes and lm-eval all on
    assert "toy" in runtime_names()
    runtime = open_runtime("toy", settings, tmp_path, "some-model", flavour="plain")
    assert ToyRuntime.opened[-1] == ("some-model", {"flavour": "plain"})
    out = tmp_path / "eval" / "toy" / "results.json"
    res = evaluate(runtime, settings, tmp_path, "toy", out)
    assert runtime.closed
    assert res.model == {"runtime": "toy", "target": "some-model"}
    assert res.artifacts["toy_check"] == "held"  # the check ran before anything was scored
    names = [m.name for m in res.metrics]
    assert names and all(n.startswith("probes/") for n in names)  # no perplexity, no lm-eval: not declared
    default = load_probe_set("default")
    assert res.metric("probes/default/greedy/fibonacci/pass_rate").value == 1.0
    assert res.metric("probes/default/greedy/pass_rate").n == len(default.prompts)
    assert {"load_s", "probes_s", "total_s"} <= set(res.timings)
    saved = json.loads(out.read_text())
    assert [m["name"] for m in saved["metrics"]] == names


def test_families_are_measured_in_order_when_enabled_and_the_runtime_can(toy_runtime):
    everything = frozenset({GENERATE, TOKEN_LOGPROBS, CONTINUATION_LOGPROBS, SHARDS})
    assert [f.name for f in measured(_settings(), everything)] == ["perplexity", "probes", "lm_eval"]
    assert [f.name for f in measured(_settings(), frozenset({GENERATE}))] == ["probes"]
    assert [f.name for f in measured(_settings(), frozenset({TOKEN_LOGPROBS}))] == ["perplexity"]
    off = _settings("eval.perplexity=false", "eval.lm_eval_tasks=[]", "eval.probe_files=[]")
    assert measured(off, everything) == []


def test_a_toy_family_with_a_measure_runs_on_any_runtime_that_has_what_it_needs(toy_runtime, tmp_path):
    def measure(runtime, job: Job) -> None:
        gen = runtime.generator(job).generate(
            [[{"role": "user", "content": "hi"}]], job.settings.eval.probe_sampling[1], 0
        )
        items = [{"id": "hi", "num": float(gen.texts[0] == "13, 21, 34"), "den": 1}]
        job.results.add(Metric("toy/answered", items[0]["num"], True, n=1, group="toy"), items)

    family = Family(
        "toy",
        lambda ev: [MetricShape(("toy", "answered"), open=False, higher_is_better=True)],
        measure=measure,
        needs=(GENERATE,),
    )
    register(family)
    try:
        settings = _settings("eval.perplexity=false", "eval.lm_eval_tasks=[]", "eval.probe_files=[]")
        res = evaluate(open_runtime("toy", settings, tmp_path), settings, tmp_path, "toy")
        assert [m.name for m in res.metrics] == ["toy/answered"] and res.metrics[0].value == 1.0
        register(Family("toy2", measure=measure, needs=(GENERATE, TOKEN_LOGPROBS)))
        try:
            res = evaluate(open_runtime("toy", settings, tmp_path), settings, tmp_path, "toy")
            assert [m.name for m in res.metrics] == ["toy/answered"]  # toy2 skipped: no token log-probs
        finally:
            unregister("toy2")
    finally:
        unregister("toy")


def test_a_runtime_without_shards_refuses_one(toy_runtime, tmp_path):
    from tunebench.core.shards import Shard

    settings = _settings()
    with pytest.raises(ValueError, match="does not score shards"):
        evaluate(open_runtime("toy", settings, tmp_path), settings, tmp_path, "toy", shard=Shard(0, 2))


def test_the_registry_refuses_a_taken_name_and_names_the_known_ones(toy_runtime):
    with pytest.raises(ValueError, match="registered already"):
        register_runtime("toy", ToyRuntime)
    with pytest.raises(ValueError, match="module:Class"):
        register_runtime("other", "no_colon_here")
    with pytest.raises(KeyError, match="known: transformers, llama.cpp, endpoint"):
        runtime_class("vllm-offline")


@pytest.mark.parametrize("name", [TRANSFORMERS, LLAMA_CPP, ENDPOINT])
def test_the_built_in_runtimes_implement_the_whole_contract(name):
    cls = runtime_class(name)  # imported lazily, by name
    assert cls.name == name
    assert GENERATE in cls.capabilities and TOKEN_LOGPROBS in cls.capabilities
    for method in CONTRACT:
        assert callable(getattr(cls, method, None)), f"{cls.__name__} lacks {method}"
    assert (SHARDS in cls.capabilities) == (name == TRANSFORMERS)
