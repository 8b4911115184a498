"""The judge stage end to end in-process: the packaged SmolLM2-135M answers as base and tuned (a trained adapter)
and judges the pairs itself, both orders, with the planted sanity pairs; a re-run generates nothing."""

from __future__ import annotations

import json

import pytest

from tunebench.app.eval_settings import eval_settings
from tunebench.core.config import load_config
from tunebench.evals.judge.stage import run_judge

pytestmark = pytest.mark.slow  # the packaged model judges: up to 60 s a test


@pytest.fixture(scope="module")
def judged(smol_adapter_run, tmp_path_factory):
    cache = tmp_path_factory.mktemp("judge-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEBENCH_CACHE", str(cache))
    cfg = load_config(
        "smoke",
        ["eval.judge.n=2", "eval.judge.answer_max_new_tokens=8", "eval.judge.max_new_tokens=8", "model.dtype=float32"],
    )
    out = tmp_path_factory.mktemp("judge-out")
    res = run_judge(eval_settings(cfg), smol_adapter_run, smol_adapter_run / "adapter", out, progress=False)
    yield cfg, smol_adapter_run, out, res, cache
    mp.undo()


def test_packaged_model_judges_base_against_tuned_in_both_orders(judged):
    _, _, out, res, _ = judged
    lines = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    pairs = [x for x in lines if "judgment_base_first" in x]
    sanity = [x for x in lines if "expected" in x]
    assert len(pairs) == 2 and len(sanity) == 8
    for p in pairs:
        assert p["question"] and p["base_answer"] and p["tuned_answer"]
        assert isinstance(p["judgment_base_first"], str) and isinstance(p["judgment_tuned_first"], str)
        assert p["verdict_base_first"] in ("A", "B", "C", None)
    m = res.metric("judge/heldout/win_rate")
    d = m.details
    assert d["paired"] == "win_rate" and d["judgments"] == 4 and d["sanity"]["n"] == 8
    assert "135M parameters" in d["judge_note"]
    assert d["valid"] or d["invalid_reason"]  # a 135M judge may well fail its planted pairs: said, not hidden
    assert res.model["kind"] == "in-process" and (out / "results.json").exists()


def test_a_rerun_judges_nothing_again(judged):
    cfg, run, out, res, cache = judged
    files = sorted(cache.glob("generations/*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = run_judge(eval_settings(cfg), run, run / "adapter", out, progress=False)
    assert sorted(cache.glob("generations/*.json")) == files
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing generated, nothing written
    same = [json.dumps(vars(m), sort_keys=True) for m in again.metrics]
    assert same == [json.dumps(vars(m), sort_keys=True) for m in res.metrics]


def test_judging_in_batches_of_similar_length_gives_the_one_call_verdicts(tmp_path, monkeypatch):
    """InProcessJudge makes one generation call per batch of similar length (so short turn-1 prompts do not decode
    at turn-2 widths); the judgments are those of one call over every request, each back in its request's place."""
    from tunebench.core.config_schema import SamplingConfig
    from tunebench.evals.generation import TransformersGenerator
    from tunebench.evals.judge.stage import InProcessJudge
    from tunebench.evals.modeling import load_for_eval

    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache"))
    loaded = load_for_eval("packaged:smollm2-135m-instruct", None, "auto", dtype="float32")
    requests = [[{"role": "user", "content": "Which is larger, 3 or 7? " * k}] for k in (1, 6, 2, 9, 4)]
    batched = InProcessJudge(loaded, 6, 2, progress=False).complete(requests)
    monkeypatch.setenv("TUNEBENCH_CACHE", str(tmp_path / "cache-one-call"))
    sampling = SamplingConfig(name="judge", temperature=0.0, min_p=None, max_new_tokens=6)
    one_call = TransformersGenerator(loaded, 8, progress=False).generate(requests, sampling, 0).texts
    assert batched == one_call and len(set(batched)) > 1


def test_the_logprobs_verdict_judges_the_same_answers_end_to_end(judged, tmp_path):
    """eval.judge.verdict=logprobs through the stage: the same (cached) answers, judgments that show their reading,
    verdicts parsed from it, and the metric read like any judge metric."""
    cfg, run, out, _, _ = judged
    lp_cfg = load_config(
        "smoke",
        [
            "eval.judge.n=2",
            "eval.judge.answer_max_new_tokens=8",
            "eval.judge.max_new_tokens=8",
            "model.dtype=float32",
            "eval.judge.verdict=logprobs",
        ],
    )
    res = run_judge(eval_settings(lp_cfg), run, run / "adapter", tmp_path, progress=False)
    explained = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    lines = [json.loads(x) for x in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    pairs = [x for x in lines if "judgment_base_first" in x]
    assert [p["base_answer"] for p in pairs] == [p["base_answer"] for p in explained if "judgment_base_first" in p]
    for p in pairs:
        for side in ("base_first", "tuned_first"):
            assert "p(A)=" in p[f"judgment_{side}"]
            assert p[f"verdict_{side}"] == (
                p[f"judgment_{side}"][2] if p[f"judgment_{side}"].startswith("[[") else None
            )
    assert res.model["verdict"] == "logprobs" and res.metric("judge/heldout/win_rate").details["judgments"] == 4
